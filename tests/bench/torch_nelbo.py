#!/usr/bin/python3
"""The PyTorch side of `hdlm-bench eval`: the masking NELBO estimator (method §9.1) with the float32 reference model.

Usage: /usr/bin/python3 torch_nelbo.py CASE_DIR THREADS
  CASE_DIR/config.json     the DDiT configuration of tests/reference/ddit.py plus length, chunks, copies, rounds, floor
  CASE_DIR/model.safetensors  the weights hdlm scored with (hdlm_safetensors_write_model: the reference's keys)
  CASE_DIR/chunks.i32      the chunks [chunks, length]

Per chunk and round: C copies at stratified times t_b = (u + b/C) mod 1, p_b = (1 - floor)·t_b + floor, every
position masked with probability p_b (a round with nothing masked is skipped); one forward of the C copies in eval
mode under torch.no_grad; (1/C)·Σ_b Σ_{masked} CE/p_b with the CE over all V entries. nll = mean over the counted
rounds; bound = Σ nll / Σ (L - 1), with its Monte-Carlo standard error. The same work hdlm's estimator does (its
own random draws). Prints one line:
    torch_eval seconds=1.234 bound=7.123456 se=0.012345 forwards=256
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from ddit import DDiT  # noqa: E402
from safetensors_ref import read_safetensors  # noqa: E402


def main():
    case, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    with open(os.path.join(case, "config.json")) as f:
        cfg = json.load(f)
    L, C, R, floor = cfg["length"], cfg["copies"], cfg["rounds"], cfg["floor"]
    model = DDiT(cfg).float().eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in read_safetensors(os.path.join(case, "model.safetensors")).items()}
    state["rotary_emb.inv_freq"] = model.rotary_emb.inv_freq
    model.load_state_dict(state, strict=True)
    chunks = torch.from_numpy(np.fromfile(os.path.join(case, "chunks.i32"), dtype=np.int32).astype(np.int64))
    chunks = chunks.view(-1, L)
    allowed = torch.ones(L, L, dtype=torch.bool)   # full attention, as hdlm's estimator
    mask_id = cfg["vocab"] - 1
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model(chunks[:1].expand(C, L).clone(), None, allowed)   # warm-up (allocations), not timed
        total, variance, forwards = 0.0, 0.0, 0
        t0 = time.perf_counter()
        for x in chunks:
            values = []
            for _ in range(R):
                u = torch.rand((), generator=gen, dtype=torch.float64)
                t = torch.remainder(u + torch.arange(C, dtype=torch.float64) / C, 1.0)
                p = (1 - floor) * t + floor
                masked = torch.rand(C, L, generator=gen, dtype=torch.float64) < p[:, None]
                if not masked.any():
                    continue
                xt = torch.where(masked, torch.full_like(x, mask_id)[None, :], x[None, :])
                logits = model(xt, None, allowed)
                ce = -torch.gather(F.log_softmax(logits, dim=-1), -1, x[None, :, None].expand(C, L, 1))[..., 0]
                ce = ce.double()   # float32 softmax, as the reference computes it; the sums in float64
                values.append(float(((ce * masked).sum(-1) / p).sum() / C))
                forwards += 1
            total += sum(values) / len(values)
            if len(values) > 1:   # the Monte-Carlo variance of the chunk's mean, as hdlm_nelbo_chunk reports it
                variance += float(np.var(values, ddof=1)) / len(values)
        seconds = time.perf_counter() - t0
    bound, se = total / (len(chunks) * (L - 1)), variance ** 0.5 / (len(chunks) * (L - 1))
    print("torch_eval seconds=%.6f bound=%.6f se=%.6f forwards=%d" % (seconds, bound, se, forwards))


if __name__ == "__main__":
    main()
