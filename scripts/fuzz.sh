#!/usr/bin/env bash
# Fuzzes the checkpoint parsers (safetensors header, sharded index, config.json)
# with libFuzzer for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]     default 60
#
# Builds checkpoint/fuzz_parsers.c with clang (-fsanitize=fuzzer,address,undefined)
# into build-fuzz/, seeds the corpus with the headers, indexes and configs of every
# mxckpt preset (mxckpt fuzz-seeds), and runs. Exits non-zero if the fuzzer finds a
# crash, leak, sanitizer error or timeout (the reproducer is left in build-fuzz/).
# Environment: CC (default clang-14, then clang), MXEP_FUZZ_JOBS (build jobs, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
case "$secs" in
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a positive integer, got '$secs'" >&2; exit 2 ;;
esac
if [ "$secs" -lt 1 ]; then
  echo "fuzz.sh: SECONDS must be at least 1" >&2
  exit 2
fi

cc="${CC:-}"
if [ -z "$cc" ]; then
  for c in clang-14 clang; do
    if command -v "$c" >/dev/null 2>&1; then cc="$c"; break; fi
  done
fi
if [ -z "$cc" ] || ! "$cc" --version 2>/dev/null | grep -qi clang; then
  echo "fuzz.sh: needs clang with libFuzzer (apt-get install clang-14 libclang-rt-14-dev); got '${cc:-none}'" >&2
  exit 2
fi
cxx="${cc/clang/clang++}"
command -v "$cxx" >/dev/null 2>&1 || cxx="$cc"

bdir=build-fuzz
jobs="${MXEP_FUZZ_JOBS:-2}"
echo "== fuzz: configuring $bdir with $cc"
CC="$cc" CXX="$cxx" cmake -S . -B "$bdir" -DMXEP_FUZZ=ON -DMXEP_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMXEP_WITH_CUDA=OFF -DMXEP_WITH_HIP=OFF >"$bdir.configure.log" 2>&1 || { cat "$bdir.configure.log"; exit 1; }
cmake --build "$bdir" -j"$jobs" --target fuzz_ckpt_parsers mxckpt

seeds="$bdir/fuzz-seeds"
corpus="$bdir/fuzz-corpus"
rm -rf "$seeds"
mkdir -p "$seeds" "$corpus"
# mxckpt itself is built with the sanitizers too: leaks are not its concern here
ASAN_OPTIONS=detect_leaks=0 "$bdir/checkpoint/mxckpt" fuzz-seeds "$seeds"
echo "== fuzz: $(ls "$seeds" | wc -l) seeds, running for ${secs}s"
cd "$bdir"
set +e
./checkpoint/fuzz_ckpt_parsers -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
  -print_final_stats=1 fuzz-corpus fuzz-seeds
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "fuzz.sh: the fuzzer failed (exit $rc); reproducer: $(ls -t crash-* leak-* timeout-* oom-* 2>/dev/null | head -1)" >&2
  exit "$rc"
fi
echo "== fuzz: no crash in ${secs}s"
