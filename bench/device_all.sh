#!/usr/bin/env bash
# bench/device_all.sh: one call on the lent H100 machine that
#   1. runs bench/gpu/device_run.sh --quick (deps from .deps, build, GPU tests vs the CPU
#      reference, quick W4A16 bench with the same-run HBM / cuBLAS limits);
#   2. repeats the W4A16 bench with mma.sync instead of wgmma (MXEP_CUDA_MMA=sync) and
#      without dependent launches (MXEP_CUDA_PDL=0), and W8A16 / W4A8 at 1, 8, 64, 8192;
#   3. builds mxworker and mxbench there;
#   4. checks the cuda backend with 8 ranks sharing the GPU (`--check`, bitwise vs the
#      single-process pipeline with the same backend);
#   5. runs the heterogeneous job: 1 rank on the GPU (--backend cuda) and 2 ranks on the
#      Xeon cores (--backend cpu), each with its own oracle choice, checked against the
#      single-process pipeline (tolerance, since the backends differ);
#   6. times the cpu backend's kernels on 2 of the Xeon host's cores (AVX2 level and
#      best level), the figures issue 5 asks for on a quiet machine;
#   7. runs bench/xchg_device.sh when it exists (the exchange figures of issue 6);
#   8. leaves logs under $OUT (summary.log: the lines worth reading).
# Usage (device tool, carry [".deps"]): OUT=$OUT bash bench/device_all.sh [--skip-gpu-tests]
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
STATUS=0
RUN_ARGS=(--quick)
[ "${1:-}" = "--skip-gpu-tests" ] && RUN_ARGS+=(--no-tests)
OUT=$OUT bash "$ROOT/bench/gpu/device_run.sh" "${RUN_ARGS[@]}" > "$OUT/gpu_device_run.log" 2>&1 || STATUS=1
rm -f "$OUT/device_run.log"
exec > >(tee "$OUT/device_all.log") 2>&1
echo "== gpu tests and bench (device_run.sh): status $STATUS"
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|bitwise equal|rel L2 .*(nan|inf)|error|Error|limits:|^ +[0-9]+ +[0-9]+ +[SML] |layer:|gpu tests: exit|mxgpu_bench: exit" \
  "$OUT/gpu_device_run.log" | head -60

. "$ROOT/bench/device_env.sh" || exit 2
BUILD=$ROOT/build-device
B=$BUILD/kernels/gpu/mxgpu_bench
if [ -x "$B" ]; then
  echo "== mxgpu_bench W4A16 with mma.sync (MXEP_CUDA_MMA=sync)"
  MXEP_CUDA_MMA=sync timeout 120 "$B" --tokens 1,8,64,8192 --iters 20 --json "$OUT/gpu_bench_sync.json" | grep -E "^ +[0-9]|layer:|limits" || STATUS=1
  echo "== mxgpu_bench W4A16 without dependent launches (MXEP_CUDA_PDL=0)"
  MXEP_CUDA_PDL=0 timeout 120 "$B" --tokens 1,8,64 --iters 20 | grep -E "^ +[0-9]|limits" || STATUS=1
  for s in W8A16 W4A8 W8A8; do
    echo "== mxgpu_bench --scheme $s"
    timeout 120 "$B" --scheme $s --tokens 1,8,64,8192 --iters 10 --json "$OUT/gpu_bench_$s.json" | grep -E "^ +[0-9]|limits" || STATUS=1
  done
fi
echo "== build mxworker, mxbench"
cmake --build "$BUILD" -j "$(nproc)" --target mxworker mxbench mx_transport_bench > "$OUT/build_worker.log" 2>&1 ||
  { echo "build failed:"; tail -30 "$OUT/build_worker.log"; exit 1; }
W=$BUILD/worker/mxworker
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"

echo "== 8 ranks, cuda backend on one GPU, --check (bitwise vs single process)"
timeout 240 $MPI -n 8 -x OMP_NUM_THREADS=2 $W bench --backend cuda --tokens 16 --iters 3 --check --baseline alone \
  --json "$OUT/cuda8_check.json" 2>&1 | tail -40 || { echo "cuda 8-rank check: FAILED"; STATUS=1; }

echo "== heterogeneous: 1 GPU rank (cuda) + 2 CPU ranks (cpu), --check"
timeout 300 $MPI -n 1 -x OMP_NUM_THREADS=4 $W bench --backend cuda --tokens 64 --iters 5 --check --baseline alone \
  --json "$OUT/hetero.json" : -n 2 -x OMP_NUM_THREADS=6 $W bench --backend cpu --tokens 64 --iters 5 --check --baseline alone 2>&1 | tail -30 \
  || { echo "heterogeneous run: FAILED"; STATUS=1; }

echo "== mxworker info (3 ranks, heterogeneous)"
timeout 60 $MPI -n 1 $W info --backend cuda : -n 2 $W info --backend cpu 2>&1 | tail -20 || STATUS=1

echo "== cpu backend kernels, 2 cores of the Xeon host"
lscpu | grep -E "Model name|^CPU\(s\)" || true
MB=$BUILD/bench/mxbench
MXEP_CPU_ISA=avx2 timeout 150 taskset -c 2,3 "$MB" kernels --threads 2 --iters 5 --tokens 1,4,256 --ref-peer-max 0 \
  --json "$OUT/cpu_avx2.json" 2>&1 | grep -vE "^\s*$" | tail -12 || STATUS=1
timeout 120 taskset -c 2,3 "$MB" kernels --threads 2 --iters 5 --tokens 1,4,256 --ref-peer-max 0 \
  --json "$OUT/cpu_best.json" 2>&1 | grep -vE "^\s*$" | tail -10 || STATUS=1

if [ -f "$ROOT/bench/xchg_device.sh" ]; then
  echo "== exchange (bench/xchg_device.sh)"
  OUT=$OUT BUILD=$BUILD timeout 200 bash "$ROOT/bench/xchg_device.sh" 2>&1 | tail -40 || STATUS=1
fi
echo "== done: status $STATUS"
exit $STATUS
