#!/usr/bin/env bash
# The paper's comparison in miniature (docs/methods.md): every method's preset (jobs/configs/<method>.yaml) trained at
# the same small size on the bundled default corpus with the same token budget, then evaluated the same way:
# validation and zero-shot (Moby-Dick) likelihood with each method's own estimator, samples with each method's own
# sampler at the same number of network calls (64 = L), their unigram entropy and their generative perplexity under a
# judge (GPT-2 with --gpt2 DIR, else the AR model trained in the same run). Writes OUT/table.md, OUT/table.json and
# OUT/comparison.png; ~20 minutes on 2 cores with the defaults.
#
# The small version of every preset is the preset plus SMALL below (one list for all methods): width 128, 2 blocks,
# 64-token chunks, batch 16, the same learning-rate schedule; each method keeps its own objective, schedule, noise
# and optimizer moments.
#
# Usage: tools/compare-methods.sh [--updates N] [--methods "ar mdlm ..."] [--chunks N] [--samples N]
#                                 [--gpt2 DIR] [--out DIR]
#   --updates N   optimizer updates per method [150]      --chunks N   chunks per likelihood estimate [128]
#   --samples N   samples per method [16]                 --out DIR    [runs/compare]
#   --gpt2 DIR    a GPT-2 judge (model.safetensors + config.json) instead of the AR model of this run
# The tools are taken from $HDLM_BIN_DIR [build/bin].
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
updates=150 chunks=128 samples=16 out="$root/runs/compare" gpt2=""
methods="ar mdlm sedd bd3lm_w4 bd3lm_w8 bd3lm_w16 epsilon_hdlm gamma_hdlm ardm"
while [ $# -gt 0 ]; do
  case $1 in
    --updates) updates=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --chunks) chunks=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --gpt2) gpt2=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--updates N] [--methods LIST] [--chunks N] [--samples N] [--gpt2 DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
if [ -z "$gpt2" ] && [[ " $methods " != *" ar "* ]]; then
  echo "$0: without --gpt2 the judge is the AR model of this run: keep ar in --methods" >&2; exit 2
fi
bin=${HDLM_BIN_DIR:-"$root/build/bin"} py=/usr/bin/python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run2() { mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$@"; }
mkdir -p "$out"
[ -f "$out/data/sotu/manifest.json" ] && [ -f "$out/data/moby-dick/manifest.json" ] ||
  "$root/tools/prepare-default-corpus.sh" "$out/data" > "$out/prepare.log" 2>&1

SMALL=(model.hidden_size=128 model.n_blocks=2 model.n_heads=4 model.cond_dim=128 model.length=64 model.dropout=0
       training.batch_size=16 training.accum=1 "training.n_iters=$updates" "training.log_freq=$(( (updates + 4) / 5 ))"
       "training.eval_freq=$updates" "training.snapshot_freq=$updates" training.eval_batches=4 training.ema=0.999
       training.ema_update_after=0 optim.lr=2e-3 optim.min_lr=2e-4 optim.scheduler=cosine "optim.total=$updates"
       optim.lr_multiplier=1 optim.warmup=0)

# Each method's sampler at 64 network calls per 64-token sample (block diffusion: τ = calls / blocks).
sampler_args() {
  case $1 in
    ar) echo "--sampler ar --kv-cache" ;;
    mdlm) echo "--sampler ancestral --steps 64" ;;
    epsilon_hdlm) echo "--sampler acs --steps 64" ;;
    sedd|gamma_hdlm) echo "--sampler gamma-nar --tau 64" ;;
    bd3lm_w*) echo "--sampler walk --kv-cache --tau ${1#bd3lm_w}" ;;   # τ = ω: L/ω blocks x τ = 64 calls
    ardm) echo "--sampler ardm --budget 64" ;;
  esac
}

judge=(--ar-judge "$out/ar/checkpoints") judge_name="AR model of this run (hdlm, same data and budget)"
[ -n "$gpt2" ] && judge=(--judge "$gpt2") judge_name="GPT-2 ($gpt2)"
# The AR model judges the others: it goes first.
ordered="$( (echo "$methods" | tr ' ' '\n' | grep -x ar || true; echo "$methods" | tr ' ' '\n' | grep -vx ar || true) | xargs)"
for m in $ordered; do
  d="$out/$m"
  rm -rf "$d"
  mkdir -p "$d"
  echo "== $m: training ($updates updates of 16 x 64 tokens, 2 ranks)"
  t0=$(date +%s.%N)
  run2 "$bin/hdlm-train" --config "$root/jobs/configs/$m.yaml" "${SMALL[@]}" data.train="$out/data/sotu" \
    data.valid="$out/data/sotu" run.dir="$d" > "$d/train.log" 2>&1 || { tail -5 "$d/train.log"; exit 1; }
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }' > "$d/train_seconds"
  grep "^update $updates/" "$d/train.log" | tail -1
  for data in sotu moby-dick; do
    run2 "$bin/hdlm-eval" perplexity --ckpt "$d/checkpoints" --data "$out/data/$data" --max-chunks "$chunks" \
      --copies 4 --rounds 2 --json > "$d/perplexity-$data.txt" 2> "$d/perplexity-$data.log" ||
      { tail -3 "$d/perplexity-$data.log"; exit 1; }
  done
  # shellcheck disable=SC2046
  run2 "$bin/hdlm-eval" sample --ckpt "$d/checkpoints" --n "$samples" --batch "$samples" --seed 1 \
    $(sampler_args "$m") --out "$d/samples.jsonl" > "$d/sample.log" 2>&1 || { tail -3 "$d/sample.log"; exit 1; }
  "$bin/hdlm-eval" genppl "${judge[@]}" --samples "$d/samples.jsonl" --keep-remainder > "$d/genppl.txt" 2>&1 ||
    { cat "$d/genppl.txt"; exit 1; }
done

# The table (Markdown and JSON) and the plot.
"$py" - "$out" "$updates" "$judge_name" $methods <<'PY'
import json, math, os, re, sys
out, updates, judge, methods = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = []
for m in methods:
    d = os.path.join(out, m)
    def last_json(path):
        lines = [l for l in open(path) if l.startswith("{")]
        return json.loads(lines[-1])
    val, zs = last_json(f"{d}/perplexity-sotu.txt"), last_json(f"{d}/perplexity-moby-dick.txt")
    metrics = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if l.strip()]
    train = [r for r in metrics if r.get("loss") is not None][-1]
    samples = [json.loads(l) for l in open(f"{d}/samples.jsonl") if l.strip()]
    entropy = sum(s["entropy"] for s in samples) / len(samples)
    g = re.search(r"gen_ppl (\S+) std (\S+)", open(f"{d}/genppl.txt").read())
    sampler = samples[0]["sampler"]
    calls = re.search(r"(\d+) calls each", open(f"{d}/sample.log").read())
    row = dict(method=m, train_loss=train["loss"], loss_unit=train.get("loss_unit", "?"),
               train_seconds=float(open(f"{d}/train_seconds").read()), estimator=val["estimator"],
               val_nll=val["bound"], val_se=val["std_error"], val_ppl=val["perplexity"], zeroshot_ppl=zs["perplexity"],
               sampler=sampler, calls=int(calls.group(1)) if calls else None, entropy=entropy,
               gen_ppl=float(g.group(1)), gen_ppl_std=float(g.group(2)))
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            sys.exit(f"compare-methods: {m}: {k} is {v}")
    rows.append(row)
json.dump(dict(updates=updates, judge=judge, rows=rows), open(f"{out}/table.json", "w"), indent=1)
with open(f"{out}/table.md", "w") as f:
    f.write(f"Each method: {updates} updates of 16 x 64 tokens ({updates * 1024} tokens), width 128, 2 blocks, "
            f"2 ranks. Likelihoods on the held-out addresses (validation) and Moby-Dick (zero-shot), "
            f"nats/token and perplexity, each method's own estimator; samples: 64 network calls each; "
            f"gen-PPL judge: {judge}.\n\n")
    f.write("| method | train loss | estimator | validation NLL | validation PPL | Moby-Dick PPL | sampler (calls) "
            "| entropy | gen-PPL | train s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        se = " (exact)" if r["val_se"] == 0 else " ± n/a" if r["val_se"] is None else f" ± {r['val_se']:.3f}"
        f.write(f"| {r['method']} | {r['train_loss']:.3f} {r['loss_unit']} | {r['estimator']} | {r['val_nll']:.3f}{se} "
                f"| {r['val_ppl']:.1f} | {r['zeroshot_ppl']:.1f} | {r['sampler']} ({r['calls']}) | {r['entropy']:.2f} "
                f"| {r['gen_ppl']:.1f} | {r['train_seconds']:.0f} |\n")
with open(f"{out}/plot.dat", "w") as f:
    for r in rows:
        f.write(f"{r['method']} {r['val_ppl']} {r['zeroshot_ppl']} {r['gen_ppl']}\n")
print(open(f"{out}/table.md").read())
PY
if command -v gnuplot > /dev/null; then
  gnuplot <<GP
set terminal pngcairo size 1000,500 font ",10" noenhanced
set output "$out/comparison.png"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set ylabel "perplexity (log scale)"
set xtics rotate by -30
set grid ytics
set key outside top center horizontal
set title "methods at the same size and token budget ($updates updates, default corpus)"
plot "$out/plot.dat" using 2:xtic(1) title "validation (own estimator)", "" using 3 title "Moby-Dick (zero-shot)", \
     "" using 4 title "gen-PPL of 64-call samples"
GP
  echo "plot: $out/comparison.png"
fi
echo "table: $out/table.md"
