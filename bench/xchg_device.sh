#!/usr/bin/env bash
# bench/xchg_device.sh: the exchange measurements of issue 6 on the 16-core host of the
# GPU machine, in one device call of under 3 minutes:
#   0. the machine: CPU, sockets, caches, NUMA, huge pages, Open MPI's shared-memory path;
#   1. builds mxworker and mx_transport_bench (build-device/, CPU-only when it does not exist);
#   2. the exchange alone (mx_transport_bench, DeepEP shape, 8 ranks, one core each): warm
#      caches (the same buffers again and again) and cold (each rank writes 256 MiB first,
#      as a layer's compute does), memcpy and non-temporal stores (MXEP_SHM_COPY);
#      then 2 cores per rank, copies on 1 and on 2 threads;
#   3. the exchange inside a layer (mxworker bench --preset deepep-ll --backend cpu, 8 ranks):
#      every iteration runs the layers over our exchange and over plain MPI_Alltoallv
#      (--baseline layer), with the split of our time (copies, messages, waiting for peers);
#      memcpy, then the default stores;
#   4. if time is left: the simulated cluster (launch/netns-cluster.sh, needs root and network
#      namespaces; skipped otherwise): 2 hosts x 4 ranks, ours and plain MPI_Alltoallv taking
#      turns, with btl tcp,self and vader,tcp,self;
#   5. if time is left and the GPU and a cuda build are there: the layer with --backend cuda
#      (8 ranks sharing the GPU, the setting of the 2026-11 figures).
# Logs and JSON in $OUT (xchg_device.log has everything; a summary at its end).
# Usage (device tool, carry [".deps"]): OUT=$OUT bash bench/xchg_device.sh
# (XCHG_BUILD=DIR uses an existing build directory; XCHG_NP=N runs N ranks instead of 8 and
# XCHG_ITERS=K shortens every loop: for a dry run of the script elsewhere.)
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/xchg_device.log") 2>&1
SECONDS=0
echo "== mxep exchange measurements $(date -u +%FT%TZ) on $(hostname), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"

# ---------------------------------------------------------------- 0. the machine
echo "== machine"
lscpu | grep -E '^(Model name|Socket|Core|Thread|CPU\(s\)|NUMA|L[123])' || true
echo "nproc $(nproc); L3 (getconf) $(getconf LEVEL3_CACHE_SIZE 2>/dev/null); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "THP enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null); shmem: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null)"
ldd --version 2>/dev/null | head -1
mpirun --version 2>/dev/null | head -1
ompi_info --param btl vader --level 9 2>/dev/null | grep -E 'single_copy_mechanism|backing_directory' | sed 's/^ */  /' | cut -c1-140
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU visible"

# ---------------------------------------------------------------- 1. build
# the packages of .deps (cJSON, cmocka, nanomsg, hwloc headers, pkgconf)
. "$ROOT/bench/device_env.sh" || exit 2
BUILD=${XCHG_BUILD:-$ROOT/build-device}
NP=${XCHG_NP:-8}
IT=${XCHG_ITERS:-0}
echo "== build ($BUILD)"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMXEP_WITH_CUDA=OFF -DMXEP_WITH_HIP=OFF \
    -DMXEP_WITH_ZE=OFF > "$OUT/xchg_configure.log" 2>&1 ||
    { echo "configure failed:"; tail -30 "$OUT/xchg_configure.log"; exit 1; }
fi
cmake --build "$BUILD" -j "$(nproc)" --target mxworker mx_transport_bench > "$OUT/xchg_build.log" 2>&1 ||
  { echo "build failed:"; tail -30 "$OUT/xchg_build.log"; exit 1; }
echo "built in ${SECONDS}s"
W=$BUILD/worker/mxworker
X=$BUILD/transport/mx_transport_bench
MPI="mpirun --allow-run-as-root"
CORE="--bind-to core --map-by core"
PE2="--map-by ppr:$NP:node:pe=2 --bind-to core"
# 2 CPUs per rank: physical cores if there are enough, else hardware threads
CORES=$(lscpu -p=SOCKET,CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)
[ "$CORES" -lt $((2 * NP)) ] && PE2="--use-hwthread-cpus $PE2"
[ "$NP" -gt "$(nproc)" ] && CORE="--oversubscribe --bind-to none" && PE2=$CORE
echo "physical cores $CORES; one core per rank: $CORE; two per rank: $PE2"
its() { [ "$IT" -gt 0 ] && [ "$IT" -lt "$1" ] && echo "$IT" || echo "$1"; } # XCHG_ITERS only shortens

# ---------------------------------------------------------------- 2. the exchange alone
xb() { # label, env value of MXEP_SHM_COPY, mpirun placement, bench options...
  local label=$1 copy=$2 place=$3
  shift 3
  echo "-- xbench $label (MXEP_SHM_COPY=$copy; $place; $*)"
  MXEP_SHM_COPY=$copy timeout 60 $MPI $place -x MXEP_SHM_COPY -n "$NP" "$X" "$@" || echo "xbench $label: FAILED ($?)"
}
echo "== 2. exchange alone: mx_transport_bench, DeepEP shape (128 tokens/rank, H 7168, top-8 of 256), 8 ranks"
xb warm-memcpy memcpy "$CORE" --iters "$(its 40)"
xb warm-stream auto "$CORE" --iters "$(its 40)"
xb cold-memcpy memcpy "$CORE" --iters "$(its 30)" --flush 128
xb cold-stream auto "$CORE" --iters "$(its 30)" --flush 128
xb cold-stream-2cores-1thread auto "$PE2" --iters "$(its 30)" --flush 128 --threads 1
xb cold-stream-2cores-2threads auto "$PE2" --iters "$(its 30)" --flush 128 --threads 2
xb cold-stream-unbound auto "--bind-to none" --iters "$(its 30)" --flush 128
echo "(${SECONDS}s)"

# ---------------------------------------------------------------- 3. inside the layer, cpu backend
mx() { # label, MXEP_SHM_COPY, mpirun placement, mxworker options...
  local label=$1 copy=$2 place=$3
  shift 3
  echo "-- mxworker $label (MXEP_SHM_COPY=$copy; $place; $*)"
  MXEP_SHM_COPY=$copy timeout 75 $MPI $place -x MXEP_SHM_COPY -n "$NP" "$W" bench --preset deepep-ll --quiet \
    --json "$OUT/mxworker_$label.json" "$@" || echo "mxworker $label: FAILED ($?)"
}
echo "== 3. inside the layer: mxworker bench --preset deepep-ll --backend cpu, 8 ranks, one core each"
mx cpu-memcpy memcpy "$CORE" --backend cpu --iters "$(its 2)" --warmup 1 ${XCHG_MX_ARGS:-}
mx cpu-stream auto "$CORE" --backend cpu --iters "$(its 2)" --warmup 1 ${XCHG_MX_ARGS:-}
echo "(${SECONDS}s)"

# ---------------------------------------------------------------- 4. across hosts, if there is time
if [ "$SECONDS" -lt 130 ] && [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1; then
  echo "== 4. across hosts: launch/netns-cluster.sh --hosts 2 --ranks-per-host 4, mx_transport_bench"
  for btl in vader,tcp,self tcp,self; do
    echo "-- netns 2x4 btl $btl (gpt-oss-20b shape)"
    timeout 40 "$ROOT/launch/netns-cluster.sh" --hosts 2 --ranks-per-host 4 --btl $btl --timeout 30 \
      --compare 'bytes per rank' -- "$X" --tokens 64 --hidden 2880 --experts 32 --topk 4 --iters "$(its 30)" 2>&1 |
      grep -E '^  |results match|skipped|error' | head -12
  done
else
  echo "== 4. across hosts: skipped (no time left, not root, or no iproute2)"
fi

# ---------------------------------------------------------------- 5. cuda, if there is time
if [ "$SECONDS" -lt 140 ] && nvidia-smi >/dev/null 2>&1 && grep -q '^MXEP_WITH_CUDA:STRING=ON' "$BUILD/CMakeCache.txt" 2>/dev/null; then
  echo "== 5. inside the layer, cuda backend, 8 ranks sharing the GPU, 2 cores each"
  mx cuda-stream auto "$PE2" --backend cuda --iters 5
  [ "$SECONDS" -lt 155 ] && mx cuda-memcpy memcpy "$PE2" --backend cuda --iters 5
else
  echo "== 5. cuda: skipped (no time left, no GPU, or a build without cuda)"
fi

# ---------------------------------------------------------------- summary
echo "== summary (${SECONDS}s)"
sleep 1 # let tee write out the log
grep -E '^-- |^== [2-5]|^  mxep  |^  MPI_Alltoallv|^  memcpy|split, mean|^  speedup|layer latency|layer vs its parts|exchange in the layer|MPI_Alltoallv in the layer|exchange alone|MPI_Alltoallv alone|memcpy of the bytes|mean over ranks|FAILED' \
  "$OUT/xchg_device.log" | grep -v '^== summary' > "$OUT/xchg_summary.txt"
cat "$OUT/xchg_summary.txt"
