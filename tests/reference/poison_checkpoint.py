"""Makes a checkpoint hold a non-finite value that its CRC-32 still vouches for (the damage a diverged run, not a
broken disk, would leave): element 0 of GROUP/TENSOR becomes VALUE in the shard that holds it, and the index's crc32
attribute of that tensor is recomputed, so only a finiteness check can catch it. The COMPLETE marker loses its
index checksum (as a marker from before checksums were recorded), which the edited index no longer matches.

Usage: /usr/bin/python3 poison_checkpoint.py CHECKPOINT_DIR GROUP TENSOR VALUE   (VALUE: nan, inf, ...)
"""
import glob
import os
import sys
import zlib

import h5py
import numpy as np

ckpt, group, tensor, value = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
name = f"{group}/{tensor}"
for shard in sorted(glob.glob(os.path.join(ckpt, "shard_*.h5"))):
    with h5py.File(shard, "r+") as f:
        if name in f and f[name].shape[0] > 0:
            data = f[name][...]
            data.reshape(-1)[0] = value
            f[name][...] = data
            break
else:
    sys.exit(f"no shard of {ckpt} holds rows of {name}")
with h5py.File(os.path.join(ckpt, "index.h5"), "r+") as f:
    whole = np.ascontiguousarray(f[name][...], dtype="<f4")
    f[name].attrs["crc32"] = np.int64(zlib.crc32(whole.tobytes()))
marker = os.path.join(ckpt, "COMPLETE")
lines = open(marker).read().splitlines(keepends=True)
open(marker, "w").write("".join(l for l in lines if not l.startswith("index_xxh64")))
