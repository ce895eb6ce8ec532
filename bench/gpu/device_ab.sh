#!/usr/bin/env bash
# bench/gpu/device_ab.sh: compare kernel variants (MXEP_CUDA_* settings) on the GPU in one
# call, alternating them round by round so that drift of the machine hits every variant alike.
# Needs a build from bench/gpu/device_run.sh (build-device/). Prints, per setting and round,
# the layer time and its ratios to the HBM copy and to cuBLAS measured in the same bench run
# (repeated, pipelined, cold and rotating-weights layers: mxgpu_bench --help), and with
# --trace the kernels' timeline at the first token count; full logs go to $OUT (or ./out).
# --copies N is passed to mxgpu_bench (1: no rotating-weights timing, a quarter of the set-up).
# --prebuilt runs .prebuilt/mxgpu_bench (and .prebuilt/base/ for `base`) from bench/gpu/prebuild.sh
# instead of build-device/ and build-base/.
# Usage (repository root, on the device machine):
#   bash bench/gpu/device_ab.sh [--scheme S] [--tokens LIST] [--iters N] [--rounds R] [--trace] [--copies N] \
#        [--prebuilt] -- SETTING...  (SETTING: NAME=VALUE words in one argument, or "default"; a first
#                              word "base" runs build-base/'s mxgpu_bench, another revision's
#                              build: bench/gpu/base_src.sh, device_run.sh --base)
# Example: bash bench/gpu/device_ab.sh --tokens 1,8,64 --trace -- default MXEP_CUDA_DEC=a45
#          bash bench/gpu/device_ab.sh --tokens 8192 --rounds 3 -- base default
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out}
SCHEME=W4A16 TOKENS=1,8,64 ITERS=30 ROUNDS=2 TRACE=() COPIES=() PREBUILT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --scheme) SCHEME=$2; shift ;;
    --tokens) TOKENS=$2; shift ;;
    --iters) ITERS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --copies) COPIES=(--copies "$2"); shift ;;
    --trace) TRACE=(--trace) ;;
    --prebuilt) PREBUILT=1 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "device_ab.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "device_ab.sh: name at least one setting after -- (see --help)" >&2; exit 2; }
BIN_MAIN=$ROOT/build-device/kernels/gpu/mxgpu_bench BIN_BASE=$ROOT/build-base/kernels/gpu/mxgpu_bench
BASE_REV_FILE=$ROOT/.base/BASE_REVISION HOW="run bench/gpu/device_run.sh first" HOW_BASE="run bench/gpu/device_run.sh --base DIR first"
if [ "$PREBUILT" = 1 ]; then
  BIN_MAIN=$ROOT/.prebuilt/mxgpu_bench BIN_BASE=$ROOT/.prebuilt/base/mxgpu_bench BASE_REV_FILE=$ROOT/.prebuilt/base/REVISION
  HOW="run bench/gpu/prebuild.sh on the Debian machine and carry .prebuilt" HOW_BASE="run bench/gpu/prebuild.sh --base REV there"
fi
[ -x "$BIN_MAIN" ] || { echo "device_ab.sh: $BIN_MAIN missing: $HOW" >&2; exit 2; }
for s in "$@"; do
  case "$s" in base|"base "*)
    [ -x "$BIN_BASE" ] || { echo "device_ab.sh: setting '$s' needs $BIN_BASE: $HOW_BASE" >&2; exit 2; }
    echo "base: $(cat "$BASE_REV_FILE" 2>/dev/null || echo "$BIN_BASE (revision unknown)")"
    break ;;
  esac
done
. "$ROOT/bench/device_env.sh" || exit 2
if [ "$PREBUILT" = 1 ]; then prebuilt_env || exit 2; fi
mkdir -p "$OUT"
FIRST_T=${TOKENS%%,*}
STATUS=0
for r in $(seq 1 "$ROUNDS"); do
  for s in "$@"; do
    name=${s//[^A-Za-z0-9_.-]/_}
    log=$OUT/ab_${SCHEME}_${name}_r$r.log
    read -ra env <<< "$s"
    BIN=$BIN_MAIN
    if [ "${env[0]:-}" = base ]; then BIN=$BIN_BASE; env=("${env[@]:1}"); fi
    if [ "${env[0]:-}" = default ]; then env=("${env[@]:1}"); fi
    env "${env[@]}" timeout 150 "$BIN" --scheme "$SCHEME" --tokens "$TOKENS" --iters "$ITERS" "${TRACE[@]}" "${COPIES[@]}" \
      --json "$OUT/ab_${SCHEME}_${name}_r$r.json" > "$log" 2>&1
    rc=$?
    [ $rc = 0 ] || STATUS=1
    echo "== $SCHEME $s, round $r (exit $rc)"
    grep -m1 '^limits' "$log" | sed 's/^/  /'
    # T, layer_ms, %HBM, %cuBLAS, pipe_ms, pipe%HBM, cold_ms, cold%HBM, rot_ms, rot%HBM
    awk '$3 ~ /^(S|M|L)$/ && $1 ~ /^[0-9]+$/ {printf "  T=%-5s layer %s ms %s HBM %s cuBLAS, pipe %s ms %s, cold %s ms %s, rot %s ms %s\n", $1, $4, $7, $9, $12, $13, $14, $15, $16, $17}' "$log"
    if [ ${#TRACE[@]} -gt 0 ]; then
      awk -v t="trace T=$FIRST_T:" 'index($0, t) == 1 {on = 1; print "  " $0; next} on && /^  / {print "  " $0; next} {on = 0}' "$log"
    fi
  done
done
exit $STATUS
