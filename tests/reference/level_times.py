"""Level times of a hyperschedule as the reference computes them (method §2.6), independently of the C code:
a float32 tensor of levels times the Python-double step Δ = (1 − 2ε_a)/(τ − 1), plus ε_a = 10·ε_s, clamped into
[ε_s, 1 − ε_s]; PyTorch evaluates the product and the sum as two float32 operations.

Usage: /usr/bin/python3 level_times.py EPS_S TAU [TAU ...]; prints "tau level bits" per level, bits = the float32's
IEEE bit pattern in hex.
"""
import sys

import numpy as np
import torch

eps = float(sys.argv[1])
for tau in (int(a) for a in sys.argv[2:]):
    active_eps = 10 * eps
    step = (1 - 2 * active_eps) / (tau - 1)
    levels = torch.arange(tau, dtype=torch.long).float()
    t = active_eps + levels * step
    t = t.clamp(min=eps, max=1.0 - eps)
    bits = t.numpy().astype(np.float32).view(np.uint32)
    for level, b in enumerate(bits):
        print(f"{tau} {level} {int(b):08x}")
