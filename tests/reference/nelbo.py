"""Independent computation of one masking round of the method §9.1 NELBO estimator for a hand-set denoiser.

The denoiser's logits are z[b, i, y] = W[input token of (b, i), y] + P[i, y]. Input: a JSON file with V, L, C, x[L],
masked[C*L], p[C], W[V*V], P[L*V]. Output: the value (1/C)·Σ_b Σ_{i masked} CE(z_{b,i}, x_i)/p_b written to argv[2].
Usage: /usr/bin/python3 nelbo.py IN.json OUT.txt
"""
import json
import sys

import numpy as np


def main():
    with open(sys.argv[1]) as f:
        d = json.load(f)
    V, L, C = d["V"], d["L"], d["C"]
    x = np.array(d["x"], dtype=np.int64)
    masked = np.array(d["masked"], dtype=bool).reshape(C, L)
    p = np.array(d["p"], dtype=np.float64)
    W = np.array(d["W"], dtype=np.float32).reshape(V, V)
    P = np.array(d["P"], dtype=np.float32).reshape(L, V)
    xt = np.where(masked, V - 1, x[None, :])
    z = (W[xt] + P[None, :, :]).astype(np.float64)              # [C, L, V], the sum in float32 as in C
    logz = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    ce = logz - np.take_along_axis(z, np.broadcast_to(x[None, :, None], (C, L, 1)), -1)[..., 0]
    value = ((ce * masked).sum(-1) / p).sum() / C
    with open(sys.argv[2], "w") as f:
        f.write("%.17g\n" % value)


if __name__ == "__main__":
    main()
