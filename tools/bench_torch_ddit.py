#!/usr/bin/env python3
"""The PyTorch baseline of `hdlm-bench train`: full training steps of the ε DDiT-small as users would write it.

The model is tests/reference/ddit.py's ε DDiT (same state-dict names and shapes: embedding, blocks with norm1,
attn_qkv, attn_out, norm2, mlp, output layer with norm_final and a biased head; rotary q/k, dropout 0.1 at the three
sites), written here for speed instead of exactness: F.scaled_dot_product_attention (full attention), bf16 autocast
with an fp32 residual stream, bf16 rotary tables (as the reference's flash-attn rotary), fused AdamW. It is kept
self-contained (torch only; ddit.py needs numpy, which GPU images may lack).

One step = corruption (MDLM masking, §4.4) + forward + weighted cross-entropy + backward + global-norm clipping +
fused AdamW + EMA, the same work `hdlm-bench train` times for hdlm. For each variant (eager; torch.compile) one line:

    torch_bench variant=eager device=cuda batch=32 length=1024 s_per_step=0.123456 tok_s=265000.0

or, when a variant cannot run: torch_bench variant=compile error="..." (the C bench prints both).
"""
import argparse
import contextlib
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, MASK = 50258, 50257


def attention(q, k, v, p, training):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p if training else 0.0)
    # torch < 2.0 (the development machine's Debian build, CPU only): the same math, unfused
    s = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return F.dropout(s, p, training) @ v


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, mlp_ratio, dropout):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.norm1 = nn.Module()
        self.norm1.weight = nn.Parameter(torch.ones(d))
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = nn.Module()
        self.norm2.weight = nn.Parameter(torch.ones(d))
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * d, d))

    def forward(self, x, cos, sin):
        b, L, d = x.shape
        a = F.layer_norm(x, (d,), eps=1e-5) * self.norm1.weight
        q, k, v = self.attn_qkv(a).view(b, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = attention(q, k, v, self.p, self.training)
        x = x + F.dropout(self.attn_out(o.transpose(1, 2).reshape(b, L, d)), self.p, self.training)
        m = F.layer_norm(x, (d,), eps=1e-5) * self.norm2.weight
        return x + F.dropout(self.mlp(m), self.p, self.training)


class DDiT(nn.Module):
    def __init__(self, width, layers, heads, length, dropout, device):
        super().__init__()
        self.vocab_embed = nn.Module()
        self.vocab_embed.embedding = nn.Parameter(torch.empty(VOCAB, width).uniform_(-0.036, 0.036))
        self.blocks = nn.ModuleList([Block(width, heads, 4, dropout) for _ in range(layers)])
        self.output_layer = nn.Module()
        self.output_layer.norm_final = nn.Module()
        self.output_layer.norm_final.weight = nn.Parameter(torch.ones(width))
        self.output_layer.linear = nn.Linear(width, VOCAB)
        # The zero-initialised head of the paper would make every upstream gradient zero: small values instead.
        nn.init.uniform_(self.output_layer.linear.weight, -0.01, 0.01)
        hd = width // heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        angle = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.register_buffer("cos", torch.cat((angle.cos(), angle.cos()), dim=-1).to(dtype), persistent=False)
        self.register_buffer("sin", torch.cat((angle.sin(), angle.sin()), dim=-1).to(dtype), persistent=False)

    def forward(self, tokens):
        h = self.vocab_embed.embedding[tokens]
        for block in self.blocks:
            h = block(h, self.cos, self.sin)
        h = F.layer_norm(h, (h.shape[-1],), eps=1e-5) * self.output_layer.norm_final.weight
        return self.output_layer.linear(h)


def corrupt(x0, generator):
    """MDLM masking (method §4.4, standard loss): p_b ~ U(0,1) per sequence; weights 1/p_b on masked positions."""
    B, L = x0.shape
    p = torch.rand(B, 1, device=x0.device, generator=generator) * (1 - 1e-4) + 1e-4
    masked = torch.rand(B, L, device=x0.device, generator=generator) < p
    xt = torch.where(masked, torch.full_like(x0, MASK), x0)
    weight = masked.float() / p
    return xt, weight, float(B * L)


def run(variant, args):
    device = args.device
    cuda = device == "cuda"
    torch.manual_seed(0)
    model = DDiT(args.width, args.layers, args.heads, args.length, 0.1, device).to(device)
    model.train()
    params = [p for p in model.parameters()]
    fused = dict(fused=True) if cuda else {}   # the CUDA kernel (torch >= 2.0)
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **fused)
    ema = [p.detach().clone() for p in params]
    step_model = torch.compile(model) if variant == "compile" else model
    generator = torch.Generator(device=device)
    generator.manual_seed(1)
    x0 = torch.randint(0, VOCAB - 1, (args.batch, args.length), device=device, generator=generator)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step():
        xt, weight, norm = corrupt(x0, generator)
        with autocast:
            logits = step_model(xt)
        ce = F.cross_entropy(logits.float().view(-1, VOCAB), x0.view(-1), reduction="none")
        loss = (ce * weight.view(-1)).sum() / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            if hasattr(torch, "_foreach_lerp_"):
                torch._foreach_lerp_(ema, params, 1.0 - 0.9999)
            else:   # torch < 2.0
                torch._foreach_mul_(ema, 0.9999)
                torch._foreach_add_(ema, params, alpha=1.0 - 0.9999)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):   # compilation, autotuning, allocator warm-up
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    sec = (time.perf_counter() - t0) / args.steps
    if not math.isfinite(loss.item()):
        raise RuntimeError("non-finite loss %r" % loss.item())
    return sec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", default="eager,compile", help="comma-separated: eager, compile")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print('torch_bench variant=all error="torch sees no CUDA device"', flush=True)
        return 1
    status = 0
    for variant in args.variants.split(","):
        try:
            sec = run(variant, args)
            print("torch_bench variant=%s device=%s batch=%d length=%d s_per_step=%.6f tok_s=%.1f"
                  % (variant, args.device, args.batch, args.length, sec, args.batch * args.length / sec), flush=True)
        except Exception as e:   # report and go on with the next variant (e.g. out of memory, no compiler)
            msg = ("%s: %s" % (type(e).__name__, e)).splitlines()[0].replace('"', "'")[:200]
            print('torch_bench variant=%s error="%s"' % (variant, msg), flush=True)
            status = 1
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return status


if __name__ == "__main__":
    sys.exit(main())
