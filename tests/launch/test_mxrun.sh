#!/usr/bin/env bash
# Checks the mpirun lines that launch/mxrun and launch/mpmd-example.sh build
# (--dry-run), their errors on bad input, and one real run of mxrun.
# Usage: test_mxrun.sh LAUNCH_DIR
set -uo pipefail
launch="${1:?usage: test_mxrun.sh LAUNCH_DIR}"
mxrun="$launch/mxrun"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
n=0

# A clean environment: no MXEP_* from the caller, fixed cores and uid.
for v in $(compgen -e | grep '^MXEP_' || true); do unset "$v"; done

expect_line() { # NAME EXPECTED CMD...
    local name="$1" want="$2" got
    shift 2
    n=$((n + 1))
    got=$("$@" 2>"$tmp/err")
    local rc=$?
    if [ $rc -ne 0 ] || [ "$got" != "$want" ]; then
        echo "FAIL $name (rc=$rc)"
        echo "  want: $want"
        echo "  got:  $got"
        sed 's/^/  stderr: /' "$tmp/err"
        fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}

expect_error() { # NAME RC STDERR_SUBSTRING CMD...
    local name="$1" want_rc="$2" want_msg="$3" got
    shift 3
    n=$((n + 1))
    got=$("$@" 2>"$tmp/err")
    local rc=$?
    if [ $rc -ne "$want_rc" ] || ! grep -qF -- "$want_msg" "$tmp/err" || [ -n "$got" ]; then
        echo "FAIL $name: want rc=$want_rc and stderr containing '$want_msg', empty stdout"
        echo "  rc=$rc stdout: $got"
        sed 's/^/  stderr: /' "$tmp/err"
        fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}

U=(env MXRUN_UID=1000 MXRUN_CORES=8)
R=(env MXRUN_UID=0 MXRUN_CORES=8)

expect_line local_fits_binds_to_core \
    "mpirun -n 4 --bind-to core mxworker bench --preset tiny" \
    "${U[@]}" "$mxrun" -n 4 --dry-run -- mxworker bench --preset tiny
expect_line local_exact_core_count_is_not_oversubscribed \
    "mpirun -n 8 --bind-to core prog" \
    "${U[@]}" "$mxrun" -n 8 --dry-run -- prog
expect_line local_short_of_cores_oversubscribes_and_unbinds \
    "mpirun -n 9 --oversubscribe --bind-to none prog" \
    "${U[@]}" "$mxrun" -n 9 --dry-run -- prog
expect_line root_adds_allow_run_as_root \
    "mpirun -n 2 --allow-run-as-root --bind-to core prog" \
    "${R[@]}" "$mxrun" -n 2 --dry-run -- prog
expect_line explicit_bind_none_is_kept \
    "mpirun -n 2 --bind-to none prog" \
    "${U[@]}" "$mxrun" -n 2 --bind none --dry-run -- prog
expect_line mxep_variables_are_forwarded_sorted \
    "mpirun -n 2 --bind-to core -x MXEP_BACKEND -x MXEP_LOG -x OMP_NUM_THREADS=3 prog" \
    env MXEP_LOG=debug MXEP_BACKEND=ref OTHER=1 "${U[@]}" "$mxrun" -n 2 -x OMP_NUM_THREADS=3 --dry-run -- prog
expect_line tcp_without_net_selects_ob1_tcp \
    "mpirun -n 2 --bind-to core --mca pml ob1 --mca btl tcp,self prog" \
    "${U[@]}" "$mxrun" -n 2 --tcp --dry-run -- prog
expect_line tcp_with_subnet_restricts_btl_and_oob \
    "mpirun -n 3 --bind-to core --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 --mca plm_rsh_agent /x/agent prog" \
    "${U[@]}" "$mxrun" -n 3 --tcp=10.77.0.0/24 --mca plm_rsh_agent /x/agent --dry-run -- prog
expect_line program_arguments_are_quoted \
    "mpirun -n 1 --bind-to core prog a\\ b \\\$HOME" \
    "${U[@]}" "$mxrun" -n 1 --dry-run -- prog "a b" '$HOME'

cat >"$tmp/hosts" <<'H'
# two hosts
nodeA slots=4
nodeB slots=2   # trailing comment

nodeC
H
expect_line hostfile_slots_fit \
    "mpirun -n 7 --hostfile $tmp/hosts --bind-to core prog" \
    "${U[@]}" "$mxrun" --hostfile "$tmp/hosts" -n 7 --dry-run -- prog
expect_line hostfile_short_of_slots_oversubscribes \
    "mpirun -n 8 --hostfile $tmp/hosts --oversubscribe --allow-run-as-root --bind-to none prog" \
    "${R[@]}" "$mxrun" --hostfile "$tmp/hosts" -n 8 --dry-run -- prog
expect_line dry_run_json_lists_argv \
    '{"argv": ["mpirun", "-n", "9", "--oversubscribe", "--bind-to", "none", "prog", "say \"hi\""], "np": 9, "slots": 8, "oversubscribed": true, "bind": "none"}' \
    "${U[@]}" "$mxrun" -n 9 --dry-run --json -- prog 'say "hi"'
# control characters other than \n \t \r (which JSON forbids raw) as \u00XX: the line stayed invalid JSON
expect_line dry_run_json_escapes_control_characters \
    '{"argv": ["mpirun", "-n", "9", "--oversubscribe", "--bind-to", "none", "prog", "a\u0001b", "x\u007fy\ty"], "np": 9, "slots": 8, "oversubscribed": true, "bind": "none"}' \
    "${U[@]}" "$mxrun" -n 9 --dry-run --json -- prog $'a\001b' $'x\177y\ty'

printf 'nodeA slots=two\n' >"$tmp/badhosts"
expect_error bad_hostfile_slots_names_line 2 "badhosts:1: 'slots=two'" "${U[@]}" "$mxrun" --hostfile "$tmp/badhosts" -n 2 --dry-run -- prog
printf '# nothing\n\n' >"$tmp/emptyhosts"
expect_error empty_hostfile_is_refused 2 "no host in the file" "${U[@]}" "$mxrun" --hostfile "$tmp/emptyhosts" -n 2 --dry-run -- prog
expect_error missing_hostfile_is_refused 2 "cannot read the file" "${U[@]}" "$mxrun" --hostfile "$tmp/nope" -n 2 --dry-run -- prog
printf 'nodeA slots=010\n' >"$tmp/zerohosts"
expect_line hostfile_leading_zeros_are_decimal \
    '{"argv": ["mpirun", "-n", "9", "--hostfile", "'"$tmp"'/zerohosts", "--bind-to", "core", "prog"], "np": 9, "slots": 10, "oversubscribed": false, "bind": "core"}' \
    "${U[@]}" "$mxrun" --hostfile "$tmp/zerohosts" -n 09 --dry-run --json -- prog
expect_error directory_as_hostfile_is_refused 2 "cannot read the file" "${U[@]}" "$mxrun" --hostfile "$tmp" -n 2 --dry-run -- prog
expect_error huge_rank_count_is_refused 2 "from 1 to 999999999" "${U[@]}" "$mxrun" -n 99999999999999999999 --dry-run -- prog
expect_error missing_np_is_refused 2 "give -n N" "${U[@]}" "$mxrun" --dry-run -- prog
expect_error zero_ranks_is_refused 2 "-n '0'" "${U[@]}" "$mxrun" -n 0 --dry-run -- prog
expect_error non_numeric_ranks_is_refused 2 "-n 'x4'" "${U[@]}" "$mxrun" -n x4 --dry-run -- prog
expect_error missing_program_is_refused 2 "no program to run" "${U[@]}" "$mxrun" -n 2 --dry-run
expect_error unknown_option_is_refused 2 "unknown option '--frobnicate'" "${U[@]}" "$mxrun" --frobnicate -n 2 -- prog
expect_error bad_bind_is_refused 2 "--bind 'socket'" "${U[@]}" "$mxrun" -n 2 --bind socket --dry-run -- prog
expect_error json_without_dry_run_is_refused 2 "--json needs --dry-run" "${U[@]}" "$mxrun" -n 2 --json -- prog
expect_error missing_mpirun_is_refused 2 "mpirun '/nonexistent/mpirun' not found" "${U[@]}" "$mxrun" -n 1 --mpirun /nonexistent/mpirun -- true

n=$((n + 1))
if "$mxrun" --help | grep -q -- '--oversubscribe'; then echo "ok   help_describes_oversubscription"; else
    echo "FAIL help_describes_oversubscription"; fails=$((fails + 1)); fi

# MPMD example: GPU ranks then CPU ranks, separated by ':'.
expect_line mpmd_gpu_and_cpu_ranks \
    "mpirun -x MXEP_LOG -n 2 mxworker bench --preset tiny --backend cuda : -n 3 mxworker bench --preset tiny --backend cpu" \
    env MXEP_LOG=info MXRUN_UID=1000 MXRUN_CORES=8 "$launch/mpmd-example.sh" --gpu-ranks 2 --cpu-ranks 3 --dry-run -- bench --preset tiny
expect_line mpmd_cpu_only \
    "mpirun --allow-run-as-root -n 1 /opt/mxworker info --backend cpu" \
    env MXRUN_UID=0 "$launch/mpmd-example.sh" --gpu-ranks 0 --cpu-ranks 1 --mxworker /opt/mxworker --dry-run -- info
expect_error mpmd_bad_rank_count_is_refused 2 "--gpu-ranks '99999999999999999999'" "$launch/mpmd-example.sh" --gpu-ranks 99999999999999999999 --cpu-ranks 1 --dry-run -- info
expect_error mpmd_missing_hostfile_is_refused 2 "cannot read the file" "$launch/mpmd-example.sh" --hostfile "$tmp/nope" --gpu-ranks 0 --cpu-ranks 1 --dry-run -- info
expect_error mpmd_without_ranks_is_refused 2 "no ranks" "$launch/mpmd-example.sh" --gpu-ranks 0 --cpu-ranks 0 --dry-run -- info

# One real run: 2 ranks each print their rank; the line goes to stderr.
n=$((n + 1))
if command -v mpirun >/dev/null 2>&1; then
    out=$("$mxrun" -n 2 --bind none -- sh -c 'echo "rank=$OMPI_COMM_WORLD_RANK"' 2>"$tmp/err" | LC_ALL=C sort | tr '\n' ' ')
    if [ "$out" = "rank=0 rank=1 " ] && grep -q '^mxrun: .*mpirun -n 2' "$tmp/err"; then
        echo "ok   real_run_starts_two_ranks_and_prints_its_line"
    else
        echo "FAIL real_run_starts_two_ranks_and_prints_its_line: stdout '$out'"
        sed 's/^/  stderr: /' "$tmp/err"
        fails=$((fails + 1))
    fi
else
    echo "FAIL real_run: mpirun not found"
    fails=$((fails + 1))
fi

echo "$((n - fails))/$n passed"
[ "$fails" -eq 0 ]
