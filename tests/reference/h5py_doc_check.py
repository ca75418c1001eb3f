#!/usr/bin/python3
"""Runs the h5py lines of docs/checkpoint-format.md (the ```python block after the line "<!-- run by
tests/test_convert.c -->") on a real checkpoint and checks what they give against an hdlm-convert export of it.

usage: h5py_doc_check.py DOCS.md CKPT_DIR EXPORT.safetensors
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_ref import read_safetensors  # noqa: E402

DOC_PATH = "runs/default/checkpoints/step_000012000"


def doc_block(docs):
    text = open(docs).read()
    marker = text.index("<!-- run by tests/test_convert.c -->")
    start = text.index("```python\n", marker) + len("```python\n")
    return text[start:text.index("```", start)]


def main(docs, ckpt, export):
    code = doc_block(docs)
    assert DOC_PATH in code, "the documented lines no longer name " + DOC_PATH
    scope = {}
    exec(code.replace(DOC_PATH, ckpt), scope)
    want = read_safetensors(export)
    state = scope["state"]
    assert sorted(state) == sorted(want), "tensor names differ: %s" % sorted(set(state) ^ set(want))
    for name, a in want.items():
        assert state[name].dtype == np.float32 and state[name].shape == a.shape, name
        assert np.array_equal(state[name], a), name
    assert "hidden_size:" in scope["config"], "config text"
    assert scope["step"] == int(ckpt.rstrip("/")[-9:]), "step"
    print("the documented h5py lines read %d tensors equal to the export" % len(state))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
