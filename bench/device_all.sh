#!/usr/bin/env bash
# bench/device_all.sh: one call on the lent H100 machine that
#   1. runs bench/gpu/device_run.sh --quick (deps from .deps, build, GPU tests vs the CPU
#      reference, quick W4A16 bench with the same-run HBM / cuBLAS limits);
#   2. builds mxworker and mxbench there;
#   3. checks the cuda backend with 8 ranks sharing the GPU (`--check`, bitwise vs the
#      single-process pipeline with the same backend);
#   4. runs the heterogeneous job: 1 rank on the GPU (--backend cuda) and 2 ranks on the
#      Xeon cores (--backend cpu), each with its own oracle choice, checked against the
#      single-process pipeline (tolerance, since the backends differ);
#   5. leaves logs under $OUT.
# Usage (device tool, carry [".deps"]): OUT=$OUT bash bench/device_all.sh
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
STATUS=0
OUT=$OUT bash "$ROOT/bench/gpu/device_run.sh" --quick || STATUS=1
mv "$OUT/device_run.log" "$OUT/gpu_device_run.log" 2>/dev/null
exec > >(tee "$OUT/device_all.log") 2>&1

PREFIX=$ROOT/.deps/prefix
export PKG_CONFIG_PATH=$PREFIX/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CMAKE_PREFIX_PATH=$PREFIX/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
[ -x "$PREFIX/bin/pkg-config" ] && export PATH=$PREFIX/bin:$PATH
BUILD=$ROOT/build-device
echo "== build mxworker, mxbench"
cmake --build "$BUILD" -j "$(nproc)" --target mxworker mxbench > "$OUT/build_worker.log" 2>&1 ||
  { echo "build failed:"; tail -30 "$OUT/build_worker.log"; exit 1; }
W=$BUILD/worker/mxworker
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"

echo "== 8 ranks, cuda backend on one GPU, --check (bitwise vs single process)"
timeout 240 $MPI -n 8 -x OMP_NUM_THREADS=2 $W bench --backend cuda --tokens 16 --iters 3 --check --baseline alone \
  --json "$OUT/cuda8_check.json" || { echo "cuda 8-rank check: FAILED"; STATUS=1; }

echo "== heterogeneous: 1 GPU rank (cuda) + 2 CPU ranks (cpu), --check"
timeout 300 $MPI -n 1 -x OMP_NUM_THREADS=4 $W bench --backend cuda --tokens 64 --iters 5 --check --baseline alone \
  --json "$OUT/hetero.json" : -n 2 -x OMP_NUM_THREADS=6 $W bench --backend cpu --tokens 64 --iters 5 --check --baseline alone \
  || { echo "heterogeneous run: FAILED"; STATUS=1; }

echo "== mxworker info (3 ranks, heterogeneous)"
timeout 60 $MPI -n 1 $W info --backend cuda : -n 2 $W info --backend cpu || STATUS=1
echo "== done: status $STATUS"
exit $STATUS
