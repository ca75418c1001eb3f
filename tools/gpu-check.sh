#!/usr/bin/env bash
# tools/gpu-check.sh — every GPU check of the CUDA backend in one run on a GPU machine (docs/cuda.md, "Verifying on a
# GPU"): configure and build (Release, sm_90), the GPU tests (ctest -L gpu), compute-sanitizer memcheck of every
# tests/test_cuda_* binary, the 2-rank NCCL test when the machine has two GPUs, and `hdlm-bench train` with the
# PyTorch baseline. Each stage has its own time limit and the whole run stays within GPU_CHECK_BUDGET seconds
# (default 510, under 9 minutes): a stage that would start without enough time left is reported as skipped.
#
#   tools/gpu-check.sh                       # everything, logs and summary under $OUT (or ./gpu-check-out)
#   GPU_CHECK_STAGES="bench" tools/gpu-check.sh   # a subset again, reusing the build directory
#
# Environment: OUT (output folder), GPU_CHECK_BUILD (build directory, default build-gpu), GPU_CHECK_BUDGET,
# GPU_CHECK_STAGES (any of: info configure build ctest bench memcheck nccl; default all, run in that order), BENCH_ARGS (extra arguments
# of hdlm-bench train, e.g. "--batch 64"). Exit status 0 when no stage failed or timed out.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-./gpu-check-out}
BUILD=${GPU_CHECK_BUILD:-build-gpu}
BUDGET=${GPU_CHECK_BUDGET:-510}
STAGES=${GPU_CHECK_STAGES:-"info configure build ctest bench memcheck nccl"}
SANITIZER=/usr/local/cuda/bin/compute-sanitizer
[ -x "$SANITIZER" ] || SANITIZER=$(command -v compute-sanitizer || echo compute-sanitizer)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
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

GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

if wanted info; then
    # shellcheck disable=SC2016  # expanded by the inner shell
    stage info 30 bash -c 'nvidia-smi; nvcc --version; cmake --version | head -1; nproc; free -g
        for p in python3 /usr/bin/python3; do
            echo "$p: $("$p" -c "import torch; print(torch.__version__, torch.cuda.is_available())" 2>&1 | tail -1)"
        done
        git log --oneline -1 2>/dev/null || true'
fi

BUILT=1
if wanted configure; then
    stage configure 90 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHDLM_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 || BUILT=0
fi
if wanted build && ((BUILT)); then
    stage build 270 cmake --build "$BUILD" -j16 || BUILT=0
fi
[ -x "$BUILD/bin/hdlm-bench" ] || BUILT=0

if ((!BUILT)); then
    for s in ctest bench memcheck nccl; do wanted $s && skipped $s "no build"; done
else
    if wanted ctest; then
        stage ctest 180 bash -c "cd '$BUILD' && ctest -L gpu --output-on-failure --timeout 170"
    fi
    if wanted bench; then
        # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
        stage bench 200 "$BUILD/bin/hdlm-bench" train --device cuda ${BENCH_ARGS:-}
    fi
    if wanted memcheck; then
        # Every GPU test binary under memcheck (their shapes are small); the limit is shared among them.
        stage memcheck 180 bash -c "
            status=0
            for t in '$BUILD'/bin/test_cuda_*; do
                echo \"=== \$t\"
                '$SANITIZER' --tool memcheck --error-exitcode 99 --print-limit 20 \"\$t\" \
                    || { echo \"=== \$t: exit \$?\"; status=1; }
            done
            exit \$status"
    fi
    if wanted nccl; then
        if ((GPUS > 1)); then
            stage nccl 60 env HDLM_NCCL_TIMEOUT=45 mpirun -np 2 --allow-run-as-root --oversubscribe --bind-to none \
                "$BUILD/bin/test_mpi_cuda_nccl"
        else
            skipped nccl "$GPUS GPU(s): the 2-rank NCCL test needs 2"
        fi
    fi
fi

{
    echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ), $GPUS GPU(s), $(($(date +%s) - START)) s in all"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/  GPU: /'
    printf '%s\n' "${RESULTS[@]}"
    if [ -f "$OUT/ctest.log" ]; then
        echo "--- ctest -L gpu"
        grep -E 'tests passed|tests failed|Failed|\*\*\*|SKIPPED|Not Run' "$OUT/ctest.log" | head -30
    fi
    if [ -f "$OUT/memcheck.log" ]; then
        echo "--- compute-sanitizer memcheck"
        grep -E '^=== |ERROR SUMMARY' "$OUT/memcheck.log" | head -40
    fi
    if [ -f "$OUT/bench.log" ]; then
        echo "--- hdlm-bench train"
        grep -vE '^\s*$' "$OUT/bench.log" | tail -12
    fi
} | tee "$OUT/summary.txt"
exit $FAILED
