#!/usr/bin/env bash
# hdlm-compress against the general-purpose compressors, same machine, same run (docs/compression.md): bits per byte,
# MB/s of input text and network calls per kilobyte of hdlm-compress at several budgets K (2 MPI ranks, encode and
# decode, every round trip checked), and gzip -9, bzip2 -9, xz -9, zstd -19 on the same bytes.
# Usage: tools/bench-compress.sh CKPT OUT_DIR [--bytes N] [--budgets "4 16 64"] [--ranks R]
#   CKPT: an ARDM run (e.g. trained on the default corpus); inputs: the held-out addresses (after 2000) and Moby-Dick,
#   the first N bytes of each [all].
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ckpt=${1:?usage: $0 CKPT OUT_DIR [--bytes N] [--budgets LIST] [--ranks R]} out=${2:?usage: $0 CKPT OUT_DIR}
shift 2
bytes=0 budgets="4 16 64" ranks=2
while [ $# -gt 0 ]; do
  case $1 in
    --bytes) bytes=$2; shift 2 ;;
    --budgets) budgets=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bin=${HDLM_BIN_DIR:-"$root/build/bin"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run() { mpirun -np "$ranks" --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$@"; }
mkdir -p "$out"
# the first $bytes bytes of a file (all of it for 0), cut to whole UTF-8 characters
cut_to() { if [ "$bytes" -gt 0 ]; then head -c "$bytes" "$1" | iconv -c -f UTF-8 -t UTF-8; else cat "$1"; fi; }
for f in "$root"/.cache/sotu/data/*.txt; do
  year=$(basename "$f"); year=${year%%_*}
  if [ "$year" -gt 2000 ]; then cat "$f"; fi
done > "$out/addresses.all"
cut_to "$out/addresses.all" > "$out/addresses.txt"
cut_to "$root/.cache/moby-dick/data/data.txt" > "$out/moby-dick.txt"
now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.4f", n / 1e6 / (b - a) }'; }
table="$out/table.md"
: > "$out/ideal.txt"
{
  echo "| input | compressor | bytes | bits/byte | encode MB/s | decode MB/s | network calls per KB |"
  echo "|---|---|---|---|---|---|---|"
} > "$table"
for K in $budgets; do
  run "$bin/hdlm-compress" codec --ckpt "$ckpt" --budget "$K" --out "$out/k$K.codec" > /dev/null
done
for input in addresses moby-dick; do
  src="$out/$input.txt" n=$(stat -c %s "$out/$input.txt")
  for c in "gzip -9" "bzip2 -9" "xz -9" "zstd -19 -q"; do
    t0=$(now); $c -c < "$src" > "$out/$input.z"; t1=$(now)
    ${c%% *} -d -c < "$out/$input.z" > "$out/$input.back" 2> /dev/null || ${c%% *} -d -c "$out/$input.z" > "$out/$input.back"; t2=$(now)
    cmp -s "$src" "$out/$input.back"
    z=$(stat -c %s "$out/$input.z")
    echo "| $input ($n bytes) | \`${c% -q}\` | $z | $(awk -v z="$z" -v n="$n" 'BEGIN { printf "%.4f", 8 * z / n }') |" \
         "$(rate "$n" "$t0" "$t1") | $(rate "$n" "$t1" "$t2") | — |" >> "$table"
  done
  for K in $budgets; do
    t0=$(now)
    run "$bin/hdlm-compress" encode --ckpt "$ckpt" --codec "$out/k$K.codec" "$src" "$out/$input.k$K.hz" \
      2> "$out/$input.k$K.log"
    t1=$(now)
    run "$bin/hdlm-compress" decode --ckpt "$ckpt" --codec "$out/k$K.codec" "$out/$input.k$K.hz" "$out/$input.back" \
      2>> "$out/$input.k$K.log"
    t2=$(now)
    cmp -s "$src" "$out/$input.back"
    "$bin/hdlm-compress" info "$out/$input.k$K.hz" > "$out/$input.k$K.json"
    z=$(stat -c %s "$out/$input.k$K.hz")
    chunks=$(sed 's/.*"chunks":\([0-9]*\).*/\1/' "$out/$input.k$K.json")
    echo "| $input ($n bytes) | hdlm-compress K = $K | $z | $(awk -v z="$z" -v n="$n" 'BEGIN { printf "%.4f", 8 * z / n }') |" \
         "$(rate "$n" "$t0" "$t1") | $(rate "$n" "$t1" "$t2") |" \
         "$(awk -v k="$K" -v c="$chunks" -v n="$n" 'BEGIN { printf "%.1f", k * c * 1024 / n }') |" >> "$table"
    grep "bits/token" "$out/$input.k$K.log" | sed "s/^/$input K=$K: /" >> "$out/ideal.txt"
  done
done
cat "$table"
echo "(every round trip checked with cmp; hdlm-compress on $ranks MPI ranks x 1 thread, times include loading the model)"
cat "$out/ideal.txt"
