"""The folders of src/ depend on each other in one direction (docs/architecture.md): every #include of a header of
another subsystem — a private one ("model/layers.h") or a public one ("hdlm/model.h", attributed to the folder that
implements it) — must point to a folder earlier in ORDER. Prints each violation; exit status 1 if there is one.

Usage: /usr/bin/python3 check_layers.py SOURCE_DIR
"""
import glob
import os
import re
import sys

ORDER = ["core", "text", "data", "diffusion", "model", "run", "cuda", "train", "eval"]
# Public header -> the folder that implements it.
PUBLIC = {
    "blas": "core", "cli": "core", "common": "core", "config": "core", "metrics": "core", "peak": "core",
    "rng": "core", "tensor": "core", "detokenize": "text", "textsource": "text", "tokenizer": "text",
    "dataset": "data", "shard": "data", "diffusion": "diffusion", "mask": "diffusion", "schedule": "diffusion",
    "model": "model", "checkpoint": "run", "model_io": "run", "train_config": "run", "cuda": "cuda",
    "trainer": "train", "compress": "eval", "features": "eval", "gpt2": "eval", "likelihood": "eval", "mauve": "eval", "sampler": "eval",
}

root = sys.argv[1]
problems = []
for header in glob.glob(os.path.join(root, "include/hdlm/*.h")):
    name = os.path.basename(header)[:-2]
    if name not in PUBLIC:
        problems.append(f"include/hdlm/{name}.h: not in check_layers.py's table of public headers")
files = [f for pattern in ("src/*/*.c", "src/*/*.h", "src/*/*.cu", "src/*/*.cuh", "include/hdlm/*.h")
         for f in glob.glob(os.path.join(root, pattern))]
for path in files:
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    folder = parts[1] if parts[0] == "src" else PUBLIC.get(parts[-1][:-2])
    if folder not in ORDER:
        problems.append(f"{rel}: folder '{folder}' is not in the layer order")
        continue
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
        m = re.match(r'#include "([a-z_]+)/([a-z_0-9]+)\.(?:h|cuh)"', line)
        if not m:
            continue
        target = PUBLIC.get(m.group(2), "?") if m.group(1) == "hdlm" else m.group(1)
        if target not in ORDER:
            problems.append(f"{rel}:{number}: {line.strip()}: unknown subsystem")
        elif parts[0] == "include" and m.group(1) != "hdlm":
            problems.append(f"{rel}:{number}: a public header includes the private {m.group(1)}/{m.group(2)}.h")
        elif ORDER.index(target) > ORDER.index(folder):
            problems.append(f"{rel}:{number}: {folder}/ includes {target}/ ({line.strip()}), which comes after it")
for p in problems:
    print(p)
print(f"{len(files)} files checked, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
