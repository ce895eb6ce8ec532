#!/usr/bin/env bash
# bench/gpu/two_gpu.sh: a real expert-parallel run over two GPUs of one host (the lent
# nvidia-h200-x2 / nvidia-h100-x2 kinds), in one device call of a few minutes:
#   1. build mxworker with CUDA (build-device/, sm_90a); `mxworker info` on 2 ranks shows each
#      rank's bound device (cuda:0, cuda:1) and the oracle's choice;
#   2. the gpt-oss-20b layer (W4A16, built-in weights) with --check (every layer's output
#      bitwise against the single-process pipeline of the same backend on rank 0), the same
#      job's tokens (--tokens-total) on 1 rank (one GPU) and on 2 ranks (one GPU each: the
#      topology binds local rank r to GPU r % count), at a decode-sized and a prefill-sized
#      batch; every iteration also over plain MPI_Alltoallv (--baseline layer);
#   3. the DeepEP low-latency shape (--preset deepep-ll: H 7168, 256 experts top-8, FP8
#      dispatch, 128 tokens per rank) on the two GPUs;
#   4. the heterogeneous job: 2 GPU ranks and 4 cpu ranks (launch/mpmd-example.sh), --check.
# $OUT gets two_gpu.log and the JSON of each step; full logs stay in /tmp/mxep_2gpu.
# Usage (device tool, kind nvidia-h200-x2, carry [".deps"]): OUT=$OUT bash bench/gpu/two_gpu.sh
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out}
LOGS=/tmp/mxep_2gpu
mkdir -p "$OUT" "$LOGS"
exec > >(tee "$OUT/two_gpu.log") 2>&1
SECONDS=0
STATUS=0
echo "== mxep two-GPU run $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi -L || { echo "two_gpu.sh: no GPU visible"; exit 2; }
NGPU=$(nvidia-smi -L | grep -c '^GPU')
[ "$NGPU" -ge 2 ] || echo "two_gpu.sh: only $NGPU GPU here: the 2-rank steps share it"
nvidia-smi topo -m 2>/dev/null | head -4
MXEP_DEPS_FRESH=1 . "$ROOT/bench/device_env.sh" || exit 2
BUILD=$ROOT/build-device
device_build "$BUILD" ON "$LOGS/build.log" mxworker || exit 1
echo "built in ${SECONDS}s"
W=$BUILD/worker/mxworker
MPI="mpirun --allow-run-as-root --bind-to none"
LINES='check layer|^rank |^ +[0-9]+  [^ ]|tokens/s|layer latency|layer vs its parts|exchange in the layer|MPI_Alltoallv in the layer|FAILED|error'

echo "-- mxworker info, 2 ranks"
timeout 120 $MPI -n 2 "$W" info > "$LOGS/info.log" 2>&1 || { echo "info: FAILED ($?)"; STATUS=1; }
grep -E '^cluster|^rank |^ +[0-9]+  |cuda:' "$LOGS/info.log" | head -12

run() { # label, ranks, timeout, mxworker bench options...
  local label=$1 n=$2 t=$3
  shift 3
  echo "-- $label (${SECONDS}s): $n rank(s): mxworker bench $*"
  timeout "$t" $MPI -n "$n" -x OMP_NUM_THREADS=4 "$W" bench --quiet --json "$LOGS/$label.json" "$@" \
    > "$LOGS/$label.log" 2>&1 || { echo "$label: FAILED ($?)"; tail -20 "$LOGS/$label.log"; STATUS=1; }
  grep -E "$LINES" "$LOGS/$label.log" | head -16
  cp "$LOGS/$label.json" "$OUT/" 2>/dev/null
}

for TT in 64 2048; do
  run "gptoss-T${TT}-1gpu" 1 120 --backend cuda --tokens-total $TT --iters 20 --warmup 3 --check
  # which GPU each process holds, sampled every 2 s while the 2-rank job runs
  : > "$LOGS/apps_$TT.raw"
  (while :; do nvidia-smi --query-compute-apps=pid,gpu_bus_id --format=csv,noheader >> "$LOGS/apps_$TT.raw" 2>/dev/null
     sleep 2; done) &
  SAMPLER=$!
  run "gptoss-T${TT}-2gpu" 2 120 --backend cuda --tokens-total $TT --iters 20 --warmup 3 --check
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null
  echo "   processes seen on the GPUs during the 2-rank run (pid, bus id):"
  sort -u "$LOGS/apps_$TT.raw" | sed 's/^/     /'
done
[ "$SECONDS" -lt 360 ] && run deepep-2gpu 2 150 --preset deepep-ll --backend cuda --iters 10 --warmup 2
if [ "$SECONDS" -lt 450 ]; then
  echo "-- heterogeneous (${SECONDS}s): 2 GPU ranks + 4 cpu ranks, --check"
  timeout 120 "$ROOT/launch/mpmd-example.sh" --gpu-ranks 2 --cpu-ranks 4 --mxworker "$W" -- \
    bench --quiet --tokens 32 --iters 5 --check > "$LOGS/hetero.log" 2>&1 ||
    { echo "heterogeneous: FAILED ($?)"; tail -20 "$LOGS/hetero.log"; STATUS=1; }
  grep -E "$LINES" "$LOGS/hetero.log" | head -16
fi
echo "== done: status $STATUS (${SECONDS}s)"
exit $STATUS
