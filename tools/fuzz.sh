#!/usr/bin/env bash
# Fuzzes the readers of untrusted files (tests/fuzz/README.md): builds the libFuzzer targets with clang, ASan and
# UBSan in build-fuzz/, makes seed inputs from the project's own files, and runs every target.
#
# Usage: tools/fuzz.sh [--smoke | --seconds N] [--bin DIR]
#   --smoke      a fixed number of inputs per target from a fixed seed: deterministic, about a minute (CI, CTest)
#   --seconds N  N seconds per target (default 60); new inputs are kept in build-fuzz/corpus/<target>
#   --bin DIR    the main build's executables, used to make seeds (default: build/bin)
# Exits non-zero, with the fuzzer's report and the crashing input under build-fuzz/crashes/, when a target crashes,
# leaks, trips a sanitizer or hangs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=seconds seconds=60 bin="$root/build/bin"
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) mode=smoke ;;
    --seconds) seconds=$2; shift ;;
    --bin) bin=$2; shift ;;
    *) echo "usage: tools/fuzz.sh [--smoke | --seconds N] [--bin DIR]" >&2; exit 2 ;;
  esac
  shift
done
command -v clang >/dev/null || { echo "fuzz: clang is missing (tools/setup.sh installs it)" >&2; exit 1; }
for tool in hdlm-prep hdlm-train; do
  [ -x "$bin/$tool" ] || { echo "fuzz: $bin/$tool is missing: build the project first (or give --bin)" >&2; exit 1; }
done

out="$root/build-fuzz"
CC=clang cmake -S "$root" -B "$out" -DHDLM_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHDLM_MARCH=x86-64-v3 >/dev/null
cmake --build "$out" -j "$(nproc)" > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }

# Seeds: configurations, a token shard, a checkpoint index, a small safetensors file, text inputs, the tokenizer files.
seeds="$out/seeds" work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$seeds"
mkdir -p "$seeds"/{config,shard,checkpoint,safetensors,text,tokenizer}
cp "$root"/jobs/configs/*.yaml "$seeds/config/"
# (the seed tools may be a sanitizer build: Open MPI's own allocations are not leaks of theirs)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 ASAN_OPTIONS=detect_leaks=0
head -c 20000 "$root/.cache/moby-dick/data/data.txt" > "$work/moby.txt"
seed_log="$out/seeds.log"
"$bin/hdlm-prep" prepare --vocab "$root/.cache/gpt2" --out "$work/data" "$work/moby.txt" > "$seed_log" 2>&1 ||
  { tail -20 "$seed_log"; echo "fuzz: making the seed shard failed" >&2; exit 1; }
cp "$work/data/train_000000.bin" "$seeds/shard/"
"$bin/hdlm-train" --config "$root/jobs/configs/tiny.yaml" data.train="$work/data" data.valid= run.dir="$work/run" \
  training.n_iters=1 model.hidden_size=16 model.n_heads=2 model.n_blocks=1 > "$seed_log" 2>&1 ||
  { tail -20 "$seed_log"; echo "fuzz: making the seed checkpoint failed" >&2; exit 1; }
cp "$work"/run/checkpoints/step_000000001/index.h5 "$seeds/checkpoint/"
printf '%s' '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' \
  '"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},"__metadata__":{"x":"y"}}' > "$work/h.json"
/usr/bin/python3 -c "
import struct, sys
h = open('$work/h.json', 'rb').read()
open('$seeds/safetensors/small.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(range(12)))"
printf '\001\001{"text": "Hello world! The quick brown fox."}\n{"text": 3}\n{"text": "tab\\t and \\u00e9"}\n' \
  > "$seeds/text/lines.jsonl"
printf '\000\001 The @-@ year ( 1990 ) , " quoted " . \n' > "$seeds/text/wiki.txt"
# A tar of a text member, a nested gzip tar and a JSONL member; gzip-compressed JSONL (first bytes: 2, 3 = the kind).
text_tmp=$(mktemp -d)
printf 'Hello world' > "$text_tmp/a.txt"; printf '{"text": "in a tar"}\n' > "$text_tmp/b.jsonl"
tar --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C "$text_tmp" a.txt | gzip -n > "$text_tmp/inner.gz"
{ printf '\002\001'; tar --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C "$text_tmp" a.txt inner.gz b.jsonl; } > "$seeds/text/archive.bin"
{ printf '\003\005'; gzip -n -c "$text_tmp/b.jsonl"; } > "$seeds/text/jsonl-gz.bin"
rm -rf "$text_tmp"
{ printf '\000'; head -c 3000 "$root/.cache/gpt2/encoder.json"; } > "$seeds/tokenizer/encoder_head"
{ printf '\001'; head -c 3000 "$root/.cache/gpt2/vocab.bpe"; } > "$seeds/tokenizer/vocab_head"

status=0
mkdir -p "$out/crashes"
for target in config shard checkpoint safetensors text tokenizer; do
  corpus="$out/corpus/$target"
  mkdir -p "$corpus"
  if [ "$mode" = smoke ]; then
    runs=2000; [ "$target" = tokenizer ] && runs=100   # each tokenizer input loads a 1 MB file
    args=(-runs=$runs -seed=1 "$seeds/$target")
  else
    args=(-max_total_time="$seconds" "$corpus" "$seeds/$target")
  fi
  # HDF5 1.10 itself leaks a few KB when H5Dopen2 fails on some corrupt files (nothing of hdlm's is left open: the
  # failed call returns no handle); leak detection is off for that target only, crashes and UB still count.
  leaks=1; [ "$target" = checkpoint ] && leaks=0
  echo "fuzz: $target (${args[0]})"
  if ! ASAN_OPTIONS=detect_leaks=$leaks "$out/bin/fuzz_$target" -detect_leaks=$leaks -max_len=65536 -timeout=20 \
      -rss_limit_mb=4096 -artifact_prefix="$out/crashes/$target-" -print_final_stats=1 "${args[@]}" \
      > "$out/$target.log" 2>&1; then
    echo "fuzz: $target FAILED (report: $out/$target.log)"
    tail -40 "$out/$target.log"
    status=1
  else
    grep -E "^stat::number_of_executed_units|^cov:|#[0-9]+.*(DONE|INITED)" "$out/$target.log" | tail -3 | sed 's/^/  /'
  fi
done
[ $status = 0 ] && echo "fuzz: 6 targets, no crash, leak, sanitizer report or hang"
exit $status
