#!/usr/bin/env bash
# bench/layer_device.sh: issue 6's in-layer targets on the 16-core host of the GPU machine, in one
# device call of about 5 minutes (build included):
#   1. build mxworker (build-device/, with CUDA when nvcc is there);
#   2. the DeepEP low-latency shape inside a real layer (--preset deepep-ll: 8 ranks, 128 tokens per
#      rank, H 7168, top-8 of 256 experts, FP8 dispatch, BF16 combine), 8 ranks with 2 cores each,
#      experts on the GPU (the cpu backend needs minutes per layer at this shape), every iteration
#      also over plain MPI_Alltoallv (--baseline layer): our exchange against it, same bytes, same run;
#   3. the gpt-oss-20b layer with one device per rank: 8 cpu ranks of 2 cores each, 64 tokens per
#      rank, --check (bitwise against the single-process pipeline) and the layer against its parts;
#   4. the same model, 8 ranks sharing the GPU, 128 tokens per rank, --check;
#   5. (rings) mxgpu_bench at LAYER_RING_T (default 1,8,64) with the decode ring at LAYER_RINGS
#      (default c48s a45);
#   6. (cluster) across hosts: launch/netns-cluster.sh, 2 hosts x 4 ranks (btl vader,tcp,self),
#      mx_transport_bench (gpt-oss-20b bytes) and mxworker bench (cpu backend, 2 threads per rank),
#      ours beside plain MPI_Alltoallv in the same run; skipped where network namespaces are refused
#      (iproute2 comes from .deps/ip when the machine has no `ip`);
#   7. (profile) Nsight Compute on the GEMM kernels at LAYER_PROFILE token counts (default 1).
# LAYER_STEPS picks the steps (default "deepep cpu8 cuda8"; also: rings probe l2pf w8a8 cluster profile;
# probe: mxgpu_bench --probe, the decode kernel's weight reads alone; l2pf: the decode GEMMs'
# L2 prefetch on and off; w8a8: the flushing kernels' large-batch tile MXEP_CUDA_LF=2x64 against
# 1x128 for W8A8 (FP8 and BF16 tensor cores) and W8A16, T = 2048, 8192; PROFILE_ARGS passes
# options such as --scheme W8A8 to the profile step);
# LAYER_CUDA=OFF builds without CUDA (faster, for the CPU-only steps).
# $OUT gets layer_device.log, layer_summary.txt (the lines that matter), the JSON of each step and
# ncu_summary.txt; full logs stay in /tmp/mxep_layer on the machine.
# Usage (device tool, carry [".deps"]): OUT=$OUT [LAYER_STEPS=...] bash bench/layer_device.sh
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
LOGS=/tmp/mxep_layer
mkdir -p "$OUT" "$LOGS"
exec > >(tee "$OUT/layer_device.log") 2>&1
SECONDS=0
STATUS=0
echo "== mxep layer measurements $(date -u +%FT%TZ) on $(hostname)"
lscpu | grep -E '^(Model name|CPU\(s\)|NUMA node\(s\))' || true
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU visible"

MXEP_DEPS_FRESH=1 . "$ROOT/bench/device_env.sh" || exit 2
BUILD=${LAYER_BUILD:-$ROOT/build-device}
CUDA=OFF
command -v nvcc >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1 && CUDA=ON
[ "${LAYER_CUDA:-}" = OFF ] && CUDA=OFF
device_build "$BUILD" "$CUDA" "$LOGS/layer_build.log" mxworker || exit 1
echo "built (cuda $CUDA) in ${SECONDS}s"
W=$BUILD/worker/mxworker
MPI="mpirun --allow-run-as-root"
PE2="--map-by ppr:8:node:pe=2 --bind-to core"
LINES='check layer|ranks:|tokens/s|layer latency|layer vs its parts|exchange in the layer|MPI_Alltoallv in the layer|mean over ranks|dispatch:|FAILED|error'

step() { # label, timeout, mxworker bench options...
  local label=$1 t=$2
  shift 2
  echo "-- $label (${SECONDS}s): mxworker bench $*"
  timeout "$t" $MPI $PE2 -n 8 -x OMP_NUM_THREADS=2 "$W" bench --quiet --json "$LOGS/layer_$label.json" "$@" \
    > "$LOGS/layer_$label.log" 2>&1 || { echo "$label: FAILED ($?)"; STATUS=1; }
  grep -E "$LINES" "$LOGS/layer_$label.log" | head -14
}

STEPS=" ${LAYER_STEPS:-deepep cpu8 cuda8} "
want() { case "$STEPS" in *" $1 "*) return 0 ;; esac; return 1; }
if [ "$CUDA" = ON ] && want deepep; then
  step deepep-cuda 150 --preset deepep-ll --backend cuda --iters 8 --warmup 2
fi
if want cpu8; then
  step gptoss-cpu8x2 120 --backend cpu --tokens 64 --iters 6 --warmup 2 --check
fi
if [ "$CUDA" = ON ] && want cuda8 && [ "$SECONDS" -lt 420 ]; then
  step gptoss-cuda 90 --backend cuda --tokens 128 --iters 8 --warmup 2 --check
fi
# 5. the decode kernel's ring variants, W4A16 gpt-oss-20b layer
if [ "$CUDA" = ON ] && want rings && [ "$SECONDS" -lt 380 ]; then
  cmake --build "$BUILD" -j "$(nproc)" --target mxgpu_bench >> "$LOGS/layer_build.log" 2>&1 &&
    for v in ${LAYER_RINGS:-c48s a45}; do
      echo "-- mxgpu_bench MXEP_CUDA_DEC=$v (${SECONDS}s)"
      MXEP_CUDA_DEC=$v timeout 60 "$BUILD/kernels/gpu/mxgpu_bench" --tokens "${LAYER_RING_T:-1,8,64}" --iters 30 2>&1 |
        grep -E "^limits|^ +[0-9]+ +[0-9]+ +[SML] " || STATUS=1
    done
fi
# 5c. the decode kernel's weight reads alone (mxgpu_bench --probe): packed against contiguous row
#     groups, ring 6 and 12, GEMM1/GEMM2 shapes, top-k and all experts
if [ "$CUDA" = ON ] && want probe && [ "$SECONDS" -lt 420 ]; then
  cmake --build "$BUILD" -j "$(nproc)" --target mxgpu_bench >> "$LOGS/layer_build.log" 2>&1 &&
    timeout 90 "$BUILD/kernels/gpu/mxgpu_bench" --probe --iters 20 2>&1 | grep -E "^limits|^probe|^gemm|^GEMM" || STATUS=1
fi
# 5d. the decode GEMMs' L2 prefetch against none (MXEP_CUDA_L2PF=0), twice each, T = 1, 2, 8
if [ "$CUDA" = ON ] && want l2pf && [ "$SECONDS" -lt 420 ]; then
  cmake --build "$BUILD" -j "$(nproc)" --target mxgpu_bench >> "$LOGS/layer_build.log" 2>&1 &&
    for v in 1 0 1 0; do
      echo "-- mxgpu_bench MXEP_CUDA_L2PF=$v (${SECONDS}s)"
      MXEP_CUDA_L2PF=$v timeout 60 "$BUILD/kernels/gpu/mxgpu_bench" --tokens 1,2,8 --iters 30 2>&1 |
        grep -E "^limits|^ +[0-9]+ +[0-9]+ +[SML] " || STATUS=1
    done
fi
# 5e. the flushing kernels' large-batch tile (MXEP_CUDA_LF) for every scheme that flushes
if [ "$CUDA" = ON ] && want w8a8 && [ "$SECONDS" -lt 400 ]; then
  cmake --build "$BUILD" -j "$(nproc)" --target mxgpu_bench >> "$LOGS/layer_build.log" 2>&1 &&
    for s in "W8A8" "W8A8 MXEP_CUDA_FP8MMA=0" "W8A16"; do
      for v in 2x64 1x128; do
        read -r sch setting <<< "$s"
        echo "-- mxgpu_bench --scheme $sch ${setting:-} MXEP_CUDA_LF=$v (${SECONDS}s)"
        env ${setting:-} MXEP_CUDA_LF=$v timeout 45 "$BUILD/kernels/gpu/mxgpu_bench" --scheme "$sch" \
          --tokens 2048,8192 --iters 5 2>&1 | grep -E "^limits|^layer|^ +[0-9]+ +[0-9]+ +[SML] " || STATUS=1
      done
    done
fi
# 6. across hosts on the simulated cluster (iproute2 from .deps/ip when the machine lacks `ip`:
#    unpacked into /tmp, its libraries searched after the system's)
if want cluster && ! command -v ip >/dev/null 2>&1 && ls "$ROOT"/.deps/ip/*.deb >/dev/null 2>&1; then
  IPP=/tmp/mxep_iproute
  rm -rf "$IPP" && mkdir -p "$IPP" && for f in "$ROOT"/.deps/ip/*.deb; do dpkg -x "$f" "$IPP"; done
  export PATH=$PATH:$IPP/usr/sbin:$IPP/sbin:$IPP/usr/bin:$IPP/bin
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$IPP/usr/lib/x86_64-linux-gnu:$IPP/lib/x86_64-linux-gnu
  echo "iproute2 from .deps/ip: $(ip -V 2>&1 | head -1)"
fi
if want cluster && [ "$SECONDS" -lt 400 ]; then
  cmake --build "$BUILD" -j "$(nproc)" --target mx_transport_bench >> "$LOGS/layer_build.log" 2>&1
  NC="$ROOT/launch/netns-cluster.sh --hosts 2 --ranks-per-host 4 --btl vader,tcp,self --timeout 100"
  NC="$NC --env OMPI_MCA_mpi_yield_when_idle=1 --compare"
  XL='^  mxep  |^  MPI_Alltoallv|^  speedup|layer latency|in the layer  |mean over ranks|alone  |results match|skipped|FAILED|error'
  echo "-- cluster 2 hosts x 4 ranks: mx_transport_bench, gpt-oss-20b bytes (${SECONDS}s)"
  $NC 'bytes per rank' -- "$BUILD/transport/mx_transport_bench" --tokens 64 --hidden 2880 --experts 32 --topk 4 \
    --iters 30 > "$LOGS/cluster_xbench.log" 2>&1
  rc=$?
  echo "netns-cluster rc $rc"
  case $rc in 0) grep -E "$XL" "$LOGS/cluster_xbench.log" | head -12 ;; 77) tail -3 "$LOGS/cluster_xbench.log" ;;
    *) STATUS=1; tail -40 "$LOGS/cluster_xbench.log" ;; esac
  if [ "$SECONDS" -lt 420 ]; then
    echo "-- cluster 2 hosts x 4 ranks: mxworker bench, cpu backend (${SECONDS}s)"
    $NC 'mxworker bench: [a-z0-9-]+' -- "$W" bench --backend cpu --tokens 32 --iters 8 --threads 2 --quiet \
      > "$LOGS/cluster_layer.log" 2>&1
    rc=$?
    echo "netns-cluster rc $rc"
    case $rc in 0) grep -E "$XL" "$LOGS/cluster_layer.log" | head -12 ;; 77) tail -3 "$LOGS/cluster_layer.log" ;;
      *) STATUS=1; tail -40 "$LOGS/cluster_layer.log" ;; esac
  fi
fi
# 7. Nsight Compute
if [ "$CUDA" = ON ] && want profile && [ "$SECONDS" -lt 440 ]; then
  echo "-- ncu (${SECONDS}s)"
  [ -x "$BUILD/kernels/gpu/mxgpu_bench" ] ||
    cmake --build "$BUILD" -j "$(nproc)" --target mxgpu_bench >> "$LOGS/layer_build.log" 2>&1
  OUT=$LOGS timeout $((530 - SECONDS)) bash "$ROOT/bench/gpu/device_profile.sh" ${LAYER_PROFILE:-1} > "$OUT/ncu_summary.txt" 2>&1
  echo "ncu: rc $? (${SECONDS}s), condensed in ncu_summary.txt"
fi
echo "== done: status $STATUS (${SECONDS}s)"
grep -E "^-- |$LINES|^limits|^ +[0-9]+ +[0-9]+ +[SML] |^== done" "$OUT/layer_device.log" > "$OUT/layer_summary.txt"
cp "$LOGS"/layer_*.json "$OUT"/ 2>/dev/null # (at most 8 files come back: two logs, these, ncu_summary.txt)
exit $STATUS
