#!/usr/bin/env bash
# Sets up everything, builds (warnings are errors), runs every test, then builds
# again with AddressSanitizer + UBSan and runs the unit tests under it.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

bash scripts/setup.sh

# In CI (CI=true) the GPU code must compile although no GPU is there: CUDA with
# the toolkit's nvcc, HIP with Debian's hipcc (gfx90a, gfx940), the Level Zero
# probe with libze; a compiler that went missing fails the run instead of
# quietly building less (AUTO elsewhere: a fresh machine has no nvcc).
need=()
if [ "${CI:-}" = true ]; then
  need+=(-DMXEP_WITH_CUDA=ON -DMXEP_WITH_UCX=ON -DMXEP_WITH_NANOMSG=ON)
  [ "${MXEP_SETUP_NO_GPU_TOOLS:-0}" = 1 ] || need+=(-DMXEP_WITH_HIP=ON -DMXEP_WITH_ZE=ON)
fi

echo "== build (ci preset: -Wall -Wextra -Werror)"
cmake --preset ci "${need[@]}" >build-ci.configure.log 2>&1 || { cat build-ci.configure.log; exit 1; }
grep 'mxep optional parts' build-ci.configure.log || true
cmake --build --preset ci -j"$jobs"
echo "== tests (all labels)"
(cd build-ci && ctest --output-on-failure -j"$jobs" --timeout 900)

if [ -n "${MXEP_FUZZ_SECONDS:-}" ] || [ "${CI:-}" = true ]; then
  if [ -x scripts/fuzz.sh ]; then
    echo "== fuzz (bounded)"
    bash scripts/fuzz.sh "${MXEP_FUZZ_SECONDS:-60}"
  fi
fi

echo "== build (asan preset: -fsanitize=address,undefined)"
cmake --preset asan >build-asan.configure.log 2>&1 || { cat build-asan.configure.log; exit 1; }
cmake --build --preset asan -j"$jobs"
echo "== unit tests under ASan/UBSan"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j"$jobs" -L unit --timeout 900)
