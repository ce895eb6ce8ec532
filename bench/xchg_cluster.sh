#!/usr/bin/env bash
# bench/xchg_cluster.sh: the exchange across hosts on the simulated cluster
# (launch/netns-cluster.sh: hosts are network namespaces, MPI over TCP between them,
# pml ob1 + btl tcp,self), ours beside plain MPI_Alltoallv of the same bytes, same run.
#   - mx_transport_bench: ours and plain MPI_Alltoallv take turns per repetition;
#   - mxworker bench: the layers run over both (--baseline layer); the medians of the
#     slowest rank's in-layer exchange are the figures to compare on a noisy machine.
# With K ranks per host, pairs on one host use the shared-memory window and pairs on two
# hosts MPI_Ialltoallv over TCP (K = 1: one blocking MPI_Alltoallv, the same as plain).
# More ranks than cores: Open MPI's busy polling then makes every wait a scheduler time
# slice, so these runs set OMPI_MCA_mpi_yield_when_idle=1 (both sides alike).
# The cluster script's default btl tcp,self sends every message over TCP, also between
# two ranks of one host (our window's barriers among them included); vader,tcp,self (as
# on a real cluster) lets those use shared memory. Both are run.
# Needs root. Usage: bench/xchg_cluster.sh [BUILD_DIR] (default build/); log on stdout.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$ROOT/build}
NC=$ROOT/launch/netns-cluster.sh
X=$B/transport/mx_transport_bench
W=$B/worker/mxworker
GPT="--tokens 64 --hidden 2880 --experts 32 --topk 4"
run() { # btl, hosts, ranks per host, program...
  local btl=$1 h=$2 k=$3
  shift 3
  echo "-- $h hosts x $k ranks, btl $btl: $*"
  "$NC" --hosts "$h" --ranks-per-host "$k" --btl "$btl" --timeout 300 --env OMPI_MCA_mpi_yield_when_idle=1 \
    --compare 'bytes per rank|mxworker bench: [a-z0-9-]+' -- "$@" 2>&1 |
    grep -E '^  mxep  |^  MPI_Alltoallv|split, mean|^  speedup|layer latency|in the layer  |mean over ranks|alone  |results match|FAILED|error'
}
echo "== $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git -C "$ROOT" rev-parse --short HEAD)"
for btl in tcp,self vader,tcp,self; do
  for i in 1 2; do run $btl 2 1 "$X" $GPT --iters 40; done
  for i in 1 2; do run $btl 2 2 "$X" $GPT --iters 30; done
  run $btl 2 2 "$W" bench --preset tiny --iters 30 --threads 1 --quiet
done
V=vader,tcp,self
run $V 2 1 "$X" --iters 20
run $V 3 1 "$X" $GPT --iters 30
run $V 2 1 "$W" bench --preset tiny --iters 50 --threads 1 --quiet
run $V 2 1 "$W" bench --iters 5 --threads 1 --quiet
run $V 2 2 "$W" bench --iters 3 --threads 1 --quiet
