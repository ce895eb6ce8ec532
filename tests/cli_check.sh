# tests/cli_check.sh: helpers of the command-line tests (sourced; bash). Sets tmp (a
# fresh folder, removed on exit) and fails (the count of failed checks); check, has,
# lacks; cli_done prints the verdict and exits 1 when anything failed.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/mxep-cli-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # check NAME EXPECTED_RC COMMAND... : runs it (60 s at most), output in $tmp/out
  local name="$1" want="$2"
  shift 2
  timeout 60 "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, expected $want"; cat "$tmp/out"; fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}
has() { # has NAME TEXT: the last output contains TEXT
  if ! grep -qF -- "$2" "$tmp/out"; then echo "FAIL $1: output lacks '$2'"; cat "$tmp/out"; fails=$((fails + 1)); fi
}
lacks() { # lacks NAME TEXT: the last output does not contain TEXT
  if grep -qF -- "$2" "$tmp/out"; then echo "FAIL $1: output has '$2'"; cat "$tmp/out"; fails=$((fails + 1)); fi
}
cli_done() {
  if [ "$fails" -ne 0 ]; then echo "$fails failures"; exit 1; fi
  echo "all passed"
}
