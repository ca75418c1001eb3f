#!/bin/sh
# Runs src/cuda/attention.cu's kernels on the CPU (tests/cuda_emu/README.md). Usage: tests/cuda_emu/run.sh BUILD_DIR
# [CASE]; BUILD_DIR holds a built libhdlm.a (the CPU reference). EMUFLAGS="-O1 -g -fsanitize=address" adds ASan;
# SIMT=1 sends head dim 64 through the SIMT kernels.
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$root/src/cuda/attention.cu
end=$(grep -n "^attn_shape shape_of" "$src" | cut -d: -f1)
# the kernels as host code: shared memory from the emulated block, mma.sync replaced by emu.h's twin
{ echo '#include "emu.h"'
  sed -n "1,$((end - 1))p" "$src" | sed -e 's|#include "cuda_internal.cuh"||' \
      -e 's|extern __shared__ float smem\[\];|float *smem = emu.smem;|' -e '/^__device__ inline void mma_m16n8k16(/,/^}/d'
  echo "}"; } > "$work/kernels.h"
libs=$(tr -d '"' < "$build/tests/CMakeFiles/test_cuda_attention.dir/linkLibs.rsp" | sed "s|\.\./libhdlm.a|$build/libhdlm.a|; s|-lcmocka||")
g++ ${EMUFLAGS:--O2} -fno-strict-aliasing -std=c++17 -fopenmp -I"$root/include" -I/usr/local/cuda/include -I"$work" \
    -I"$here" -Wall -Wno-unknown-pragmas "$here/attention_emu.cpp" "$here/emu.cpp" -o "$work/attention_emu" $libs \
    -L/usr/local/cuda/targets/x86_64-linux/lib -lpthread
OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=0 "$work/attention_emu" ${2:-}
