#!/usr/bin/env bash
# bench/gpu/device_run.sh: everything mxep does on the lent GPU machine, in one go:
#   1. unpack the Debian packages carried in .deps (cJSON, cmocka, nanomsg, hwloc
#      headers, pkgconf) into .deps/prefix afresh (bench/device_env.sh);
#   2. configure and build the cuda backend, its tests and the GPU bench
#      (sm_90a; CMake, or by hand with nvcc/gcc if the project's CMake fails);
#   3. run the gpu-labelled tests and mxgpu_bench (gpt-oss-20b shapes, W4A16), then, where
#      PyTorch imports, issue 7's PyTorch peers at the same token counts (torch_peer.py);
#   4. leave logs and JSON in $OUT (or ./out when OUT is unset).
# Usage (from the repository root, on the device machine):
#   bash bench/gpu/device_run.sh [--quick] [--no-tests] [--no-bench] [--base DIR | --prebuilt] [-- <mxgpu_bench options>]
# --base DIR also builds the mxgpu_bench of another revision's source tree DIR (made here by
# bench/gpu/base_src.sh, carried as .base) into build-base/, alongside the main build, for
# device_ab.sh's `base` setting.
# --prebuilt runs .prebuilt/'s test and bench (bench/gpu/prebuild.sh, built on the Debian machine
# and carried with .deps) instead of building them here.
# MXEP_HAND_BUILD=1 skips CMake and builds the GPU parts with nvcc/gcc directly.
# Exit status: 0 when the build, the tests and the bench's reference check all passed.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out}
QUICK=0 TESTS=1 BENCH=1 BASE= PREBUILT=0
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-tests) TESTS=0 ;;
    --no-bench) BENCH=0 ;;
    --base) [ $# -ge 2 ] || { echo "device_run.sh: --base needs a directory (see --help)" >&2; exit 2; }
            BASE=$(cd "$2" 2>/dev/null && pwd) || { echo "device_run.sh: --base $2: no such directory" >&2; exit 2; }
            shift ;;
    --prebuilt) PREBUILT=1 ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "device_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$PREBUILT" = 1 ] && [ -n "$BASE" ] &&
  { echo "device_run.sh: --base builds here, --prebuilt builds nothing: give one (prebuild.sh --base REV prebuilds the base)" >&2; exit 2; }
mkdir -p "$OUT"
LOG=$OUT/device_run.log
exec > >(tee "$LOG") 2>&1
echo "== mxep device run $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
nvcc --version | tail -1 || true
NPROC=$(nproc)

# ---------------------------------------------------------------- 1. dependencies
MXEP_DEPS_FRESH=1 . "$ROOT/bench/device_env.sh" || exit 2
echo "pkg-config: $(command -v pkg-config); cjson $(pkg-config --modversion libcjson 2>&1)," \
     "cmocka $(pkg-config --modversion cmocka 2>&1), hwloc $(pkg-config --modversion hwloc 2>&1)"

# ---------------------------------------------------------------- 2. build
BUILD=$ROOT/build-device
STATUS=0
BASE_PID=
if [ -n "$BASE" ]; then
  echo "base: $(cat "$BASE/BASE_REVISION" 2>/dev/null || echo "$BASE (no BASE_REVISION)"), building into build-base/"
  device_build_base "$BASE" "$OUT/base_build.log" &
  BASE_PID=$!
fi
BIN_TEST= BIN_BENCH=
if [ "$PREBUILT" = 1 ]; then
  prebuilt_env || exit 2
  BIN_TEST=$ROOT/.prebuilt/test_cuda_parity
  BIN_BENCH=$ROOT/.prebuilt/mxgpu_bench
  echo "prebuilt: $(cat "$ROOT/.prebuilt/REVISION")"
elif [ "${MXEP_HAND_BUILD:-0}" != 1 ] && cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMXEP_WITH_CUDA=ON -DMXEP_WITH_HIP=OFF \
      -DCMAKE_CUDA_ARCHITECTURES="90a-real;80-virtual" > "$OUT/cmake_configure.log" 2>&1 &&
   cmake --build "$BUILD" -j "$NPROC" --target test_cuda_parity mxgpu_bench > "$OUT/cmake_build.log" 2>&1; then
  BIN_TEST=$BUILD/tests/gpu/test_cuda_parity
  BIN_BENCH=$BUILD/kernels/gpu/mxgpu_bench
  echo "built with CMake"
else
  echo "CMake configure/build failed or MXEP_HAND_BUILD=1 (tail below); building the GPU parts by hand"
  tail -25 "$OUT/cmake_configure.log" "$OUT/cmake_build.log" 2>/dev/null
  HB=$ROOT/build-device-hand
  mkdir -p "$HB"
  CF="-O2 -std=c11 -D_GNU_SOURCE -I$ROOT/include -I$ROOT/kernels/gpu -I$ROOT/tests/gpu -I/usr/local/cuda/include -I$PREFIX/usr/include"
  NV="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80 -I$ROOT/include -I$ROOT/kernels/gpu"
  LK="-L/usr/local/cuda/lib64 -lcudart -lstdc++ -lm -lpthread"
  (set -e
   nvcc $NV -c "$ROOT/kernels/gpu/moe_kernels.cu" -o "$HB/moe_kernels.o"
   for f in core/status.c core/log.c core/moe.c kernels/gpu/gpu_plan.c kernels/gpu/cuda_backend.c tests/gpu/gpu_ref.c; do
     gcc $CF -c "$ROOT/$f" -o "$HB/$(basename "$f" .c).o"
   done
   OBJ="$HB/status.o $HB/log.o $HB/moe.o $HB/gpu_plan.o $HB/cuda_backend.o $HB/moe_kernels.o"
   gcc $CF "$ROOT/tests/gpu/test_cuda_parity.c" "$HB/gpu_ref.o" $OBJ -o "$HB/test_cuda_parity" \
       -L"$LIBDIR" -l:libcmocka.so.0 $LK
   gcc $CF "$ROOT/bench/gpu/gpu_bench.c" "$HB/gpu_ref.o" $OBJ -o "$HB/mxgpu_bench" -lcublas $LK
  ) > "$OUT/hand_build.log" 2>&1 || { echo "hand build failed:"; tail -30 "$OUT/hand_build.log"; exit 1; }
  BIN_TEST=$HB/test_cuda_parity
  BIN_BENCH=$HB/mxgpu_bench
fi

if [ -n "$BASE_PID" ]; then
  if wait "$BASE_PID"; then echo "built the base's mxgpu_bench in build-base/"; else echo "base build failed"; STATUS=1; fi
fi

# ---------------------------------------------------------------- 3. tests and bench
if [ "$TESTS" = 1 ]; then
  echo "== gpu tests"
  if [ -f "$BUILD/CTestTestfile.cmake" ] && [ "$BIN_TEST" = "$BUILD/tests/gpu/test_cuda_parity" ]; then
    (cd "$BUILD" && ctest -R test_cuda_parity -V --timeout 300) > "$OUT/gpu_tests.log" 2>&1
  else
    timeout 300 "$BIN_TEST" > "$OUT/gpu_tests.log" 2>&1
  fi
  rc=$?
  cat "$OUT/gpu_tests.log"
  echo "gpu tests: exit $rc"
  [ $rc = 0 ] || STATUS=1
fi
if [ "$BENCH" = 1 ]; then
  echo "== mxgpu_bench"
  if [ "$QUICK" = 1 ]; then set -- --tokens 1,8,64,8192 --iters 20; else set -- --tokens 1,8,32,64,128,512,2048,8192 --iters 50; fi
  timeout 400 "$BIN_BENCH" "$@" "${BENCH_ARGS[@]}" --json "$OUT/gpu_bench.json"
  rc=$?
  echo "mxgpu_bench: exit $rc"
  [ $rc = 0 ] || STATUS=1
  # issue 7's PyTorch peers (BF16 weights), timed in this same call; their failure is reported, not fatal
  if [ ${#BENCH_ARGS[@]} = 0 ] && python3 -c "import torch" 2>/dev/null; then
    echo "== torch_peer.py (PyTorch peers, same call)"
    timeout 300 python3 "$ROOT/bench/gpu/torch_peer.py" --tokens "$2" --json "$OUT/torch_peer.json" --mxep "$OUT/gpu_bench.json"
    echo "torch_peer.py: exit $?"
  else
    echo "== torch_peer.py skipped (bench options given, or no PyTorch here)"
  fi
  if [ "$QUICK" = 0 ] && [ ${#BENCH_ARGS[@]} = 0 ]; then
    for s in W8A16 W4A8; do
      echo "== mxgpu_bench --scheme $s"
      timeout 200 "$BIN_BENCH" --scheme $s --tokens 1,8,64,8192 --iters 20 --json "$OUT/gpu_bench_$s.json"
      rc=$?
      echo "mxgpu_bench $s: exit $rc"
      [ $rc = 0 ] || STATUS=1
    done
  fi
fi
echo "== done: status $STATUS"
exit $STATUS
