# bench/coord_bench: the coordinator's per-layer CPU work, scalar code vs fast
# paths in the same run. Included from bench/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/coord.cmake OPTIONAL)
if(TARGET mxep_coordinator AND TARGET mxep_quant)
  add_executable(coord_bench ${CMAKE_CURRENT_LIST_DIR}/coord_bench.c)
  target_link_libraries(coord_bench PRIVATE mxep_coordinator mxep_quant mxep_core OpenMP::OpenMP_C)
endif()
