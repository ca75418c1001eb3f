"""Golden values for the ε-hybrid and γ-hybrid losses (method §4.3, §5.5, §5.6), written independently of the C code:
vectorised PyTorch in float64, gradients by autograd.

Usage: /usr/bin/python3 losses.py IN OUT [IN OUT ...] (one PyTorch start-up for several cases). IN (little endian):
  int32 mode (0 = ε, 1 = γ), B, L, V, width;  float64 epsilon, lambda, gamma, diffusion_weight, ce_weight;
  float32 out[B*L*V]; int32 x0[B*L], xt[B*L], kind[B*L], cls[B*L], n_set[B]; float32 t[B*L], weight[B*L].
  kind: 0 outside the active set, 1 masked, 2 replaced, 3 untouched (ε). cls: 0 settled, 1 active, 2 worthless (γ).
OUT receives float64 loss, diffusion term, CE term, then d(loss)/d(out)[B*L*V].
"""
import sys

import numpy as np
import torch


def read(path):
    raw = open(path, "rb").read()
    pos = 0

    def take(dtype, count):
        nonlocal pos
        a = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
        pos += a.nbytes
        return a

    mode, B, L, V, width = (int(v) for v in take("<i4", 5))
    eps, lam, gamma, dw, cw = (float(v) for v in take("<f8", 5))
    n = B * L
    case = dict(mode=mode, B=B, L=L, V=V, width=width, eps=eps, lam=lam, gamma=gamma, dw=dw, cw=cw)
    case["out"] = torch.tensor(take("<f4", n * V).astype(np.float64).reshape(B, L, V))
    for name in ("x0", "xt", "kind", "cls"):
        case[name] = torch.tensor(take("<i4", n).astype(np.int64).reshape(B, L))
    case["n_set"] = torch.tensor(take("<i4", B).astype(np.int64))
    case["t"] = torch.tensor(take("<f4", n).astype(np.float64).reshape(B, L))
    case["weight"] = torch.tensor(take("<f4", n).astype(np.float64).reshape(B, L))
    return case


def cross_entropy(logits, target):
    return -torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def epsilon_loss(c, out):
    t, kind = c["t"], c["kind"]
    w = torch.zeros_like(t)
    w = torch.where(kind == 1, 1.0 / t.clamp(min=1e-4), w)
    w = torch.where(kind == 2, torch.full_like(t, c["lam"] * (1 - c["eps"])), w)
    w = torch.where(kind == 3, torch.full_like(t, c["lam"] * c["eps"]), w)
    active = (kind != 0).sum()
    loss = (w * cross_entropy(out, c["x0"])).sum() / active
    return loss, loss * 0, loss * 0


def score_entropy(o, x, x0, sigma, gamma):
    # SEDD's absorbing and uniform score entropies with the full σ, scaled by (1-γ) and γ (method §5.5).
    N = o.shape[-1] - 1
    eps0 = 1e-12
    E = torch.where(sigma < 0.5, torch.expm1(sigma), torch.exp(sigma) - 1)
    real = o[..., :N]
    s = real.exp()
    o_x0 = real.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    r = 1 / (E + eps0)
    absorbing = (1 - gamma) * (s.sum(-1) - r * o_x0 + r * (torch.log(r + eps0) - 1))
    xr = x.clamp(max=N - 1).unsqueeze(-1)
    rho = 1 - N / (E + N + eps0)
    mean_o = real.sum(-1) / N - real.gather(-1, xr).squeeze(-1) / N
    mean_s = s.sum(-1) / N - s.gather(-1, xr).squeeze(-1) / N
    same = x == x0
    neg = torch.where(same, rho * mean_o, mean_o + o_x0 / (E + eps0))
    const = torch.where(same, (N - 1) / N * rho * (torch.log(rho + eps0) - 1),
                        ((-torch.log(rho + eps0) - 1) / (rho + eps0) - (N - 2)) / N)
    uniform = gamma * (mean_s - neg + const)
    return torch.where(x == N, absorbing, uniform)


def gamma_loss(c, out):
    B, L, width = c["B"], c["L"], c["width"]
    eps_n = 5e-3
    t = c["t"]
    sigma = -torch.log1p(-(1 - eps_n) * t)
    dsigma = (1 - eps_n) / (1 - (1 - eps_n) * t)
    settled = c["cls"] == 0
    se = score_entropy(out, c["xt"], c["x0"], sigma, c["gamma"])
    diffusion = torch.where(settled, torch.zeros_like(se), dsigma * se * c["weight"]).sum() / B
    ce = cross_entropy(out, c["x0"])
    ce_term = out.new_zeros(())
    pos = torch.arange(L)
    for b in range(B):
        n_set = int(c["n_set"][b])
        if n_set == 0:
            continue
        nb = (n_set + width - 1) // width
        bw = torch.ones(L, dtype=torch.float64) if nb == 1 else (pos // width).double() / (nb - 1)
        ce_term = ce_term + (ce[b, :n_set] * bw[:n_set]).sum() / n_set
    ce_term = ce_term / B
    return c["dw"] * diffusion + c["cw"] * ce_term, diffusion, ce_term


def main():
    for path_in, path_out in zip(sys.argv[1::2], sys.argv[2::2]):
        c = read(path_in)
        out = c["out"].clone().requires_grad_(True)
        loss, d, ce = (epsilon_loss if c["mode"] == 0 else gamma_loss)(c, out)
        loss.backward()
        result = np.concatenate([np.array([loss.item(), d.item(), ce.item()]), out.grad.numpy().ravel()])
        result.astype("<f8").tofile(path_out)


if __name__ == "__main__":
    main()
