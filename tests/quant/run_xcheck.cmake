# Runs xcheck_ml_dtypes.py with ${PY}; a missing interpreter is a failure with
# a clear message (never a pass, never a skip).
if(NOT EXISTS "${PY}")
  message(FATAL_ERROR "xcheck_ml_dtypes: Python interpreter ${PY} (MXEP_PYTHON) does not exist. "
                      "Create the virtual environment with scripts/setup.sh, or configure with "
                      "-DMXEP_PYTHON=/path/to/python that has numpy and ml_dtypes.")
endif()
execute_process(COMMAND "${PY}" "${SCRIPT}" --dump "${DUMP}" --workdir "${WORK}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "xcheck_ml_dtypes: ${SCRIPT} failed (exit status ${rc})")
endif()
