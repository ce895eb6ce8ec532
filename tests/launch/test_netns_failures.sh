#!/usr/bin/env bash
# Failure paths of launch/netns-cluster.sh: a program whose result depends on the
# host must be reported as a mismatch, a failing program and a hung program must
# fail (the hang within --timeout), and no namespace may be left behind in any case.
# Usage: test_netns_failures.sh LAUNCH_DIR
set -uo pipefail
launch="${1:?usage: test_netns_failures.sh LAUNCH_DIR}"
cluster="$launch/netns-cluster.sh"
[ "$(id -u)" = 0 ] || { echo "skipped: needs root"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

left_behind() { ip netns list 2>/dev/null | awk '{print $1}' | grep -c "^$1-" || true; }

case_() { # NAME WANT_RC STDERR_SUBSTRING TAG ARGS...
    local name="$1" want_rc="$2" msg="$3" tag="$4"
    shift 4
    MXEP_NETNS_TAG="$tag" "$cluster" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ "$rc" = 77 ]; then echo "skipped: $(cat "$tmp/err")"; exit 77; fi
    local left
    left=$(left_behind "$tag")
    if [ "$rc" != "$want_rc" ] || ! grep -qF -- "$msg" "$tmp/err" || [ "$left" != 0 ] || [ -e "/etc/netns/$tag-h0" ]; then
        echo "FAIL $name: rc=$rc (want $want_rc), namespaces left: $left, want stderr with '$msg'"
        sed 's/^/  | /' "$tmp/out" "$tmp/err"
        fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}

tag="mxf$$"
case_ host_dependent_result_is_a_mismatch 1 "results differ" "${tag}a" --hosts 2 --compare 'host=[a-z0-9]+' \
    -- sh -c 'echo host=$(hostname)'
case_ failing_program_fails_the_run 1 "the cluster run failed" "${tag}b" --hosts 3 -- false
case_ hung_program_is_stopped_by_the_timeout 1 "did not finish within 3 s" "${tag}c" --hosts 2 --timeout 3 -- sleep 60
case_ output_without_a_result_line_fails 1 "matches --compare" "${tag}d" --hosts 2 -- echo nothing
case_ too_few_bytes_over_the_veth_fails 1 "expected at least 1000000000" "${tag}e" --hosts 2 --min-bytes 1000000000 \
    --compare 'x' -- echo x
case_ four_hosts_is_bad_usage 2 "--hosts '4'" "${tag}f" --hosts 4 -- true
echo "$fails failed"
[ "$fails" -eq 0 ]
