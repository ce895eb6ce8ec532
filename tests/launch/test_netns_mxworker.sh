#!/usr/bin/env bash
# mxworker across the simulated cluster (launch/netns-cluster.sh): `bench --check`
# on 2 hosts x 2 ranks (shared memory within a host, TCP across) must report a
# bitwise match with the single-process pipeline in both runs, and `run` on 3
# hosts must write the same output file, byte for byte, as one process.
# Usage: test_netns_mxworker.sh LAUNCH_DIR MXWORKER PYTHON
set -uo pipefail
launch="${1:?usage: test_netns_mxworker.sh LAUNCH_DIR MXWORKER PYTHON}"
mxworker="${2:?}"
python="${3:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" - "$tmp/in.safetensors" <<'PY' || { echo "FAIL: cannot write the input with $python"; exit 1; }
import sys
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(20261123)  # fixed seed
save_file({"hidden_states": rng.standard_normal((37, 64)).astype(np.float32)}, sys.argv[1])
PY
fails=0
"$launch/netns-cluster.sh" --hosts 2 --ranks-per-host 2 --timeout 120 \
    --compare 'check layer [0-9]+: ok: [0-9]+ tokens, 0 of [0-9]+ values differ' \
    -- "$mxworker" bench --preset tiny --tokens-total 90 --iters 1 --check --quiet
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] && echo "ok   bench_check_on_2_hosts_x_2_ranks" || { echo "FAIL bench_check_on_2_hosts_x_2_ranks (exit $rc)"; fails=$((fails + 1)); }
"$launch/netns-cluster.sh" --hosts 3 --timeout 120 \
    -- "$mxworker" run --preset tiny --input "$tmp/in.safetensors" --output '{out}.safetensors'
rc=$?
[ $rc = 0 ] && echo "ok   run_output_on_3_hosts_equals_one_process" || { echo "FAIL run_output_on_3_hosts_equals_one_process (exit $rc)"; fails=$((fails + 1)); }
[ "$fails" -eq 0 ]
