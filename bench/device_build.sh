# bench/device_build.sh: the build helpers of the device scripts, functions only (no side effects):
# sourced by bench/device_env.sh (on the lent GPU machine) and by bench/gpu/prebuild.sh (here).
# Needs ROOT (the repository).

# prebuilt_env: for the binaries of bench/gpu/prebuild.sh, built on the Debian machine. Puts this
# machine's CUDA library folders on LD_LIBRARY_PATH and checks that .prebuilt's binaries find
# every library they need (returns 1, naming what is missing, when not).
prebuilt_env() {
  local d f missing
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;; esac
  done
  for f in "$ROOT/.prebuilt/mxgpu_bench" "$ROOT/.prebuilt/test_cuda_parity" "$ROOT/.prebuilt/base/mxgpu_bench"; do
    case "$f" in */base/*) [ -e "$f" ] || continue ;; esac
    [ -x "$f" ] || { echo "prebuilt_env: $f missing: run bench/gpu/prebuild.sh here and carry .prebuilt"; return 1; }
    missing=$(ldd "$f" 2>&1 | grep "not found")
    [ -z "$missing" ] || { echo "prebuilt_env: $f cannot run here, libraries not found:"; echo "$missing"; return 1; }
  done
}

# device_build BUILD CUDA LOG TARGET...: configures BUILD (Release, CUDA ON/OFF, no HIP or Level
# Zero, CUDA architectures $DEVICE_CUDA_ARCHS, default 90a-real) from $DEVICE_SRC (default: this
# repository) unless it is configured already, then builds the targets with $DEVICE_JOBS jobs
# (default: every core); the log's tail on failure.
device_build() {
  local build=$1 cuda=$2 log=$3
  shift 3
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "${DEVICE_SRC:-$ROOT}" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMXEP_WITH_CUDA="$cuda" -DMXEP_WITH_HIP=OFF \
      -DMXEP_WITH_ZE=OFF -DCMAKE_CUDA_ARCHITECTURES="${DEVICE_CUDA_ARCHS:-90a-real}" > "$log" 2>&1 ||
      { echo "configure failed:"; tail -30 "$log"; return 1; }
  fi
  cmake --build "$build" -j "${DEVICE_JOBS:-$(nproc)}" --target "$@" >> "$log" 2>&1 || { echo "build failed:"; tail -30 "$log"; return 1; }
}
# device_build_base SRC LOG: the mxgpu_bench of another source tree SRC (bench/gpu/base_src.sh)
# in $ROOT/build-base (device_run.sh --base, for device_ab.sh's `base` setting).
device_build_base() {
  [ -f "$1/CMakeLists.txt" ] || { echo "device_build_base: $1 holds no source tree (bench/gpu/base_src.sh)"; return 1; }
  DEVICE_SRC=$1 device_build "$ROOT/build-base" ON "$2" mxgpu_bench
}
