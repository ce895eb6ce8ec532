#!/usr/bin/env bash
# bench/device_final.sh: the closing measurements of a session on the lent H100 machine, in
# one call that fits a short device budget (about 7 minutes), returning at most 8 files:
#   1. bench/gpu/device_run.sh --quick (build, GPU tests, W4A16 bench); when the GPU tests fail
#      and FALLBACK_CU names a kernel source that passed them before (or FALLBACK_TREE a folder
#      whose files, by their paths under it, replace the tree's), that is built and tested
#      instead (the figures then belong to it; summary.log says so);
#   2. (FINAL_SCHEMES=1) W4A8 and W8A16 at T = 1, 64, 8192;
#   3. mxworker: 8 ranks sharing the GPU with --check, the heterogeneous 1 GPU + 2 CPU ranks
#      job with --check, and `info`;
#   4. (unless FINAL_XCHG=0) bench/xchg_device.sh with shortened loops (the exchange, issue 6), its summary only;
#   5. (FINAL_CPU=1) the cpu backend's kernels on 2 Xeon cores (AVX2 level, then the best level);
#   6. (FINAL_LAYER_CPU=1) the layer against its parts with one device per rank: 8 ranks of the
#      cpu backend, 2 cores each, gpt-oss-20b model, 8 and 64 tokens per rank, --check.
# Usage (device tool, carry [".deps", ...]): OUT=$OUT [FALLBACK_CU=path] bash bench/device_final.sh
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
LOGS=/tmp/mxep_final
mkdir -p "$OUT" "$LOGS"
SUM=$OUT/summary.log
exec > >(tee "$SUM") 2>&1
SECONDS=0
STATUS=0
echo "== device_final $(date -u +%FT%TZ): $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
OUT=$LOGS bash "$ROOT/bench/gpu/device_run.sh" --quick > "$LOGS/gpu.log" 2>&1
rc=$?
FELL=0
if ! grep -q "gpu tests: exit 0" "$LOGS/gpu.log" &&
   { { [ -n "${FALLBACK_CU:-}" ] && [ -f "$ROOT/$FALLBACK_CU" ]; } ||
     { [ -n "${FALLBACK_TREE:-}" ] && [ -d "$ROOT/$FALLBACK_TREE" ]; }; }; then
  echo "!! GPU tests failed with this tree's kernels (tail below); building ${FALLBACK_CU:-$FALLBACK_TREE} instead"
  grep -E "FAILED|fail|Error" "$LOGS/gpu.log" | head -20
  cp "$LOGS/gpu.log" "$OUT/gpu_failed.log"
  if [ -n "${FALLBACK_CU:-}" ]; then
    cp "$ROOT/$FALLBACK_CU" "$ROOT/kernels/gpu/moe_kernels.cu"
  else
    (cd "$ROOT/$FALLBACK_TREE" && find . -type f) | while read -r f; do
      echo "   fallback: $f"; cp "$ROOT/$FALLBACK_TREE/$f" "$ROOT/$f"; done
  fi
  FELL=1
  OUT=$LOGS bash "$ROOT/bench/gpu/device_run.sh" --quick > "$LOGS/gpu.log" 2>&1
  rc=$?
fi
[ $rc = 0 ] || STATUS=1
cp "$LOGS/gpu.log" "$OUT/gpu.log"
cp "$LOGS/gpu_bench.json" "$OUT/gpu_bench.json" 2>/dev/null
echo "== GPU tests and W4A16 bench: rc $rc, fallback kernels: $FELL (${SECONDS}s)"
grep -E "^\[  (PASSED|FAILED)|^\[  FAILED|bitwise equal across|gpu tests: exit|limits:|^ +[0-9]+ +[0-9]+ +[SML] |layer:" "$LOGS/gpu.log" | head -30

. "$ROOT/bench/device_env.sh" || exit 2
BUILD=$ROOT/build-device
B=$BUILD/kernels/gpu/mxgpu_bench
if [ "${FINAL_SCHEMES:-0}" = 1 ]; then
  for s in W4A8 W8A16; do
    echo "== mxgpu_bench --scheme $s"
    timeout 60 "$B" --scheme $s --tokens 1,64,8192 --iters 10 | grep -E "^ +[0-9]|limits" || STATUS=1
  done
fi
echo "== build mxworker, mxbench (${SECONDS}s)"
cmake --build "$BUILD" -j "$(nproc)" --target mxworker mxbench mx_transport_bench > "$LOGS/build_worker.log" 2>&1 ||
  { echo "build failed:"; tail -30 "$LOGS/build_worker.log"; exit 1; }
W=$BUILD/worker/mxworker
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"
echo "== 8 ranks, cuda backend on one GPU, --check (bitwise vs the single-process pipeline)"
timeout 120 $MPI -n 8 -x OMP_NUM_THREADS=2 $W bench --backend cuda --tokens 16 --iters 3 --check --baseline alone \
  --json "$LOGS/cuda8.json" > "$LOGS/cuda8.log" 2>&1 || { echo "cuda 8-rank check: FAILED"; STATUS=1; }
grep -E "check|tokens/s|layer latency|rank +host|^ +[0-9] " "$LOGS/cuda8.log" | head -14
echo "== heterogeneous: 1 GPU rank (cuda) + 2 CPU ranks (cpu), --check (${SECONDS}s)"
timeout 150 $MPI -n 1 -x OMP_NUM_THREADS=4 $W bench --backend cuda --tokens 64 --iters 5 --check --baseline alone \
  --json "$LOGS/hetero.json" : -n 2 -x OMP_NUM_THREADS=6 $W bench --backend cpu --tokens 64 --iters 5 --check \
  --baseline alone > "$LOGS/hetero.log" 2>&1 || { echo "heterogeneous run: FAILED"; STATUS=1; }
grep -E "check|tokens/s|layer latency|rank +host|^ +[0-9] " "$LOGS/hetero.log" | head -12
timeout 60 $MPI -n 1 $W info --backend cuda : -n 2 $W info --backend cpu 2>&1 | grep -E "chosen|^ +[0-9] " | head -8
if [ "${FINAL_XCHG:-1}" = 1 ] && [ "$FELL" = 0 ] && [ "$SECONDS" -lt 200 ]; then
  echo "== exchange: bench/xchg_device.sh, shortened loops (${SECONDS}s)"
  OUT=$LOGS/xchg BUILD=$BUILD XCHG_ITERS=${XCHG_ITERS:-12} timeout $((320 - SECONDS)) bash "$ROOT/bench/xchg_device.sh" > "$LOGS/xchg.log" 2>&1
  echo "xchg rc $?"
  cp "$LOGS/xchg/xchg_summary.txt" "$OUT/xchg_summary.txt" 2>/dev/null || tail -60 "$LOGS/xchg.log" > "$OUT/xchg_summary.txt"
fi
if [ "${FINAL_CPU:-0}" = 1 ] && [ "$FELL" = 0 ] && [ "$SECONDS" -lt 330 ]; then
  echo "== cpu backend kernels, 2 cores of the Xeon host (${SECONDS}s)"
  MB=$BUILD/bench/mxbench
  MXEP_CPU_ISA=avx2 timeout 90 taskset -c 2,3 "$MB" kernels --threads 2 --iters 5 --tokens 1,4,256 --ref-peer-max 0 \
    --json "$OUT/cpu_avx2.json" 2>&1 | grep -E "measured|^(gpt|qwen)" || STATUS=1
  timeout 60 taskset -c 2,3 "$MB" kernels --threads 2 --iters 5 --tokens 1,4,256 --ref-peer-max 0 \
    --json "$OUT/cpu_best.json" 2>&1 | grep -E "measured|^(gpt|qwen)" || STATUS=1
fi
if [ "${FINAL_LAYER_CPU:-0}" = 1 ] && [ "$SECONDS" -lt 420 ]; then
  echo "== layer vs its parts, one device per rank: 8 cpu ranks x 2 cores, gpt-oss-20b (${SECONDS}s)"
  for t in 8 64; do
    timeout 100 mpirun --allow-run-as-root --map-by ppr:8:node:pe=2 --bind-to core -n 8 -x OMP_NUM_THREADS=2 \
      $W bench --backend cpu --tokens $t --iters 8 --warmup 2 --check --json "$OUT/layer_cpu8_t$t.json" \
      > "$LOGS/layer_cpu8_t$t.log" 2>&1 || { echo "cpu 8x2 layer, $t tokens/rank: FAILED ($?)"; STATUS=1; }
    grep -E "check|ranks:|tokens/s|layer latency|layer vs its parts|exchange in the layer" "$LOGS/layer_cpu8_t$t.log" | head -8
  done
fi
echo "== done: status $STATUS (${SECONDS}s)"
exit $STATUS
