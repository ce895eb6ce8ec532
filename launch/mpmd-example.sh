#!/usr/bin/env bash
# Heterogeneous MPMD launch: one MPI job (one expert-parallel group) whose first
# ranks drive GPUs (--backend cuda) and whose other ranks run on CPU cores only
# (--backend cpu), with Open MPI's "A : B" syntax. Each rank's oracle still checks
# that the forced backend can run there (an unusable forced choice is an error).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: mpmd-example.sh [--gpu-ranks G] [--cpu-ranks C] [--hostfile FILE] [--mxworker PATH]
                       [--dry-run] -- SUBCOMMAND [ARGS...]

Runs  mpirun -n G MXWORKER SUBCOMMAND ARGS --backend cuda : -n C MXWORKER SUBCOMMAND ARGS --backend cpu
(G defaults to the number of GPUs that nvidia-smi lists, C to 2), prints the line on stderr,
and runs it. --dry-run prints it on stdout and runs nothing. Ranks 0..G-1 are the GPU ranks.
Every MXEP_* variable is forwarded (-x). Root adds --allow-run-as-root; more ranks than
cores adds --oversubscribe (without a hostfile).

Example (2 GPUs and 6 CPU ranks on one box):
  launch/mpmd-example.sh --gpu-ranks 2 --cpu-ranks 6 -- bench --preset tiny
On a cluster, give a hostfile that lists the GPU hosts first:
  launch/mpmd-example.sh --hostfile hosts --gpu-ranks 8 --cpu-ranks 16 -- run --model /shared/model --input x.safetensors --output y.safetensors
USAGE
}

# Shell-quotes the words of a command line, leaving plain words bare.
quote_line() {
    local out="" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_,./:=@%+-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
    done
    printf '%s\n' "${out% }"
}

die() { echo "mpmd-example.sh: error: $*" >&2; exit 2; }

gpu=""
cpu=2
hostfile=""
dry=0
mxworker="${MXWORKER:-mxworker}"
while [ $# -gt 0 ]; do
    case "$1" in
    --gpu-ranks) [ $# -ge 2 ] || die "--gpu-ranks needs a number"; gpu="$2"; shift 2 ;;
    --cpu-ranks) [ $# -ge 2 ] || die "--cpu-ranks needs a number"; cpu="$2"; shift 2 ;;
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a file"; hostfile="$2"; shift 2 ;;
    --mxworker) [ $# -ge 2 ] || die "--mxworker needs a path"; mxworker="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the mxworker subcommand goes after --)" ;;
    esac
done
[ $# -ge 1 ] || die "no mxworker subcommand given after --"
if [ -z "$gpu" ]; then
    gpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
[[ $gpu =~ ^[0-9]{1,9}$ ]] || die "--gpu-ranks '$gpu': expected a whole number (0 to 999999999)"
[[ $cpu =~ ^[0-9]{1,9}$ ]] || die "--cpu-ranks '$cpu': expected a whole number (0 to 999999999)"
gpu=$((10#$gpu))
cpu=$((10#$cpu))
[ -z "$hostfile" ] || { [ -f "$hostfile" ] && [ -r "$hostfile" ]; } || die "--hostfile '$hostfile': cannot read the file"
[ $((gpu + cpu)) -ge 1 ] || die "no ranks: --gpu-ranks and --cpu-ranks are both 0"

cmd=(mpirun)
[ -z "$hostfile" ] || cmd+=(--hostfile "$hostfile")
if [ -z "$hostfile" ] && [ $((gpu + cpu)) -gt "${MXRUN_CORES:-$(nproc)}" ]; then cmd+=(--oversubscribe); fi
[ "${MXRUN_UID:-$(id -u)}" != 0 ] || cmd+=(--allow-run-as-root)
while IFS= read -r var; do cmd+=(-x "$var"); done < <(compgen -e | grep '^MXEP_' | LC_ALL=C sort || true)
sep=""
if [ "$gpu" -gt 0 ]; then
    cmd+=(-n "$gpu" "$mxworker" "$@" --backend cuda)
    sep=":"
fi
if [ "$cpu" -gt 0 ]; then
    [ -z "$sep" ] || cmd+=("$sep")
    cmd+=(-n "$cpu" "$mxworker" "$@" --backend cpu)
fi

if [ "$dry" = 1 ]; then
    quote_line "${cmd[@]}"
    exit 0
fi
echo "mpmd-example.sh: $(quote_line "${cmd[@]}")" >&2
exec "${cmd[@]}"
