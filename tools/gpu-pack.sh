#!/usr/bin/env bash
# tools/gpu-pack.sh — for a GPU machine whose image lacks the project's C dependencies (MPI, parallel HDF5, BLIS,
# cmocka, ...: the device tool's CUDA image is not guaranteed to have them): builds the GPU test binaries and
# hdlm-bench HERE (Release, sm_90, -march=x86-64-v3 so they run on any AVX2 server) and packs them with the shared
# libraries they need beyond glibc, libstdc++ and CUDA's own, and Open MPI's runtime (relocated with OPAL_PREFIX),
# into gpu-pack/pack.tar.xz. tools/gpu-check.sh uses it there when the project cannot be configured
# (or with GPU_CHECK_PACK=1). Carry the folder: name `gpu-pack` in the device call's `carry` (it is git-ignored).
#
#   tools/gpu-pack.sh            # ~5 minutes on 2 cores; prints the pack's size (the carry limit is 64 MiB in all)
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BUILD=build-pack
PACK=$ROOT/gpu-pack
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHDLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DHDLM_MARCH=x86-64-v3 >/dev/null
targets=(hdlm-bench test_mpi_cuda_nccl)
for t in tests/test_cuda_*.c; do targets+=("$(basename "$t" .c)"); done
cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}"

mkdir -p "$STAGE/bin" "$STAGE/lib"
for t in "${targets[@]}"; do cp "$BUILD/bin/$t" "$STAGE/bin/"; done
# Open MPI's runtime, mirrored under usr/ for OPAL_PREFIX (and PMIx for PMIX_INSTALL_PREFIX).
MULTI=lib/x86_64-linux-gnu
mkdir -p "$STAGE/usr/$MULTI" "$STAGE/usr/share" "$STAGE/usr/bin"
cp -a "/usr/$MULTI/openmpi" "/usr/$MULTI/pmix2" "$STAGE/usr/$MULTI/"
cp -a /usr/share/openmpi "$STAGE/usr/share/"
[ -d /usr/share/pmix ] && cp -a /usr/share/pmix "$STAGE/usr/share/"
cp "$(readlink -f /usr/bin/mpirun)" "$STAGE/usr/bin/mpirun"
cp /usr/bin/orted "$STAGE/usr/bin/orted"

# Every shared library the binaries and Open MPI's programs load, except the C library's own, the C++ runtime (the
# GPU image's newer one serves) and CUDA's (the GPU machine's toolkit and driver serve).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libstdc\+\+|libgcc_s)'
skip_cuda='^(libcuda|libcudart|libcublas|libnccl|libnvidia)'
{
    for f in "$STAGE"/bin/* "$STAGE/usr/bin/"*; do ldd "$f"; done
} | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    name=$(basename "$lib")
    [[ $name =~ $skip || $name =~ $skip_cuda ]] && continue
    [[ $lib == /usr/local/cuda* ]] && continue
    cp -L "$lib" "$STAGE/lib/$name"
done
echo "$ROOT" >"$STAGE/SOURCE_DIR"   # the source directory compiled into the binaries (HDLM_SOURCE_DIR)
git -C "$ROOT" rev-parse HEAD >"$STAGE/COMMIT" 2>/dev/null || true

mkdir -p "$PACK"
tar -C "$STAGE" -cJf "$PACK/pack.tar.xz" .
echo "gpu-pack/pack.tar.xz: $(du -h "$PACK/pack.tar.xz" | cut -f1) ($(find "$STAGE/bin" -type f | wc -l) programs," \
    "$(find "$STAGE/lib" -type f | wc -l) libraries); carry 'gpu-pack' in the device call"
