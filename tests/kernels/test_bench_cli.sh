#!/usr/bin/env bash
# The benchmarks' command lines: --help, and bad options refused (exit 2, the option
# named) before anything is measured (mxbench: no "measuring" line, so a bad value never
# costs a run; mxgpu_bench: before it looks for a device, so these need none).
# usage: test_bench_cli.sh MXBENCH [MXGPU_BENCH]
set -u
mx="$1"
gpu="${2:-}"
. "$(dirname "$0")/../cli_check.sh"
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

refused rotate-zero "--rotate '0': expected an integer 1..64" --rotate 0
refused rotate-big "--rotate '65': expected an integer 1..64" --rotate 65
refused rotate-word "--rotate 'x'" --rotate x
refused rotate-missing "--rotate needs a value" --rotate
refused threads-word "--threads 'abc'" --threads abc
refused threads-zero "--threads '0': expected an integer 1..4096" --threads 0
refused threads-negative "--threads '-1': expected an integer 1..4096" --threads -1
refused iters-zero "--iters '0': expected an integer 1..256" --iters 0
refused tokens-empty "--tokens: an empty list" --tokens ,
refused tokens-empty-item "--tokens '1,,2': an empty item in the list" --tokens 1,,2
refused tokens-trailing-comma "--tokens '1,': an empty item in the list" --tokens 1,
refused tokens-zero "--tokens '0': expected an integer 1..1048576" --tokens 1,0
refused tokens-negative "--tokens '-1': expected an integer 1..1048576" --tokens -1
refused model-empty "--model: an empty list" --model ,
refused model-bogus "--model 'bogus'" --model bogus
refused scheme-bogus "--scheme 'W3A3'" --scheme W3A3
refused unknown-option "unknown option '--bogus'" --bogus
refused json-unwritable "--json $tmp/no/such/dir/r.json: folder $tmp/no/such/dir: No such file or directory" --json "$tmp/no/such/dir/r.json"
# a folder, or an empty path: refused before anything is measured (PATH.tmp could be created for both, the
# run went on and failed only at its final rename)
mkdir -p "$tmp/adir"
refused json-directory "--json $tmp/adir: is a directory, expected a file path" --json "$tmp/adir"
refused json-empty "--json '': expected a file path" --json ""
[ -e "$tmp/no" ] && { echo "FAIL json-unwritable: created $tmp/no"; fails=$((fails + 1)); }
refused backend-bogus "no such backend" --backend nosuch

if [ -n "$gpu" ]; then
  gpu_refused() { # gpu_refused NAME TEXT ARGS...: exit 2 naming TEXT, before the device probe
    local name="gpu-$1" text="$2"
    shift 2
    check "$name" 2 "$gpu" "$@"
    has "$name" "$text"
    lacks "$name" "cuda:"
  }
  check gpu-help 0 "$gpu" --help
  has gpu-help "--copies N"
  gpu_refused experts-suffix "--experts '32abc': expected an integer 1..65536" --experts 32abc
  gpu_refused iters-zero "--iters '0'" --iters 0
  gpu_refused hidden-fraction "--hidden '2880.5'" --hidden 2880.5
  gpu_refused seed-negative "--seed '-1'" --seed -1
  gpu_refused copies-big "--copies '17': expected an integer 1..16" --copies 17
  gpu_refused tokens-empty-item "--tokens 1,,8" --tokens 1,,8
  gpu_refused tokens-trailing "--tokens 1,8," --tokens 1,8,
  gpu_refused tokens-zero "--tokens 0" --tokens 0
  gpu_refused topk-over-experts "--top-k 5 is more than --experts 4" --top-k 5 --experts 4
  gpu_refused scheme-bogus "--scheme W3A3" --scheme W3A3
  gpu_refused unknown-option "--bogus: unknown option" --bogus 1
fi

cli_done
