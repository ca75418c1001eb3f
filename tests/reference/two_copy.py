"""The two-copy training layout of a `block` hyperschedule (method §2.10, §3.3), built independently of the C code as
the reference builds it: the input is [x; x] of length 2L; block b of the noisy copy takes the slice of the level
vector of its own step k_b (the block schedule's levels of step k: settled blocks 0, the current block τ − s,
later blocks W = τ); the clean copy is settled (t = ε_s). The attention mask is a dense 2L × 2L boolean tensor:
clean rows see clean keys under the context rule (block-causal over nb = ⌊L/ω⌋ blocks), noisy bucket b sees the
clean keys [0, bω) and its own bucket (full, or causal inside); nothing else.

Usage: /usr/bin/python3 two_copy.py L OMEGA TAU CONTEXT BLOCK EPS_S K_0 K_1 ...  (CONTEXT block_causal|causal|full,
BLOCK full|causal). Prints "mask i <2L digits>" per row, then "pos i level t_bits" per position (t as float32 bits).
"""
import sys

import numpy as np
import torch

L, omega, tau = (int(a) for a in sys.argv[1:4])
context, block, eps = sys.argv[4], sys.argv[5], float(sys.argv[6])
steps = [int(a) for a in sys.argv[7:]]
nb = L // omega
assert len(steps) == nb


def block_levels(k):
    """Levels of step k of the block schedule (method §2.3): blk = (k-1)//τ, s = k - blk·τ."""
    blk = (k - 1) // tau
    s = k - blk * tau
    lv = torch.full((L,), tau, dtype=torch.long)
    lv[: blk * omega] = 0
    lv[blk * omega: min((blk + 1) * omega, L)] = tau - s
    return lv


levels = torch.zeros(2 * L, dtype=torch.long)
for b, k in enumerate(steps):
    levels[L + b * omega: L + (b + 1) * omega] = block_levels(k)[b * omega: (b + 1) * omega]

# times (method §2.6): settled ε_s, active ε_a + ℓ·Δ in float32, clamped
active_eps = 10 * eps
delta = (1 - 2 * active_eps) / (tau - 1)
t = active_eps + levels[L:].float() * delta
t = torch.cat([torch.full((L,), eps, dtype=torch.float32), t]).clamp(min=eps, max=1.0 - eps)

q = torch.arange(2 * L).view(-1, 1)
k = torch.arange(2 * L).view(1, -1)
clean_q, clean_k = q < L, k < L
if context == "full":
    clean = torch.ones(2 * L, 2 * L, dtype=torch.bool)
elif context == "causal":
    clean = k <= q
else:
    clean = (k // omega <= q // omega) & (q < nb * omega)
mask = clean_q & clean_k & clean
bucket_q, bucket_k = (q - L) // omega, (k - L) // omega
own = (~clean_q) & (~clean_k) & (bucket_q == bucket_k)
if block == "causal":
    own = own & (k <= q)
prefix = (~clean_q) & clean_k & (k < bucket_q * omega)
mask = mask | own | prefix

for i in range(2 * L):
    print("mask", i, "".join("1" if x else "0" for x in mask[i].tolist()))
bits = t.numpy().astype(np.float32).view(np.uint32)
for i in range(2 * L):
    print("pos", i, int(levels[i]), f"{int(bits[i]):08x}")
