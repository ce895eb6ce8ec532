#!/usr/bin/env bash
# netns-agent.sh: Open MPI's plm_rsh_agent for launch/netns-cluster.sh. Open MPI
# calls it like ssh: `netns-agent.sh [options] HOST COMMAND...`. It runs COMMAND
# (joined with spaces and given to sh, as a remote shell would) inside the network
# namespace "${MXEP_NETNS_PREFIX}N" for HOST "mxhN", with its own UTS namespace whose
# host name is HOST, so every simulated host has its own name and address.
set -euo pipefail
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done # ssh-style options: none apply
[ $# -ge 2 ] || { echo "netns-agent.sh: error: expected HOST COMMAND..., got '$*'" >&2; exit 255; }
host="$1"
shift
[ -n "${MXEP_NETNS_PREFIX:-}" ] || { echo "netns-agent.sh: error: MXEP_NETNS_PREFIX is not set (run through netns-cluster.sh)" >&2; exit 255; }
case "$host" in
mxh[0-9] | mxh[0-9][0-9]) ns="${MXEP_NETNS_PREFIX}${host#mxh}" ;;
*) echo "netns-agent.sh: error: host '$host': expected mxhN (a host of netns-cluster.sh)" >&2; exit 255 ;;
esac
[ -e "/run/netns/$ns" ] || { echo "netns-agent.sh: error: host '$host': namespace $ns does not exist" >&2; exit 255; }
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && shift && exec sh -c "$*"' sh "$host" "$@"
