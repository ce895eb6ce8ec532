#!/usr/bin/env bash
# bench/gpu/base_src.sh: puts another revision's source tree into .base/ (git-ignored), so that one
# device call can build it beside the working tree and time the two against each other:
#   bash bench/gpu/base_src.sh [REV]        (here, before the call; REV defaults to main)
#   device tool: carry [".deps", ".base"], command
#   OUT=$OUT bash bench/gpu/device_run.sh --quick --no-bench --base .base &&
#     OUT=$OUT bash bench/gpu/device_ab.sh --tokens 8192 -- base default
# The device machine gets the working tree's files, not the history: hence a plain tree.
set -eu -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
case "${1:-}" in -h|--help) sed -n '2,8p' "$0"; exit 0 ;; esac
REV=${1:-main}
SHA=$(git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}") ||
  { echo "base_src.sh: '$REV' is not a revision of $ROOT" >&2; exit 2; }
rm -rf "$ROOT/.base.tmp"
mkdir "$ROOT/.base.tmp"
git -C "$ROOT" archive "$SHA" | tar -x -C "$ROOT/.base.tmp"
echo "$SHA $(git -C "$ROOT" log -1 --format=%s "$SHA" | cut -c1-100)" > "$ROOT/.base.tmp/BASE_REVISION"
rm -rf "$ROOT/.base"
mv "$ROOT/.base.tmp" "$ROOT/.base"
echo "base_src.sh: .base holds $SHA ($(du -sh "$ROOT/.base" | cut -f1)); carry it with .deps"
