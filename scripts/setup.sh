#!/usr/bin/env bash
# Installs everything mxep needs on Debian 12 (idempotent, quiet).
#   scripts/setup.sh            system packages + Python venv (.venv) for the test references
#   MXEP_SETUP_NO_GPU_TOOLS=1   skip hipcc / Level Zero (they only serve compile checks)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

pkgs=(build-essential cmake pkg-config git clang libclang-rt-14-dev
      openmpi-bin libopenmpi-dev libhwloc-dev libcjson-dev libcmocka-dev
      libnanomsg-dev nanomsg-utils libucx-dev
      ocl-icd-opencl-dev pocl-opencl-icd iproute2 python3-venv)
if [ "${MXEP_SETUP_NO_GPU_TOOLS:-0}" != 1 ]; then
  pkgs+=(hipcc libze-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: run this script as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/mxep-apt.log 2>&1 || {
    echo "setup: apt-get install failed; last lines of /tmp/mxep-apt.log:" >&2
    tail -n 30 /tmp/mxep-apt.log >&2
    exit 1
  }
fi

# Python references for tests (ml_dtypes, numpy, safetensors) in a venv inside the repo.
py=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/python" ]; then
  echo "setup: creating Python venv $here/.venv"
  "$py" -m venv "$here/.venv"
fi
if ! "$here/.venv/bin/python" -c 'import numpy, ml_dtypes, safetensors' 2>/dev/null; then
  echo "setup: installing numpy, ml_dtypes, safetensors into .venv"
  "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check numpy ml_dtypes safetensors
fi
echo "setup: ok"
