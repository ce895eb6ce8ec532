#!/usr/bin/env bash
# bench/gpu/device_profile.sh: on the lent GPU machine, after device_run.sh has
# built build-device/: Nsight Compute on the layer's GEMM kernels at a few token
# counts (speed of light, occupancy, warp stalls, memory), condensed to the
# lines worth reading; full reports under $OUT/ncu_T<tokens>.txt.
# Usage: OUT=$OUT [PROFILE_ARGS="--scheme W8A8"] bash bench/gpu/device_profile.sh [TOKENS...]   (default 1 8192)
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
. "$ROOT/bench/device_env.sh" || exit 2
B=$ROOT/build-device/kernels/gpu/mxgpu_bench
[ -x "$B" ] || { echo "device_profile.sh: $B is not built (run bench/gpu/device_run.sh first)" >&2; exit 2; }
command -v ncu >/dev/null || { echo "device_profile.sh: ncu not found" >&2; exit 2; }
[ $# -gt 0 ] || set -- 1 8192
for T in "$@"; do
  echo "== ncu: mxgpu_bench --tokens $T ${PROFILE_ARGS:-} (first GEMM1 + GEMM2 of the checked run)"
  timeout 100 ncu --kernel-name regex:gemm_ --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section ComputeWorkloadAnalysis \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    "$B" --tokens "$T" --iters 2 --copies 1 ${PROFILE_ARGS:-} > "$OUT/ncu_T$T.txt" 2>&1
  echo "ncu exit $?"
  grep -E "gemm_(tc|dec)|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Grid Size|Block Size|Warp Cycles Per Issued|Issued Warp Per|No Eligible|Dynamic Shared|Theoretical Occupancy|L2 Hit|Mem Busy|Max Bandwidth|Stall|stall|Waves Per SM|Tensor|Pipe" \
    "$OUT/ncu_T$T.txt" | grep -v "issue_stalled" | sed 's/  */ /g' | cut -c1-160 | head -70
  # the stall reasons (cycles per issued instruction, at least 0.05), per kernel in ncu order
  awk '/gemm_(tc|dec)/ {print " " $1 " " $2 " " $3; next}
       /issue_stalled_.*_per_issue_active/ && $NF + 0 >= 0.05 {sub(/smsp__average_warps_issue_stalled_/, "", $1);
         sub(/_per_issue_active.ratio/, "", $1); print "   stall " $1 " " $NF}' "$OUT/ncu_T$T.txt" | head -60
done
