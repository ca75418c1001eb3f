#!/usr/bin/env bash
# The main job, end to end on the bundled default corpus (State of the Union addresses):
# set-up, build, prepare token shards (train: addresses up to 2000, validation: after 2000; Moby-Dick as a
# second domain for zero-shot evaluation).
# Usage: tools/main-job.sh [run-directory]   (default: runs/default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run=${1:-"$root/runs/default"}
"$root/tools/setup.sh"
cmake -S "$root" -B "$root/build" >/dev/null
cmake --build "$root/build" -j "$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$run/data"
bin="$root/build/bin"
# SOTU files are YEAR_name_party.txt: addresses after 2000 are routed whole to the validation split.
train=() val=()
for f in "$root"/.cache/sotu/data/*.txt; do
  year=$(basename "$f"); year=${year%%_*}
  if [ "$year" -le 2000 ]; then train+=("$f"); else val+=(--val-input "$f"); fi
done
mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-prep" prepare --vocab "$root/.cache/gpt2" --overwrite \
  --out "$run/data/sotu" "${train[@]}" "${val[@]}"
mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$bin/hdlm-prep" prepare --vocab "$root/.cache/gpt2" --overwrite \
  --split validation --out "$run/data/moby-dick" "$root/.cache/moby-dick/data/data.txt"
