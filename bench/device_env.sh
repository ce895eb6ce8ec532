# bench/device_env.sh: sourced by the device scripts (bench/device_all.sh, device_final.sh,
# xchg_device.sh, gpu/device_run.sh, gpu/device_profile.sh). The lent GPU machine lacks cJSON,
# cmocka, nanomsg and the hwloc headers; their Debian packages are carried in .deps (see
# bench/gpu/README.md). This unpacks them into .deps/prefix with dpkg -x (never into /) unless
# that was done already (MXEP_DEPS_FRESH=1 unpacks again), points copies of their .pc files
# there, and exports PKG_CONFIG_PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH (and PATH when
# pkg-config itself comes from the packages). Sets DEPS, PREFIX, LIBDIR, and ROOT (the
# repository) when the caller has not. Returns 2, with a message, when there is neither an
# unpacked prefix nor a .deb. Defines device_build (below) for the scripts that build mxep there.
ROOT=${ROOT:-$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
DEPS=$ROOT/.deps
PREFIX=$DEPS/prefix
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu
[ "${MXEP_DEPS_FRESH:-0}" = 1 ] && rm -rf "$PREFIX"
if [ ! -d "$PREFIX/pc" ]; then
  if ! ls "$DEPS"/*.deb >/dev/null 2>&1; then
    echo "device_env.sh: no .deb files in $DEPS (fetch them: see bench/gpu/README.md)" >&2
    return 2
  fi
  mkdir -p "$PREFIX/pc"
  for f in "$DEPS"/*.deb; do dpkg -x "$f" "$PREFIX"; done
  # rewrite prefix=/usr in copies of the .pc files so that they point into the unpacked tree
  # (some, like cmocka.pc, spell /usr/... out in Libs and Cflags)
  for pc in "$LIBDIR"/pkgconfig/*.pc "$PREFIX"/usr/share/pkgconfig/*.pc; do
    [ -e "$pc" ] || continue
    sed -e "s|=/usr\$|=$PREFIX/usr|" -e "s|/usr/|$PREFIX/usr/|g" "$pc" > "$PREFIX/pc/$(basename "$pc")"
  done
  # the system's hwloc wins when it has its headers (asked before the prefix is on the path)
  if pkg-config --exists hwloc 2>/dev/null; then rm -f "$PREFIX/pc/hwloc.pc"; fi
  if ! command -v pkg-config >/dev/null 2>&1; then
    mkdir -p "$PREFIX/bin"
    ln -sf "$PREFIX/usr/bin/pkgconf" "$PREFIX/bin/pkg-config"
  fi
fi
case ":${PKG_CONFIG_PATH:-}:" in *":$PREFIX/pc:"*) ;; *)
  export PKG_CONFIG_PATH=$PREFIX/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CMAKE_PREFIX_PATH=$PREFIX/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  [ -x "$PREFIX/bin/pkg-config" ] && export PATH=$PREFIX/bin:$PATH
  ;;
esac

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

# device_build BUILD CUDA LOG TARGET...: configures BUILD (Release, sm_90a, CUDA ON/OFF, no HIP or
# Level Zero) from $DEVICE_SRC (default: this repository) unless it is configured already, then
# builds the targets; the log's tail on failure.
device_build() {
  local build=$1 cuda=$2 log=$3
  shift 3
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "${DEVICE_SRC:-$ROOT}" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMXEP_WITH_CUDA="$cuda" -DMXEP_WITH_HIP=OFF \
      -DMXEP_WITH_ZE=OFF -DCMAKE_CUDA_ARCHITECTURES="90a-real" > "$log" 2>&1 ||
      { echo "configure failed:"; tail -30 "$log"; return 1; }
  fi
  cmake --build "$build" -j "$(nproc)" --target "$@" >> "$log" 2>&1 || { echo "build failed:"; tail -30 "$log"; return 1; }
}
# device_build_base SRC LOG: the mxgpu_bench of another source tree SRC (bench/gpu/base_src.sh)
# in $ROOT/build-base (device_run.sh --base, for device_ab.sh's `base` setting).
device_build_base() {
  [ -f "$1/CMakeLists.txt" ] || { echo "device_build_base: $1 holds no source tree (bench/gpu/base_src.sh)"; return 1; }
  DEVICE_SRC=$1 device_build "$ROOT/build-base" ON "$2" mxgpu_bench
}
return 0
