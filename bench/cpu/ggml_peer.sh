#!/usr/bin/env bash
# Builds ggml's CPU backend (llama.cpp's) for AVX2 + FMA + F16C only, compiles
# bench/cpu/ggml_peer.c against it and runs it with the given options.
#
#   GGML_SRC=/path/to/llama.cpp bench/cpu/ggml_peer.sh --threads 2 --tokens 1,4 --iters 20 --rotate 32
#
# GGML_SRC   a llama.cpp checkout (its ggml/ folder is used) or a ggml checkout.
#            Measured with ggml-org/ggml at d99724f2b141fed9e1a9f402213506c081433465,
#            whose sources are llama.cpp's ggml/ as synced from llama.cpp commit
#            d3cf1f14a2e16fbd7ebad34b12cb71b8af345c43 (scripts/sync-llama.last). Either:
#              git clone https://github.com/ggml-org/llama.cpp && git -C llama.cpp checkout d3cf1f14a2e16fbd7ebad34b12cb71b8af345c43
#              git clone https://github.com/ggml-org/ggml && git -C ggml checkout d99724f2b141fed9e1a9f402213506c081433465
# GGML_BUILD build folder (default: build-ggml/ under the repository root, ignored by git)
# GGML_COMMIT commit recorded in the output (default: git rev-parse HEAD in GGML_SRC, else "unknown")
# JOBS       parallel build jobs (default: online cores)
#
# ggml_peer --help describes the options; this script passes them all through.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

if [[ -z "${GGML_SRC:-}" ]]; then
    sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    echo "ggml_peer.sh: set GGML_SRC to a llama.cpp (or ggml) checkout" >&2
    exit 2
fi
if [[ -f "$GGML_SRC/ggml/CMakeLists.txt" && -f "$GGML_SRC/ggml/include/ggml.h" ]]; then
    ggml_dir=$GGML_SRC/ggml
elif [[ -f "$GGML_SRC/CMakeLists.txt" && -f "$GGML_SRC/include/ggml.h" ]]; then
    ggml_dir=$GGML_SRC
else
    echo "ggml_peer.sh: $GGML_SRC is neither a llama.cpp nor a ggml checkout (no ggml/include/ggml.h or include/ggml.h)" >&2
    exit 2
fi
ggml_dir=$(cd "$ggml_dir" && pwd)
build=${GGML_BUILD:-$root/build-ggml}
jobs=${JOBS:-$(nproc)}
commit=${GGML_COMMIT:-$(git -C "$GGML_SRC" rev-parse HEAD 2>/dev/null || echo unknown)}

# AVX2 level only (the CI machines are AVX2-only): no native, no AVX-512, no
# AVX-VNNI, no AMX; CPU backend only; OpenMP; llama.cpp's defaults otherwise
# (CPU_REPACK and LLAMAFILE on).
cmake -S "$ggml_dir" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF \
    -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DGGML_OPENMP=ON -DGGML_CPU_REPACK=ON -DGGML_LLAMAFILE=ON -DGGML_BLAS=OFF \
    -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_SYCL=OFF -DGGML_OPENCL=OFF \
    -DGGML_RPC=OFF -DGGML_CCACHE=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
    >"$build.configure.log" 2>&1 || {
    tail -30 "$build.configure.log" >&2
    echo "ggml_peer.sh: cmake configure failed (log: $build.configure.log)" >&2
    exit 1
}
cmake --build "$build" -j "$jobs" --target ggml ggml-base ggml-cpu >&2

# refuse a build that is not AVX2-level
flags=$(cat "$build/src/CMakeFiles/ggml-cpu.dir/flags.make")
if ! grep -q -- '-mavx2' <<<"$flags" || grep -q -E -- '-mavx512|-march=native|-mavxvnni|-mamx' <<<"$flags"; then
    echo "ggml_peer.sh: ggml-cpu was not compiled for AVX2 only; see $build/src/CMakeFiles/ggml-cpu.dir/flags.make" >&2
    exit 1
fi

libs=()
for l in ggml ggml-cpu ggml-base; do
    f=$(find "$build" -name "lib$l.a" -print -quit)
    [[ -n "$f" ]] || { echo "ggml_peer.sh: lib$l.a not found under $build" >&2; exit 1; }
    libs+=("$f")
done
cc=${CC:-gcc}
"$cc" -std=c11 -O2 -Wall -Wextra -I"$ggml_dir/include" -DGGML_PEER_COMMIT="\"$commit\"" \
    "$here/ggml_peer.c" -o "$build/ggml_peer" "${libs[@]}" -lstdc++ -fopenmp -lm -lpthread

exec "$build/ggml_peer" "$@"
