#!/usr/bin/env bash
# Set up, build and run the main job:
#   scripts/setup.sh, then a build with the default CMake preset (build/), then
#   mpirun -n 2 mxworker bench on the built-in default model (gpt-oss-20b shapes,
#   weights generated per rank), ending with the per-rank table and the totals.
# Extra arguments go to `mxworker bench` (e.g. --preset tiny, --tokens 128, --json out.json).
#   MXEP_RANKS=N      ranks (default 2)
#   MXEP_JOBS=N       parallel build jobs (default: the number of CPUs)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

"$here/scripts/setup.sh"

echo "quickstart: configuring and building (cmake --preset default)"
cmake --preset default >/tmp/mxep-quickstart-cmake.log 2>&1 || {
  tail -n 30 /tmp/mxep-quickstart-cmake.log >&2
  echo "quickstart: cmake configure failed (full log: /tmp/mxep-quickstart-cmake.log)" >&2
  exit 1
}
cmake --build --preset default -j "${MXEP_JOBS:-$(nproc)}" --target mxworker >/tmp/mxep-quickstart-build.log 2>&1 || {
  tail -n 30 /tmp/mxep-quickstart-build.log >&2
  echo "quickstart: build failed (full log: /tmp/mxep-quickstart-build.log)" >&2
  exit 1
}

flags=(--oversubscribe)
if [ "$(id -u)" = 0 ]; then
  flags+=(--allow-run-as-root)
fi
ranks=${MXEP_RANKS:-2}
# The built-in gpt-oss-20b layer 0, 64 tokens per rank, 1 warmup + 5 timed iterations: seconds on 2 cores.
cmd=(mpirun "${flags[@]}" -n "$ranks" "$here/build/worker/mxworker" bench "$@")
echo "quickstart: ${cmd[*]}"
exec "${cmd[@]}"
