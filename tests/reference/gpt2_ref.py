"""Independent GPT-2 (HF GPT2Model semantics) in float64 torch, for tests/test_gpt2.c.

python3 gpt2_ref.py DIR --vocab V [--prefix transformer.] [--seed S] [--max-tokens M]
writes DIR/model.safetensors (fp32, the format written by hand), DIR/config.json, DIR/samples.jsonl and
DIR/reference.json: per sample the hidden states after ln_f, NLL of each next token, exp(mean NLL over positions
1..L-1), the mean/std of those perplexities, and the MAUVE feature (hidden state at the last of the first M tokens).
"""
import argparse
import json
import math
import os
import struct

import numpy as np
import torch

LAYERS, D, HEADS, N_CTX = 2, 32, 4, 64


def make_weights(vocab, seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, base=0.0):
        return (base + scale * torch.randn(*shape, generator=g, dtype=torch.float64)).float().double()

    w = {"wte.weight": rnd(vocab, D, scale=0.5), "wpe.weight": rnd(N_CTX, D, scale=0.3)}
    for i in range(LAYERS):
        p = "h.%d." % i
        w[p + "ln_1.weight"], w[p + "ln_1.bias"] = rnd(D, base=1.0), rnd(D, scale=0.1)
        w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = rnd(D, 3 * D), rnd(3 * D, scale=0.1)
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = rnd(D, D), rnd(D, scale=0.1)
        w[p + "ln_2.weight"], w[p + "ln_2.bias"] = rnd(D, base=1.0), rnd(D, scale=0.1)
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = rnd(D, 4 * D), rnd(4 * D, scale=0.1)
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = rnd(4 * D, D), rnd(D, scale=0.1)
    w["ln_f.weight"], w["ln_f.bias"] = rnd(D, base=1.0), rnd(D, scale=0.1)
    return w


def write_safetensors(path, tensors, prefix):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.float().numpy().astype("<f4").tobytes()
        header[prefix + name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(w, ids):
    L = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][:L]
    hd = D // HEADS
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    for i in range(LAYERS):
        p = "h.%d." % i
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]   # Conv1D: x @ W[in, out]
        q, k, v = (qkv[:, j * D:(j + 1) * D].reshape(L, HEADS, hd).transpose(0, 1) for j in range(3))
        s = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        s = s.masked_fill(~causal, float("-inf"))
        o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(L, D)
        x = x + o @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    hidden = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
    logp = torch.log_softmax(hidden @ w["wte.weight"].T, -1)
    nll = [0.0] + [-logp[t - 1, ids[t]].item() for t in range(1, L)]
    return hidden, nll


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=10)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    w = make_weights(a.vocab, a.seed)
    write_safetensors(os.path.join(a.dir, "model.safetensors"), w, a.prefix)
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump({"n_layer": LAYERS, "n_head": HEADS, "n_embd": D, "n_ctx": N_CTX, "vocab_size": a.vocab}, f)
    rng = np.random.default_rng(a.seed)
    samples = [[int(t) for t in rng.integers(0, a.vocab, n)] for n in (5, 17, 12, 2)]
    samples[1][3] = a.vocab - 1   # the largest valid id
    out = {"samples": [], "max_tokens": a.max_tokens}
    with open(os.path.join(a.dir, "samples.jsonl"), "w") as f:
        for ids in samples:
            f.write(json.dumps({"token_ids": ids}) + "\n")
            hidden, nll = forward(w, ids)
            ppl = math.exp(sum(nll[1:]) / (len(ids) - 1))
            m = min(len(ids), a.max_tokens)
            feature, _ = forward(w, ids[:m])
            out["samples"].append({"hidden": hidden.flatten().tolist(), "nll": nll, "ppl": ppl,
                                   "feature": feature[m - 1].tolist(), "feature_len": m})
    ppls = np.array([s["ppl"] for s in out["samples"]])
    out["ppl_mean"], out["ppl_std"] = float(ppls.mean()), float(ppls.std())
    with open(os.path.join(a.dir, "reference.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
