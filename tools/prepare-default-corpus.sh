#!/usr/bin/env bash
# Token shards of the bundled default corpus into DIR/sotu (train: State of the Union addresses up to 2000,
# validation: those after 2000) and DIR/moby-dick (validation only, the zero-shot domain), with 2 MPI ranks.
# Used by tools/main-job.sh and tools/compare-methods.sh; the tools are taken from $HDLM_BIN_DIR [build/bin].
# Usage: tools/prepare-default-corpus.sh DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 DIR}
bin=${HDLM_BIN_DIR:-"$root/build/bin"}
mkdir -p "$out"
# SOTU files are YEAR_name_party.txt: addresses after 2000 are routed whole to the validation split.
train=() val=()
for f in "$root"/.cache/sotu/data/*.txt; do
  year=$(basename "$f"); year=${year%%_*}
  if [ "$year" -le 2000 ]; then train+=("$f"); else val+=(--val-input "$f"); fi
done
mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-prep" prepare --vocab "$root/.cache/gpt2" --overwrite \
  --out "$out/sotu" "${train[@]}" "${val[@]}"
mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-prep" prepare --vocab "$root/.cache/gpt2" --overwrite \
  --split validation --out "$out/moby-dick" "$root/.cache/moby-dick/data/data.txt"
