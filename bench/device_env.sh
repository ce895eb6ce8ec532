# bench/device_env.sh: sourced by the device scripts (bench/device_all.sh, device_final.sh,
# xchg_device.sh, gpu/device_run.sh, gpu/device_profile.sh). The lent GPU machine lacks cJSON,
# cmocka, nanomsg and the hwloc headers; their Debian packages are carried in .deps (see
# bench/gpu/README.md). This unpacks them into .deps/prefix with dpkg -x (never into /) unless
# that was done already (MXEP_DEPS_FRESH=1 unpacks again), points copies of their .pc files
# there, and exports PKG_CONFIG_PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH (and PATH when
# pkg-config itself comes from the packages). Sets DEPS, PREFIX, LIBDIR, and ROOT (the
# repository) when the caller has not. Returns 2, with a message, when there is neither an
# unpacked prefix nor a .deb. Defines device_build (bench/device_build.sh) for the scripts that build mxep there.
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

# device_build, device_build_base, prebuilt_env: bench/device_build.sh (functions only, also sourced
# by bench/gpu/prebuild.sh on the Debian machine)
. "$ROOT/bench/device_build.sh"
return 0
