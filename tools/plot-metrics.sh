#!/usr/bin/env bash
# Plots a training run's metrics (hdlm-train's <run.dir>/metrics.jsonl) as a PNG: training and validation loss per
# update (top) and throughput in tokens/s with the achieved fraction of peak FLOP/s (bottom). Needs gnuplot
# (gnuplot-nox, installed by tools/setup.sh) and python3.
# Usage: tools/plot-metrics.sh RUN/metrics.jsonl OUT.png
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 metrics.jsonl out.png" >&2; exit 2; fi
in=$1 out=$2
[ -r "$in" ] || { echo "$0: cannot read $in" >&2; exit 1; }
command -v gnuplot > /dev/null || { echo "$0: gnuplot not found: apt-get install gnuplot-nox" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# JSON Lines -> whitespace columns: update loss val_loss tokens_per_s flops_fraction (NaN where absent)
python3 - "$in" "$tmp/unit" > "$tmp/data" <<'PY'
import json, sys
unit = "loss"
for n, line in enumerate(open(sys.argv[1]), 1):
    if not line.strip():
        continue
    try:
        r = json.loads(line)
    except ValueError as e:
        sys.exit(f"{sys.argv[1]}:{n}: not JSON ({e})")
    val = lambda k: "NaN" if r.get(k) is None else repr(float(r[k]))
    print(r["update"], val("loss"), val("val_loss"), val("tokens_per_s"), val("flops_fraction"))
    if "loss_unit" in r:
        unit = f"loss ({r['loss_unit']})"
open(sys.argv[2], "w").write(unit)
PY
[ -s "$tmp/data" ] || { echo "$0: $in holds no records" >&2; exit 1; }
gnuplot <<GP
set terminal pngcairo size 900,700 font ",10"
set output "$out"
set datafile missing "NaN"
set multiplot layout 2,1 title "$(basename "$(dirname "$in")")"
set xlabel "optimizer update"
set ylabel "$(cat "$tmp/unit")"
set grid
plot "$tmp/data" using 1:2 with lines lw 1.5 title "training loss", \
     "$tmp/data" using 1:3 with linespoints pt 7 ps 0.8 lw 2 title "validation loss (EMA)"
set ylabel "tokens/s"
set y2label "% of peak FLOP/s"
set y2tics
set ytics nomirror
plot "$tmp/data" using 1:4 with lines lw 1.5 title "tokens/s", \
     "$tmp/data" using 1:(\$5*100) axes x1y2 with lines lw 1.5 dt 2 title "% of peak FLOP/s"
unset multiplot
GP
echo "wrote $out"
