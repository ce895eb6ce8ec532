#!/usr/bin/env bash
# bench/gpu/prebuild.sh: builds the GPU test and bench here (CUDA on, sm_90a + compute_80) and puts
# them in .prebuilt/ (git-ignored), so that a device call runs them as they are instead of
# building there (a build there takes 200-380 s of device time; the binaries built on this
# Debian 12 machine ran on the lent machine's Ubuntu 24.04 in session 27, the CUDA libraries
# found through LD_LIBRARY_PATH, which the device scripts set).
#   bash bench/gpu/prebuild.sh [--base REV] [--jobs N]
#     .prebuilt/mxgpu_bench, .prebuilt/test_cuda_parity, .prebuilt/REVISION (from the working tree)
#     --base REV: also REV's mxgpu_bench in .prebuilt/base/ (REV's tree from bench/gpu/base_src.sh)
#   device tool: carry [".deps", ".prebuilt"], command for example
#     OUT=$OUT bash bench/gpu/device_run.sh --prebuilt --quick --no-bench &&
#       OUT=$OUT bash bench/gpu/device_ab.sh --prebuilt --tokens 2048,8192 -- base default
# Build folders: build-prebuilt/ and build-prebuilt-base/ (kept between runs, so a rebuild is
# incremental). Needs nvcc (CUDA 13 here) and cmocka's development files (scripts/setup.sh).
set -eu -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BASE_REV= JOBS=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --base) [ $# -ge 2 ] || { echo "prebuild.sh: --base needs a revision (see --help)" >&2; exit 2; }
            BASE_REV=$2; shift ;;
    --jobs) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || { echo "prebuild.sh: --jobs needs a count >= 1" >&2; exit 2; }
            JOBS=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "prebuild.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] ||
  { echo "prebuild.sh: no nvcc here (CUDA toolkit missing)" >&2; exit 2; }
[ -n "$BASE_REV" ] && { git -C "$ROOT" rev-parse --verify --quiet "$BASE_REV^{commit}" >/dev/null ||
  { echo "prebuild.sh: '$BASE_REV' is not a revision of $ROOT" >&2; exit 2; }; }

# build SRC BUILD TARGET...: bench/device_build.sh's device_build (configure once, then build), here
# with sm_90a + compute_80 like device_run.sh's own build, its log in BUILD/prebuild.log
. "$ROOT/bench/device_build.sh"
build() {
  local src=$1 b=$2
  shift 2
  mkdir -p "$b"
  echo "prebuild.sh: building $* from $src in $b (log $b/prebuild.log)"
  DEVICE_SRC=$src DEVICE_CUDA_ARCHS="90a-real;80-virtual" DEVICE_JOBS=$JOBS device_build "$b" ON "$b/prebuild.log" "$@" ||
    { echo "prebuild.sh: building in $b failed (above)" >&2; return 1; }
}

OUTD=$ROOT/.prebuilt
rm -rf "$OUTD.tmp"
mkdir -p "$OUTD.tmp"
build "$ROOT" "$ROOT/build-prebuilt" mxgpu_bench test_cuda_parity
cp "$ROOT/build-prebuilt/kernels/gpu/mxgpu_bench" "$ROOT/build-prebuilt/tests/gpu/test_cuda_parity" "$OUTD.tmp/"
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no | grep -q . && echo " (with uncommitted changes)" || true)
echo "$(git -C "$ROOT" rev-parse HEAD)$dirty $(git -C "$ROOT" log -1 --format=%s | cut -c1-100)" > "$OUTD.tmp/REVISION"
if [ -n "$BASE_REV" ]; then
  bash "$ROOT/bench/gpu/base_src.sh" "$BASE_REV"
  rm -rf "$ROOT/build-prebuilt-base" # another revision: configure afresh
  build "$ROOT/.base" "$ROOT/build-prebuilt-base" mxgpu_bench
  mkdir -p "$OUTD.tmp/base"
  cp "$ROOT/build-prebuilt-base/kernels/gpu/mxgpu_bench" "$OUTD.tmp/base/"
  cp "$ROOT/.base/BASE_REVISION" "$OUTD.tmp/base/REVISION"
fi
rm -rf "$OUTD"
mv "$OUTD.tmp" "$OUTD"
echo "prebuild.sh: .prebuilt holds $(cut -c1-12 "$OUTD/REVISION")$([ -n "$BASE_REV" ] && echo ", base $(cut -c1-12 "$OUTD/base/REVISION")")" \
     "($(du -sh "$OUTD" | cut -f1)); carry [\".deps\", \".prebuilt\"]"
