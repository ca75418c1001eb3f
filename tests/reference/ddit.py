#!/usr/bin/python3
"""Independent float64 PyTorch implementation of the DDiT model (method §7; γ inputs/outputs §5.4; masks §3.2).

Used by tests/test_model.c as the golden reference: for every case directory given on the command line it reads
config.json, tensors.txt (state-dict name, offset, numel, shape), params.f32 (the C model's flat buffer), tokens.i32,
targets.i32 and, for γ, sigma.f32; it runs forward, a plain mean cross-entropy against the targets and autograd, and
writes out.f64 (outputs [B, L, V]), loss.f64 and grads.f64 (gradients at the same offsets as the parameters).

`--bench B L REPS` instead times forward+backward of the DDiT-small shape in float32 (used by hdlm-bench model).
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_tables(inv_freq, length, mode, dtype):
    """cos/sin [L, D]; `reference` emulates the fp16 angle and fp16 -> bf16 tables of the reference (§7.4)."""
    inv = inv_freq.detach().cpu().numpy().astype(np.float32)
    pos = np.arange(length, dtype=np.float32)
    if mode == "reference":
        angle = (pos.astype(np.float16).astype(np.float32)[:, None]
                 * inv.astype(np.float16).astype(np.float32)[None, :]).astype(np.float16)
        cos = np.cos(angle.astype(np.float64)).astype(np.float16).astype(np.float32)
        sin = np.sin(angle.astype(np.float64)).astype(np.float16).astype(np.float32)
        cos = torch.from_numpy(cos).to(torch.bfloat16).to(dtype)
        sin = torch.from_numpy(sin).to(torch.bfloat16).to(dtype)
    else:
        angle = pos[:, None] * inv[None, :]   # fp32 product, as torch.einsum in fp32
        cos = torch.from_numpy(np.cos(angle.astype(np.float64))).to(torch.float32).to(dtype)
        sin = torch.from_numpy(np.sin(angle.astype(np.float64))).to(torch.float32).to(dtype)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def attention_allowed(length, mask):
    """Boolean [L, L] matrix of §3.2: allowed[i, j] = query i may attend key j."""
    n_set, a_end = mask["n_set"], mask["a_end"]
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            if i < n_set and j < n_set:
                ctx = mask["context"]
                if ctx == "full":
                    allowed[i, j] = True
                elif ctx == "causal":
                    allowed[i, j] = j <= i
                else:
                    allowed[i, j] = j // mask["block_size"] <= i // mask["block_size"]
            elif n_set <= i <= a_end:
                if j < n_set:
                    allowed[i, j] = True
                elif j <= a_end:
                    allowed[i, j] = mask["block"] == "full" or j <= i
    return allowed


class Block(nn.Module):
    def __init__(self, d, heads, mlp_ratio, cond_dim, gamma_family, dropout):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.norm1 = nn.Module()
        self.norm1.weight = nn.Parameter(torch.ones(d))
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = nn.Module()
        self.norm2.weight = nn.Parameter(torch.ones(d))
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * d, d))
        self.gamma_family = gamma_family
        if gamma_family:
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * d)

    def forward(self, x, cos, sin, allowed, cond):
        b, L, d = x.shape
        if self.gamma_family:
            sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.adaLN_modulation(cond).chunk(6, dim=-1)
        a = F.layer_norm(x, (d,), eps=1e-5) * self.norm1.weight
        if self.gamma_family:
            a = a * (1 + sc_a) + sh_a
        q, k, v = self.attn_qkv(a).view(b, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~allowed, float("-inf"))
        dead = (~allowed).all(dim=-1, keepdim=True)          # rows with no allowed key: all-zero scores (§3.2)
        scores = torch.where(dead, torch.zeros_like(scores), scores)
        o = F.dropout(torch.softmax(scores, dim=-1), self.p, self.training) @ v
        o = F.dropout(self.attn_out(o.transpose(1, 2).reshape(b, L, d)), self.p, self.training)
        x = x + (g_a * o if self.gamma_family else o)
        m = F.layer_norm(x, (d,), eps=1e-5) * self.norm2.weight
        if self.gamma_family:
            m = m * (1 + sc_m) + sh_m
        m = F.dropout(self.mlp(m), self.p, self.training)
        return x + (g_m * m if self.gamma_family else m)


class DDiT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.cfg = cfg["width"], cfg
        self.gamma_family = cfg["family"] == "gamma"
        self.vocab_embed = nn.Module()
        self.vocab_embed.embedding = nn.Parameter(torch.empty(cfg["vocab"], d))
        if self.gamma_family:
            c = cfg["cond_dim"]
            self.sigma_map = nn.Module()
            self.sigma_map.mlp = nn.Sequential(nn.Linear(256, c), nn.SiLU(), nn.Linear(c, c))
        self.rotary_emb = nn.Module()
        hd = d // cfg["n_heads"]
        self.rotary_emb.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd)))
        self.blocks = nn.ModuleList([Block(d, cfg["n_heads"], cfg["mlp_ratio"], cfg.get("cond_dim", 0),
                                           self.gamma_family, cfg.get("dropout", 0.0)) for _ in range(cfg["n_layers"])])
        self.output_layer = nn.Module()
        self.output_layer.norm_final = nn.Module()
        self.output_layer.norm_final.weight = nn.Parameter(torch.ones(d))
        self.output_layer.linear = nn.Linear(d, cfg["vocab"])

    def forward(self, tokens, sigma, allowed):
        cfg, L = self.cfg, tokens.shape[1]
        emb = self.vocab_embed.embedding
        h = emb[tokens]
        cond = None
        if self.gamma_family:
            w = torch.exp(-cfg["gamma"] * sigma)[..., None]
            h = w * h + (1 - w) * emb[cfg["vocab"] - 1]
            half = 128
            freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=sigma.dtype) / half)
            args = sigma[..., None] * freqs
            cond = F.silu(self.sigma_map.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1)))
        cos, sin = rotary_tables(self.rotary_emb.inv_freq, L, cfg["rotary"], h.dtype)
        for block in self.blocks:
            h = block(h, cos, sin, allowed, cond)
        h = F.layer_norm(h, (h.shape[-1],), eps=1e-5) * self.output_layer.norm_final.weight
        out = self.output_layer.linear(h)
        if self.gamma_family:   # scale_by_sigma (§5.4 step 1)
            e = torch.where(sigma < 0.5, torch.expm1(sigma), torch.exp(sigma) - 1)
            out = out - torch.log(e)[..., None] - math.log(cfg["vocab"] - 1)
        return out


def run_case(case):
    with open(os.path.join(case, "config.json")) as f:
        cfg = json.load(f)
    B, L = cfg["batch"], cfg["length"]
    model = DDiT(cfg).double()
    flat = np.fromfile(os.path.join(case, "params.f32"), dtype=np.float32)
    state, layout = {}, []
    with open(os.path.join(case, "tensors.txt")) as f:
        for line in f:
            name, offset, numel, *shape = line.split()
            offset, numel = int(offset), int(numel)
            state[name] = torch.from_numpy(flat[offset:offset + numel].astype(np.float64)).view(*map(int, shape))
            layout.append((name, offset, numel))
    state["rotary_emb.inv_freq"] = state["rotary_emb.inv_freq"].float()
    model.load_state_dict(state, strict=True)   # names and shapes must match the reference's state dict
    tokens = torch.from_numpy(np.fromfile(os.path.join(case, "tokens.i32"), dtype=np.int32).astype(np.int64))
    targets = torch.from_numpy(np.fromfile(os.path.join(case, "targets.i32"), dtype=np.int32).astype(np.int64))
    sigma = None
    if cfg["family"] == "gamma":
        sigma = torch.from_numpy(np.fromfile(os.path.join(case, "sigma.f32"), dtype=np.float32).astype(np.float64))
        sigma = sigma.view(B, L)
    allowed = attention_allowed(L, cfg["mask"])
    out = model(tokens.view(B, L), sigma, allowed)
    loss = F.cross_entropy(out.reshape(B * L, -1), targets)
    loss.backward()
    out.detach().numpy().astype(np.float64).tofile(os.path.join(case, "out.f64"))
    np.array([loss.item()], dtype=np.float64).tofile(os.path.join(case, "loss.f64"))
    n_params = sum(numel for name, _, numel in layout if name != "rotary_emb.inv_freq")
    grads = np.zeros(n_params, dtype=np.float64)
    params = dict(model.named_parameters())
    for name, offset, numel in layout:
        if name in params:
            grads[offset:offset + numel] = params[name].grad.detach().numpy().reshape(-1)
    grads.tofile(os.path.join(case, "grads.f64"))


def bench(batch, length, reps):
    """Seconds per forward+backward of DDiT-small (ε, dropout 0.1) in float32, PyTorch's own threads."""
    torch.manual_seed(0)
    cfg = dict(family="epsilon", width=768, n_layers=12, n_heads=12, mlp_ratio=4, vocab=50258, rotary="exact",
               dropout=0.1)
    model = DDiT(cfg)
    nn.init.uniform_(model.vocab_embed.embedding, -0.036, 0.036)
    model.train()
    tokens = torch.randint(0, 50258, (batch, length))
    targets = torch.randint(0, 50257, (batch * length,))
    allowed = torch.ones(length, length, dtype=torch.bool)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        out = model(tokens, None, allowed)
        loss = F.cross_entropy(out.reshape(batch * length, -1), targets)
        model.zero_grad(set_to_none=True)
        loss.backward()
        times.append(time.perf_counter() - t0)
    print("%.6f" % min(times[1:]))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--bench":
        bench(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        for case_dir in sys.argv[1:]:
            run_case(case_dir)
