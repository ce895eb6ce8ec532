#!/usr/bin/env bash
# mxbench's command line: --help, and bad options refused (exit 2, the option named)
# before anything is measured (no "measuring" line: a bad value never costs a run).
# usage: test_mxbench_cli.sh MXBENCH
set -u
mx="$1"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/mxep-bench-cli-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # check NAME EXPECTED_RC COMMAND... ; output in $tmp/out
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
lacks() { # lacks NAME TEXT
  if grep -qF -- "$2" "$tmp/out"; then echo "FAIL $1: output has '$2'"; cat "$tmp/out"; fails=$((fails + 1)); fi
}
refused() { # refused NAME TEXT ARGS...: exit 2 naming TEXT, nothing measured
  local name="$1" text="$2"
  shift 2
  check "$name" 2 "$mx" kernels "$@"
  has "$name" "$text"
  lacks "$name" "measuring"
}

check help 0 "$mx" kernels --help
has help "--paired"
has help "--rotate N"
check top-help 0 "$mx" --help
has top-help "kernels"
check no-subcommand 2 "$mx"
check unknown-subcommand 2 "$mx" frobnicate
has unknown-subcommand "unknown subcommand 'frobnicate'"

refused rotate-zero "--rotate must be 1..64" --rotate 0
refused rotate-big "--rotate '65'" --rotate 65
refused rotate-word "--rotate 'x'" --rotate x
refused rotate-missing "--rotate needs a value" --rotate
refused threads-word "--threads 'abc'" --threads abc
lacks threads-word "must be >= 1"
refused threads-zero "--threads must be >= 1" --threads 0
refused iters-zero "--iters must be >= 1" --iters 0
refused tokens-empty "--tokens: an empty list" --tokens ,
refused tokens-zero "0 is not a token count" --tokens 1,0
refused model-empty "--model: an empty list" --model ,
refused model-bogus "--model 'bogus'" --model bogus
refused scheme-bogus "--scheme 'W3A3'" --scheme W3A3
refused unknown-option "unknown option '--bogus'" --bogus
refused json-unwritable "--json $tmp/no/such/dir/r.json: cannot create" --json "$tmp/no/such/dir/r.json"
[ -e "$tmp/no" ] && { echo "FAIL json-unwritable: created $tmp/no"; fails=$((fails + 1)); }
refused backend-bogus "no such backend" --backend nosuch

if [ "$fails" -ne 0 ]; then
  echo "$fails failed"
  exit 1
fi
echo "all passed"
