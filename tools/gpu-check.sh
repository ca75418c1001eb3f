#!/usr/bin/env bash
# tools/gpu-check.sh — every GPU check of the CUDA backend in one run on a GPU machine (docs/cuda.md, "Verifying on a
# GPU"): configure and build (Release, sm_90), the GPU tests (ctest -L gpu), `hdlm-bench train` with the PyTorch
# baseline, a short `HDLM_PROFILE=1 hdlm-bench train` (the time per kernel kind), compute-sanitizer memcheck of every
# tests/test_cuda_* binary, and the 2-rank NCCL test when the machine has two GPUs. Each stage has its own time limit
# and the whole run stays within GPU_CHECK_BUDGET seconds (default 510, under 9 minutes): a stage that would start
# without enough time left is reported as skipped.
#
# When the project cannot be configured there (an image without MPI, parallel HDF5, BLIS, cmocka, ...), the binaries
# built here by tools/gpu-pack.sh are used instead, if gpu-pack/pack.tar.xz was carried (GPU_CHECK_PACK=1 forces it).
#
#   tools/gpu-check.sh                             # everything; logs and summary.txt under $OUT (or ./gpu-check-out)
#   GPU_CHECK_STAGES="bench" tools/gpu-check.sh     # a subset again, reusing the build directory
#
# Environment: OUT, GPU_CHECK_BUILD (build directory, default build-gpu), GPU_CHECK_BUDGET, GPU_CHECK_STAGES (any of:
# info configure build ctest bench profile memcheck nccl layout; default all, run in that order; layout: the block
# schedule's two training layouts on the GPU, hdlm-bench train --omega, docs/methods.md), GPU_CHECK_PACK, BENCH_ARGS
# (more arguments of hdlm-bench train, bench and profile stages, e.g. "--batch 64"). Exit status 0 when no stage failed
# or timed out.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-./gpu-check-out}
BUILD=${GPU_CHECK_BUILD:-build-gpu}
BUDGET=${GPU_CHECK_BUDGET:-510}
STAGES=${GPU_CHECK_STAGES:-"info configure build ctest bench profile memcheck nccl layout"}
USE_PACK=${GPU_CHECK_PACK:-0}
PACK_TAR=gpu-pack/pack.tar.xz
PACK_DIR=/tmp/hdlm-gpu-pack
SANITIZER=/usr/local/cuda/bin/compute-sanitizer
[ -x "$SANITIZER" ] || SANITIZER=$(command -v compute-sanitizer || echo compute-sanitizer)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
START=$(date +%s)
RESULTS=()
FAILED=0

wanted() { [[ " $STAGES " == *" $1 "* ]]; }
seconds_left() { echo $((BUDGET - ($(date +%s) - START))); }

# stage NAME CAP COMMAND...: runs COMMAND with the time limit min(CAP, time left - 10 s), output in $OUT/NAME.log.
stage() {
    local name=$1 cap=$2
    shift 2
    local left limit t0 rc dt verdict
    left=$(seconds_left)
    limit=$((cap < left - 10 ? cap : left - 10))
    if ((limit < 15)); then
        RESULTS+=("$(printf '%-12s %-28s' "$name" "SKIPPED (time budget spent)")")
        echo "[$name] skipped: the time budget is spent"
        return 1
    fi
    echo "[$name] running (limit ${limit}s) -> $OUT/$name.log"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    if ((rc == 124 || rc == 137)); then
        verdict="TIMEOUT (${limit}s)"
        FAILED=1
    elif ((rc != 0)); then
        verdict="FAIL (exit $rc)"
        FAILED=1
    else
        verdict=PASS
    fi
    RESULTS+=("$(printf '%-12s %-28s %5ds' "$name" "$verdict" "$dt")")
    echo "[$name] $verdict after ${dt}s"
    return $rc
}

skipped() {
    RESULTS+=("$(printf '%-12s %-28s' "$1" "SKIPPED ($2)")")
    echo "[$1] skipped: $2"
}

# The binaries of tools/gpu-pack.sh: unpacked, their libraries and Open MPI's runtime found through the environment,
# and the source directory compiled into them pointing at this checkout.
use_pack() {
    rm -rf "$PACK_DIR" && mkdir -p "$PACK_DIR" && tar -C "$PACK_DIR" -xJf "$PACK_TAR" || return 1
    local src
    src=$(cat "$PACK_DIR/SOURCE_DIR")
    if [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
    local multi=$PACK_DIR/usr/lib/x86_64-linux-gnu
    export LD_LIBRARY_PATH=$PACK_DIR/lib:$multi/openmpi/lib:$multi/pmix2/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export OPAL_PREFIX=$PACK_DIR/usr PMIX_MCA_mca_base_component_path=$multi/pmix2/lib/pmix PATH=$PACK_DIR/usr/bin:$PATH
    export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_mca_base_component_show_load_errors=0
    # PyTorch runs in the image's own environment, without the packed libraries.
    printf '#!/bin/sh\nunset LD_LIBRARY_PATH OPAL_PREFIX PMIX_MCA_mca_base_component_path\nexec python3 "$@"\n' \
        >"$PACK_DIR/python3"
    chmod +x "$PACK_DIR/python3"
    echo "using the binaries of $PACK_TAR (commit $(cat "$PACK_DIR/COMMIT" 2>/dev/null), built for $src)"
}

GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

if wanted info; then
    # shellcheck disable=SC2016  # expanded by the inner shell
    stage info 30 bash -c 'nvidia-smi; nvcc --version; cmake --version | head -1; nproc; free -g
        for p in python3 /usr/bin/python3; do
            echo "$p: $("$p" -c "import torch; print(torch.__version__, torch.cuda.is_available())" 2>&1 | tail -1)"
        done
        for x in mpicc mpirun h5pcc pkg-config; do echo "$x: $(command -v $x || echo missing)"; done
        for p in cmocka libpcre2-8 libcjson yaml-0.1 libxxhash; do
            if pkg-config --exists $p; then echo "$p ok"; else echo "$p missing"; fi
        done
        ls /usr/include/blis* /usr/include/hdf5* /usr/include/lapacke.h 2>&1 | head -5
        git log --oneline -1 2>/dev/null || true'
fi

BIN=$BUILD/bin
PYTHON_ARG=()
if ((!USE_PACK)) && wanted configure; then
    # the CPU emulation of the backend (tests/cuda_emu) is CI's stand-in for a GPU: not built or run here
    if ! stage configure 90 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHDLM_CUDA=ON -DHDLM_CUDA_EMULATE=OFF \
        -DCMAKE_CUDA_ARCHITECTURES=90 && [ -f "$PACK_TAR" ]; then
        echo "configure failed (see $OUT/configure.log): falling back to $PACK_TAR"
        USE_PACK=1
    fi
fi
if ((USE_PACK)); then
    if [ ! -f "$PACK_TAR" ]; then
        skipped unpack "no $PACK_TAR (run tools/gpu-pack.sh here and carry gpu-pack)"
    elif use_pack >"$OUT/unpack.log" 2>&1; then   # in this shell: its exports are for the stages below
        RESULTS+=("$(printf '%-12s %-28s' unpack PASS)")
        BIN=$PACK_DIR/bin
        PYTHON_ARG=(--python "$PACK_DIR/python3")
    else
        RESULTS+=("$(printf '%-12s %-28s' unpack "FAIL (see unpack.log)")")
        FAILED=1
    fi
elif wanted build; then
    stage build 270 cmake --build "$BUILD" -j16
fi

if [ ! -x "$BIN/hdlm-bench" ]; then
    for s in ctest bench profile memcheck nccl; do wanted $s && skipped $s "no binaries"; done
else
    if wanted ctest; then
        if ((USE_PACK)); then   # no CTest files in the pack: the same GPU tests, one after the other
            stage ctest 180 bash -c "
                status=0
                for t in '$BIN'/test_cuda_*; do echo \"=== \$t\"; \"\$t\" || status=1; done
                exit \$status"
        else
            # -V: the passing tests' output too (the attention kernels' timing lines)
            stage ctest 180 bash -c "cd '$BUILD' && ctest -L '^gpu$' -V --timeout 170"
        fi
    fi
    if wanted bench; then
        # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
        stage bench 200 "$BIN/hdlm-bench" train --device cuda "${PYTHON_ARG[@]}" ${BENCH_ARGS:-}
    fi
    if wanted profile; then
        # shellcheck disable=SC2086  # as above
        stage profile 90 env HDLM_PROFILE=1 "$BIN/hdlm-bench" train --device cuda --no-torch --steps 3 --warmup 2 \
            ${BENCH_ARGS:-}
    fi
    if wanted memcheck; then
        # Every GPU test binary under memcheck (their shapes are small); the limit is shared among them.
        stage memcheck 180 bash -c "
            status=0
            for t in '$BIN'/test_cuda_*; do
                echo \"=== \$t\"
                '$SANITIZER' --tool memcheck --error-exitcode 99 --print-limit 20 \"\$t\" ||
                    { echo \"=== \$t: exit \$?\"; status=1; }
            done
            exit \$status"
    fi
    if wanted nccl; then
        if ((GPUS > 1)); then
            stage nccl 60 env HDLM_NCCL_TIMEOUT=45 mpirun -np 2 --allow-run-as-root --oversubscribe --bind-to none \
                "$BIN/test_mpi_cuda_nccl"
        else
            skipped nccl "$GPUS GPU(s): the 2-rank NCCL test needs 2"
        fi
    fi
    if wanted layout; then
        stage layout 60 "$BIN/hdlm-bench" train --device cuda --no-torch --batch 8 --omega 64 --steps 3 --warmup 1
    fi
fi

{
    packed=$( ((USE_PACK)) && echo ', packed binaries')
    echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ), $GPUS GPU(s), $(($(date +%s) - START)) s in all$packed"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/  GPU: /'
    printf '%s\n' "${RESULTS[@]}"
    if [ -f "$OUT/ctest.log" ]; then
        echo "--- GPU tests"
        # each test's verdict and cmocka's counts (the log is verbose), every failed case
        grep -E '^ *[0-9]+/[0-9]+ Test|tests passed|tests failed|Not Run|\[  FAILED  \]|^=== |(PASSED|SKIPPED) *\] [0-9]+ test' \
            "$OUT/ctest.log" | head -40
        grep -E 'attention B=' "$OUT/ctest.log" | sed 's/^[0-9]*: //'
    fi
    if [ -f "$OUT/memcheck.log" ]; then
        echo "--- compute-sanitizer memcheck"
        grep -E '^=== |ERROR SUMMARY' "$OUT/memcheck.log" | head -40
    fi
    if [ -f "$OUT/bench.log" ]; then
        echo "--- hdlm-bench train"
        grep -vE '^\s*$' "$OUT/bench.log" | tail -12
    fi
    if [ -f "$OUT/layout.log" ]; then
        echo "--- hdlm-bench train --omega 64 (block schedule: length-L vs two-copy layout)"
        grep -vE '^\s*$' "$OUT/layout.log" | tail -4
    fi
    if [ -f "$OUT/profile.log" ]; then
        echo "--- HDLM_PROFILE=1 hdlm-bench train (ms per step by kernel kind)"
        if grep -q '^hdlm cuda profile' "$OUT/profile.log"; then
            sed -n '/^impl /,$p' "$OUT/profile.log" | head -30
        else
            tail -5 "$OUT/profile.log"
        fi
    fi
} | tee "$OUT/summary.txt"
exit $FAILED
