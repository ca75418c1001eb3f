#!/usr/bin/python3
"""Golden values for tests/test_optim.c from PyTorch: torch.optim.AdamW, clip_grad_norm_ and LambdaLR.

Usage: optim_golden.py OUT_DIR. Writes raw little-endian float32 arrays: params0.f32 [n], grads.f32 [steps, n],
params.f32 [steps, n] (after each update), m.f32 / v.f32 [n] (after the last update), lr.f64 [steps],
norm.f64 [steps] (gradient norm before clipping).
"""
import math
import sys

import numpy as np
import torch

n, steps = 1000, 6
beta1, beta2, eps, wd = 0.9, 0.95, 1e-8, 0.1
peak, warmup, total = 3e-4, 3, 10
out = sys.argv[1]

rng = np.random.default_rng(7)
params0 = rng.normal(0, 0.02, n).astype(np.float32)
# Gradient scales that cross the clip threshold of 1.0 in both directions.
grads = np.stack([rng.normal(0, s, n) for s in (0.01, 0.1, 0.02, 0.05, 0.003, 0.2)]).astype(np.float32)

p = torch.nn.Parameter(torch.from_numpy(params0.copy()))
opt = torch.optim.AdamW([p], lr=peak, betas=(beta1, beta2), eps=eps, weight_decay=wd)
# warm-up + cosine to zero (the γ schedule of method §8.2), one scheduler step per update
factor = lambda e: e / warmup if e < warmup else max(0.0, 0.5 * (1 + math.cos(math.pi * (e - warmup) / (total - warmup))))
sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
after, lrs, norms = [], [], []
for s in range(steps):
    p.grad = torch.from_numpy(grads[s].copy())
    norms.append(float(torch.nn.utils.clip_grad_norm_([p], 1.0)))
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    after.append(p.detach().numpy().copy())
state = opt.state[p]
params0.tofile(f"{out}/params0.f32")
grads.tofile(f"{out}/grads.f32")
np.stack(after).astype(np.float32).tofile(f"{out}/params.f32")
state["exp_avg"].numpy().astype(np.float32).tofile(f"{out}/m.f32")
state["exp_avg_sq"].numpy().astype(np.float32).tofile(f"{out}/v.f32")
np.array(lrs, dtype=np.float64).tofile(f"{out}/lr.f64")
np.array(norms, dtype=np.float64).tofile(f"{out}/norm.f64")
