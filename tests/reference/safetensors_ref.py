#!/usr/bin/python3
"""safetensors files written and read by hand (Debian has no python3-safetensors) for tests/test_convert.c.

  make CASE_DIR...   for each case: reads CASE_DIR/config.json (the DDiT configuration of tests/reference/ddit.py plus batch, length,
                  seed), builds the float64 reference model, initialises every parameter randomly, and writes
                  model.safetensors (F32, with rotary_emb.inv_freq as the published weights carry it),
                  model_bf16.safetensors (BF16) + model_bf16_as_f32.safetensors (the same values in F32), the
                  same for F16,
                  tokens.i32 (+ sigma.f32 for γ) and out.f64: the reference's outputs on them with the F32 weights.
  check FILE CASE_DIR [FILE CASE_DIR ...]
                  loads FILE (an hdlm-convert export) into the reference model with load_state_dict(strict=True) and
                  checks it gives out.f64 again (to float64 roundoff): a PyTorch user can load our exports.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddit import DDiT  # noqa: E402


def write_safetensors(path, tensors, dtype):
    """tensors: dict name -> float numpy array; dtype "F32", "BF16" or "F16" (rounded to nearest even)."""
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        a32 = np.ascontiguousarray(a, dtype=np.float32)
        if dtype == "BF16":   # round to nearest even on the top 16 bits
            bits = a32.view(np.uint32).astype(np.uint64)
            blob = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
        elif dtype == "F16":
            blob = a32.astype(np.float16).tobytes()
        else:
            blob = a32.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body, out = data[8 + n:], {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        assert e["dtype"] == "F32", e["dtype"]
        out[name] = np.frombuffer(body[a:b], dtype=np.float32).reshape(e["shape"])
    return out


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def model_outputs(cfg, model, case):
    B, L = cfg["batch"], cfg["length"]
    tokens = torch.from_numpy(np.fromfile(os.path.join(case, "tokens.i32"), dtype=np.int32).astype(np.int64))
    sigma = None
    if cfg["family"] == "gamma":
        sigma = torch.from_numpy(np.fromfile(os.path.join(case, "sigma.f32"), dtype=np.float32).astype(np.float64))
        sigma = sigma.view(B, L)
    model.eval()
    with torch.no_grad():
        return model(tokens.view(B, L), sigma, torch.ones(L, L, dtype=torch.bool)).numpy()


def make(case):
    with open(os.path.join(case, "config.json")) as f:
        cfg = json.load(f)
    torch.manual_seed(cfg["seed"])
    model = DDiT(cfg).double()
    state = {}
    for name, p in model.named_parameters():
        with torch.no_grad():   # LayerNorm weights near 1, everything else small: a generic non-trivial network
            p.copy_(torch.randn_like(p) * (0.1 if "norm" in name else 0.05) + (1.0 if "norm" in name else 0.0))
            p.copy_(p.float().double())   # the weights the file holds exactly
        state[name] = p.detach().numpy()
    state["rotary_emb.inv_freq"] = model.rotary_emb.inv_freq.numpy()
    write_safetensors(os.path.join(case, "model.safetensors"), state, "F32")
    write_safetensors(os.path.join(case, "model_bf16.safetensors"), state, "BF16")
    # The BF16 file's values in F32: what importing it must give, bit for bit.
    bf16_state = {"rotary_emb.inv_freq": state["rotary_emb.inv_freq"]}   # hdlm verifies the buffer, loads no copy
    for name, a in state.items():
        if name == "rotary_emb.inv_freq":
            continue
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
        bf16_state[name] = bf16_to_f32(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16))
    write_safetensors(os.path.join(case, "model_bf16_as_f32.safetensors"), bf16_state, "F32")
    write_safetensors(os.path.join(case, "model_f16.safetensors"), state, "F16")
    f16_state = {name: a if name == "rotary_emb.inv_freq" else
                 np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32) for name, a in state.items()}
    write_safetensors(os.path.join(case, "model_f16_as_f32.safetensors"), f16_state, "F32")

    B, L = cfg["batch"], cfg["length"]
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    torch.randint(0, cfg["vocab"], (B * L,), generator=g).numpy().astype(np.int32).tofile(
        os.path.join(case, "tokens.i32"))
    if cfg["family"] == "gamma":
        (torch.rand(B * L, generator=g) * 3.0 + 1e-3).numpy().astype(np.float32).tofile(os.path.join(case,
                                                                                                   "sigma.f32"))
    model_outputs(cfg, model, case).astype(np.float64).tofile(os.path.join(case, "out.f64"))


def check(path, case):
    with open(os.path.join(case, "config.json")) as f:
        cfg = json.load(f)
    model = DDiT(cfg).double()
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in read_safetensors(path).items()}
    state["rotary_emb.inv_freq"] = model.rotary_emb.inv_freq   # the buffer follows from the configuration
    model.load_state_dict(state, strict=True)
    out = model_outputs(cfg, model, case)
    ref = np.fromfile(os.path.join(case, "out.f64"), dtype=np.float64).reshape(out.shape)
    err = np.abs(out - ref).max() / np.abs(ref).max()
    if err > 1e-12:   # same weights, same float64 arithmetic: only BLAS blocking may differ (roundoff ~1e-16)
        sys.exit("outputs of the exported weights differ from the original ones by %g of the largest" % err)
    print("exported weights load into the PyTorch reference with strict=True and give the same outputs")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "make":
        for case_dir in sys.argv[2:]:
            make(case_dir)
    elif len(sys.argv) >= 4 and len(sys.argv) % 2 == 0 and sys.argv[1] == "check":
        for i in range(2, len(sys.argv), 2):
            check(sys.argv[i], sys.argv[i + 1])
    else:
        sys.exit(__doc__)
