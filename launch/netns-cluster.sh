#!/usr/bin/env bash
# netns-cluster.sh: a simulated multi-host cluster on one machine. Each "host" is
# a network namespace with its own host name (UTS namespace) and one veth link
# into a bridge (in a switch namespace), addresses 10.77.0.1, .2, ... /24.
# mpirun runs in host 0; the other hosts' daemons are started by Open MPI's rsh
# launcher through launch/netns-agent.sh, which enters the namespace named by the
# host. MPI traffic goes over TCP between the namespaces (pml ob1, btl tcp,self,
# restricted to the veth subnet). The same program then runs as one process and
# the result lines must match. Namespaces are removed on every exit path.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prog=netns-cluster.sh

usage() {
    cat <<'EOF'
Usage: netns-cluster.sh [--hosts N] [--ranks-per-host K] [--compare REGEX]
                        [--min-bytes B] [--timeout S] [--btl LIST] [--keep] [--json] -- PROGRAM [ARGS...]

Builds N hosts (2 or 3, default 3) from network namespaces linked by veth pairs to a
bridge, runs PROGRAM ARGS on N*K ranks (default K=1) across them with mpirun over TCP,
then runs it once more as a single process (mpirun -n 1, outside the namespaces), and
compares the stdout lines that match REGEX (default: "checksum"; at least one must match,
and they must be the same in both runs).

  --min-bytes B   every host's veth must have received at least B bytes during the run
                  (default 1), which shows the ranks talked over the simulated network
  --timeout S     limit for each mpirun (default 120 s); a hung run fails, never blocks
  --btl LIST      Open MPI's byte transfer layers (default tcp,self: every message over TCP,
                  also between ranks of one host; vader,tcp,self lets those use shared memory)
  --env VAR=VAL   set VAR for the program in both runs (repeatable), e.g.
                  --env UCX_TLS=tcp,self --env UCX_NET_DEVICES=eth0
  --keep          leave the namespaces in place (for debugging; remove them with
                  `ip netns del NAME`; names are printed)
  --json          print one JSON summary line at the end instead of the text summary

The namespaces are named TAG-sw (the bridge) and TAG-h0.. (the hosts), TAG = mxc<pid>
or $MXEP_NETNS_TAG.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 (`ip netns`), unshare and Open MPI's
mpirun. Exits 77 (skipped) when not root or when network namespaces are not permitted
here, 0 when the results match, 1 when they do not or a run fails, 2 on bad usage.

Example (mxworker prints no checksum: compare its --check line; --tokens-total keeps the
batch the same on N*K ranks and on one):
  launch/netns-cluster.sh --hosts 3 \
      --compare 'check layer [0-9]+: ok: [0-9]+ tokens, 0 of [0-9]+ values differ' \
      -- build/worker/mxworker bench --preset tiny --tokens-total 90 --check
EOF
}

die() { echo "$prog: error: $*" >&2; exit 2; }
skip() { echo "$prog: skipped: $*" >&2; exit 77; }

nhosts=3
per_host=1
compare='"checksum": *"[^"]*"'
compare_set=0
min_bytes=1
tmo=120
btl=tcp,self
keep=0
json=0
declare -a env_set=()
while [ $# -gt 0 ]; do
    case "$1" in
    --hosts) [ $# -ge 2 ] || die "--hosts needs 2 or 3"; nhosts="$2"; shift 2 ;;
    --ranks-per-host) [ $# -ge 2 ] || die "--ranks-per-host needs a number"; per_host="$2"; shift 2 ;;
    --compare) [ $# -ge 2 ] || die "--compare needs a regular expression"; compare="$2"; compare_set=1; shift 2 ;;
    --min-bytes) [ $# -ge 2 ] || die "--min-bytes needs a number"; min_bytes="$2"; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; tmo="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --btl) [ $# -ge 2 ] || die "--btl needs a list such as tcp,self"; btl="$2"; shift 2 ;;
    --env)
        [ $# -ge 2 ] || die "--env needs VAR=VALUE"
        [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env '$2': expected VAR=VALUE"
        env_set+=("$2")
        shift 2
        ;;
    --json) json=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1'" ;;
    *) break ;;
    esac
done
case "$nhosts" in 2 | 3) ;; *) die "--hosts '$nhosts': expected 2 or 3" ;; esac
[[ $per_host =~ ^[1-9][0-9]*$ ]] && [ "$per_host" -le 16 ] || die "--ranks-per-host '$per_host': expected 1..16"
[[ $min_bytes =~ ^[0-9]+$ ]] || die "--min-bytes '$min_bytes': expected a whole number"
[[ $tmo =~ ^[1-9][0-9]*$ ]] || die "--timeout '$tmo': expected whole seconds >= 1"
[[ $btl =~ ^[a-z0-9_,^]+$ ]] && [[ $btl == *tcp* ]] || die "--btl '$btl': expected a list of byte transfer layers with tcp (e.g. vader,tcp,self)"
[ $# -ge 1 ] || die "no program given after --"
program=("$@")
prog_path="$(type -P -- "${program[0]}" 2>/dev/null || true)"
[ -n "$prog_path" ] || die "program '${program[0]}' not found or not executable"
program[0]="$(cd "$(dirname "$prog_path")" && pwd)/$(basename "$prog_path")"
use_out=0
for a in "${program[@]}"; do case "$a" in *"{out}"*) use_out=1 ;; esac; done
check_regex=1
[ "$use_out" = 0 ] || [ "$compare_set" = 1 ] || check_regex=0

[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces (running as uid $(id -u))"
for tool in ip unshare mpirun timeout; do
    command -v "$tool" >/dev/null 2>&1 || skip "'$tool' is not installed"
done
mpirun --version 2>/dev/null | grep -q 'Open MPI' || skip "mpirun is not Open MPI (the launch agent uses its rsh launcher)"

tag="${MXEP_NETNS_TAG:-mxc$$}" # names: TAG-sw, TAG-h0, ... (MXEP_NETNS_TAG: for tests)
[[ $tag =~ ^[a-z][a-z0-9]{0,11}$ ]] || die "MXEP_NETNS_TAG '$tag': expected 1..12 of [a-z0-9], starting with a letter"
sw="${tag}-sw"
declare -a ns=()
for ((i = 0; i < nhosts; i++)); do ns+=("${tag}-h$i"); done
work="$(mktemp -d "${TMPDIR:-/tmp}/mxep-netns.XXXXXX")"
created=()

cleanup() {
    local rc=$?
    if [ "$keep" = 1 ]; then
        echo "$prog: --keep: namespaces left in place: ${created[*]:-none}; work dir $work" >&2
        exit $rc
    fi
    local n p
    for n in "${created[@]+"${created[@]}"}"; do
        # Processes we started that are still inside (a failed job's daemons).
        for p in $(ip netns pids "$n" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
    done
    sleep 0.2
    for n in "${created[@]+"${created[@]}"}"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null || echo "$prog: warning: could not delete namespace $n" >&2
        rm -rf "/etc/netns/$n"
    done
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Probe: can we create a namespace at all?
if ! ip netns add "$sw" 2>"$work/probe.err"; then
    skip "'ip netns add' is not permitted here: $(head -n1 "$work/probe.err")"
fi
created+=("$sw")
ip -n "$sw" link set lo up || { echo "$prog: error: cannot use namespace $sw" >&2; exit 1; }
if ! ip -n "$sw" link add br0 type bridge 2>"$work/probe.err"; then
    skip "cannot create a bridge in a namespace: $(head -n1 "$work/probe.err")"
fi
ip -n "$sw" link set br0 up

step() { # run a setup command; fail loudly naming it
    if ! "$@" 2>"$work/step.err"; then
        echo "$prog: error: setup step failed: $*: $(cat "$work/step.err")" >&2
        exit 1
    fi
}

hostsfile="$work/hosts"
hostfile="$work/hostfile"
: >"$hostfile"
for ((i = 0; i < nhosts; i++)); do
    printf '10.77.0.%d mxh%d\n' $((i + 1)) "$i"
done >"$hostsfile"
for ((i = 0; i < nhosts; i++)); do
    n="${ns[$i]}"
    step ip netns add "$n"
    created+=("$n")
    step ip -n "$n" link set lo up
    step ip link add eth0 netns "$n" type veth peer name "p$i" netns "$sw"
    step ip -n "$sw" link set "p$i" master br0
    step ip -n "$sw" link set "p$i" up
    step ip -n "$n" addr add "10.77.0.$((i + 1))/24" dev eth0
    step ip -n "$n" link set eth0 up
    # `ip netns exec` bind-mounts /etc/netns/NAME/hosts over /etc/hosts: the host names resolve.
    mkdir -p "/etc/netns/$n"
    { echo "127.0.0.1 localhost"; cat "$hostsfile"; } >"/etc/netns/$n/hosts"
    echo "mxh$i slots=$per_host" >>"$hostfile"
done

# Every host must reach mxh0 over the bridge: a TCP connect to a closed port gets
# "refused" at once when the link works (and times out when it does not).
for ((i = 1; i < nhosts; i++)); do
    ok=0
    for _ in 1 2 3 4 5; do
        out=$(timeout 2 ip netns exec "${ns[$i]}" bash -c 'exec 3<>/dev/tcp/10.77.0.1/9' 2>&1)
        case "$out" in *refused*) ok=1; break ;; esac
        sleep 0.2
    done
    [ "$ok" = 1 ] || { echo "$prog: error: host mxh$i (10.77.0.$((i + 1))) cannot reach mxh0 (10.77.0.1): ${out:-timeout}" >&2; exit 1; }
done

rx_bytes() { ip netns exec "$1" cat /sys/class/net/eth0/statistics/rx_bytes; }
declare -a rx0=()
for ((i = 0; i < nhosts; i++)); do rx0+=("$(rx_bytes "${ns[$i]}")"); done

np=$((nhosts * per_host))
root_flags=(--allow-run-as-root)
mpi_cmd=(mpirun "${root_flags[@]}" -n "$np" --hostfile "$hostfile" --map-by node --bind-to none
    --mca plm_rsh_agent "$here/netns-agent.sh" --mca plm_rsh_no_tree_spawn 1
    --mca pml ob1 --mca btl "$btl"
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24
    -x MXEP_NETNS_PREFIX="${tag}-h" -x PATH)
while IFS= read -r var; do mpi_cmd+=(-x "$var"); done < <(compgen -e | grep '^MXEP_' | grep -v '^MXEP_NETNS_PREFIX$' | LC_ALL=C sort || true)
for e in "${env_set[@]+"${env_set[@]}"}"; do mpi_cmd+=(-x "$e"); done
program_cluster=("${program[@]//\{out\}/$work/cluster-result}")
program_single=("${program[@]//\{out\}/$work/single-result}")
mpi_cmd+=("${program_cluster[@]}")

echo "$prog: $nhosts hosts (${ns[*]}), $np ranks: $(printf '%q ' "${mpi_cmd[@]}")" >&2
t_start=$(date +%s%N)
MXEP_NETNS_PREFIX="${tag}-h" timeout -k 5 "$tmo" \
    ip netns exec "${ns[0]}" unshare --uts sh -c 'hostname mxh0 && exec "$@"' sh "${mpi_cmd[@]}" \
    >"$work/cluster.out" 2>"$work/cluster.err"
rc_cluster=$?
t_ms=$((($(date +%s%N) - t_start) / 1000000))
declare -a rxd=()
for ((i = 0; i < nhosts; i++)); do rxd+=($(($(rx_bytes "${ns[$i]}") - ${rx0[$i]}))); done

fail=0
if [ $rc_cluster -ne 0 ]; then
    [ $rc_cluster -eq 124 ] && echo "$prog: error: the cluster run did not finish within $tmo s" >&2
    echo "$prog: error: the cluster run failed (exit $rc_cluster); its output:" >&2
    sed 's/^/  | /' "$work/cluster.out" "$work/cluster.err" >&2
    exit 1
fi

env "${env_set[@]+"${env_set[@]}"}" timeout -k 5 "$tmo" mpirun "${root_flags[@]}" -n 1 --bind-to none "${program_single[@]}" >"$work/single.out" 2>"$work/single.err"
rc_single=$?
if [ $rc_single -ne 0 ]; then
    echo "$prog: error: the single-process run failed (exit $rc_single); its output:" >&2
    sed 's/^/  | /' "$work/single.out" "$work/single.err" >&2
    exit 1
fi

if [ "$use_out" = 1 ]; then
    found=0
    for f in "$work"/cluster-result*; do
        [ -e "$f" ] || continue
        found=1
        g="$work/single-result${f#"$work"/cluster-result}"
        if [ ! -s "$f" ] || ! cmp -s "$f" "$g"; then
            echo "$prog: error: result file $(basename "$f") of $np ranks on $nhosts hosts differs from one process's$( [ -e "$g" ] || echo " (which wrote none)")" >&2
            fail=1
        fi
    done
    if [ "$found" = 0 ]; then
        echo "$prog: error: the program wrote no file at {out}" >&2
        fail=1
    fi
fi
if [ "$check_regex" = 1 ]; then
    cat "$work/cluster.out" "$work/cluster.err" | grep -oE -- "$compare" >"$work/cluster.cmp" || true
    cat "$work/single.out" "$work/single.err" | grep -oE -- "$compare" >"$work/single.cmp" || true
    if [ ! -s "$work/cluster.cmp" ]; then
        echo "$prog: error: no part of the cluster run's output matches --compare '$compare'; output:" >&2
        sed 's/^/  | /' "$work/cluster.out" "$work/cluster.err" >&2
        fail=1
    elif ! cmp -s "$work/cluster.cmp" "$work/single.cmp"; then
        echo "$prog: error: results differ between $np ranks on $nhosts hosts and one process:" >&2
        diff "$work/single.cmp" "$work/cluster.cmp" | sed 's/^/  /' >&2
        fail=1
    fi
fi
for ((i = 0; i < nhosts; i++)); do
    if [ "${rxd[$i]}" -lt "$min_bytes" ]; then
        echo "$prog: error: host mxh$i received ${rxd[$i]} bytes on its veth, expected at least $min_bytes" >&2
        fail=1
    fi
done

cat "$work/cluster.out"
if [ "$json" = 1 ]; then
    printf '{"hosts": %d, "ranks": %d, "match": %s, "seconds": %s, "rx_bytes": [%s]}\n' "$nhosts" "$np" \
        "$([ $fail = 0 ] && echo true || echo false)" "$((t_ms / 1000)).$(printf %03d $((t_ms % 1000)))" "$(IFS=,; echo "${rxd[*]}")"
else
    echo "$prog: $np ranks on $nhosts namespace hosts over TCP: $([ $fail = 0 ] && echo "results match one process" || echo FAILED)"
    for ((i = 0; i < nhosts; i++)); do echo "$prog:   mxh$i (10.77.0.$((i + 1))) received ${rxd[$i]} bytes"; done
fi
exit $fail
