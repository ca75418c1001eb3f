#!/usr/bin/env bash
# The main job, end to end on the bundled default corpus (State of the Union addresses):
# set-up, build, prepare token shards (train: addresses up to 2000, validation: after 2000; Moby-Dick as a
# second domain for zero-shot evaluation), train with 2 MPI ranks, checkpoint, evaluate, sample.
# Usage: tools/main-job.sh [run-directory]   (default: runs/default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run=${1:-"$root/runs/default"}
"$root/tools/setup.sh"
cmake -S "$root" -B "$root/build" >/dev/null
cmake --build "$root/build" -j "$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bin="$root/build/bin"
"$root/tools/prepare-default-corpus.sh" "$run/data"
# Train the small preset (jobs/configs/small.yaml: 13.3M parameters, 150 updates of 16 x 64 tokens) with 2 MPI ranks
# x 1 thread for a few minutes; metrics in $run/small/metrics.jsonl (plotted to $run/small/metrics.png),
# checkpoints in $run/small/checkpoints/ (the last one is `latest`). Re-running resumes nothing: it trains afresh.
mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-train" --config "$root/jobs/configs/small.yaml" \
  data.train="$run/data/sotu" data.valid="$run/data/sotu" run.dir="$run/small"
"$root/tools/plot-metrics.sh" "$run/small/metrics.jsonl" "$run/small/metrics.png"
# Evaluate the newest checkpoint (EMA weights): the masking NELBO perplexity bound (method §9.1) on the held-out
# addresses after 2000 and, zero-shot, on Moby-Dick (first 256 chunks of each, a quick estimate); then 4 samples with the MDLM ancestral sampler (64 steps).
ckpt="$run/small/checkpoints"
for data in sotu moby-dick; do
  mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-eval" perplexity --ckpt "$ckpt" \
    --data "$run/data/$data" --max-chunks 256 --copies 4 --rounds 2 --json | tee "$run/small/perplexity-$data.txt"
done
mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-eval" sample --ckpt "$ckpt" --n 4 \
  --steps 64 --out "$run/small/samples.jsonl"
echo "main job: samples in $run/small/samples.jsonl, metrics plot in $run/small/metrics.png"
