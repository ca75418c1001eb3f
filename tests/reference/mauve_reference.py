#!/usr/bin/python3
"""Independent MAUVE reference for tests/test_mauve.c and tests/test_features.c: Debian's python3-faiss (1.7.3) and
python3-sklearn (1.2.1), following the algorithm of mauve-text 0.4.0 (docs/mauve.md).

Usage:
  mauve_reference.py fixture OUT_DIR N_P N_Q D [M_P M_Q]
                                                   write OUT_DIR/p.npy, OUT_DIR/q.npy (float64 closed-form features;
                                                   with M_P M_Q: only M_P / M_Q distinct rows, repeated, so that
                                                   k-means meets empty clusters) and their score to OUT_DIR/ref.json
  mauve_reference.py score P Q OUT_JSON            MAUVE of two feature files (.npy or HDF5 dataset 'features')
  mauve_reference.py pca X OUT_JSON                explained-variance ratios of L2-normalised X (sklearn PCA)
  mauve_reference.py check_h5 H5 OUT_JSON          what h5py sees in a feature export (shapes, dtypes, attributes)
Inputs are widened to float64 before normalisation and PCA (the C port works in double).
"""
import json
import sys

import numpy as np


def load(path):
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"\x93NUMPY"):
        return np.load(path)
    import h5py
    with h5py.File(path, "r") as f:
        return f["features"][:]


def reduce(x, explained_var=0.9):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize
    x = normalize(np.asarray(x, dtype=np.float64), norm="l2", axis=1)
    pca = PCA(n_components=None, whiten=False).fit(x)
    ratios = pca.explained_variance_ratio_
    kept = int(np.argmax(np.cumsum(ratios) >= explained_var)) + 1
    return pca.transform(x)[:, :kept].astype(np.float32), ratios, kept


def curve_area(p, q, scaling=5.0):
    from sklearn.metrics import auc

    def kl(a, b):
        if np.any((a > 0) & (b == 0)):
            return np.inf
        keep = (a > 0) & (b > 0)
        return np.sum(a[keep] * np.log(a[keep] / b[keep]))

    pts = [[0.0, np.inf]]
    for w in np.linspace(1e-6, 1 - 1e-6, 25):
        mix = w * p + (1 - w) * q
        pts.append([kl(q, mix), kl(p, mix)])
    pts.append([np.inf, 0.0])
    xy = np.exp(-scaling * np.array(pts))
    xs, ys = xy[:, 0], xy[:, 1]
    ox, oy = np.argsort(xs), np.argsort(ys)
    return 0.5 * (auc(xs[ox], ys[ox]) + auc(ys[oy], xs[oy]))


def frontier(p, q):
    total = 0.0
    for a, b in zip(p, q):
        if a == 0 and b == 0:
            continue
        if a == 0:
            total += b / 4
        elif b == 0:
            total += a / 4
        elif abs(a - b) > 1e-8:
            total += 0.25 * (a + b) - 0.5 * (a * b * (np.log(a) - np.log(b)) / (a - b))
    return 2 * total


def score(p_feat, q_feat, seed=25):
    import faiss
    n_p, n_q = len(p_feat), len(q_feat)
    k = max(2, int(round(min(n_p, n_q) / 10)))
    z, ratios, kept = reduce(np.vstack([q_feat, p_feat]))
    km = faiss.Kmeans(z.shape[1], k, niter=500, nredo=5, seed=seed + 2, update_index=True, verbose=False)
    km.train(z)
    labels = km.index.search(z, 1)[1].reshape(-1)
    qc = np.bincount(labels[:n_q], minlength=k)
    pc = np.bincount(labels[n_q:], minlength=k)
    ph, qh = pc / pc.sum(), qc / qc.sum()
    ps, qs = (pc + 0.5) / (pc + 0.5).sum(), (qc + 0.5) / (qc + 0.5).sum()
    return {"mauve": curve_area(ph, qh), "mauve_star": curve_area(ps, qs), "frontier_integral": frontier(ph, qh),
            "frontier_integral_star": frontier(ps, qs), "num_buckets": k, "pca_dim": kept,
            "p_counts": pc.tolist(), "q_counts": qc.tolist(), "objective": float(km.obj[-1]),
            "splits": int(sum(st["nsplit"] for st in km.iteration_stats))}


def fixture_repeated(n_p, n_q, d, m_p, m_q):
    # exact duplicates: initial centroids drawn twice from the same point leave clusters empty (faiss splits them)
    j = np.arange(d, dtype=np.float64)[None, :]
    ip = (np.arange(n_p) % m_p)[:, None].astype(np.float64)
    iq = (np.arange(n_q) % m_q)[:, None].astype(np.float64)
    p = np.sin(0.61 * ip + 0.8 * j) + 0.3 * np.cos(0.07 * ip * j)
    q = np.sin(0.61 * iq + 0.8 * j + 0.2) + 0.3 * np.cos(0.07 * iq * j)
    return p, q


def fixture(n_p, n_q, d):
    # a second closed form (the first, 200 x 16, is computed by the C test itself): two families of curves that
    # share most of their structure, so MAUVE lands away from 0 and 1
    i = np.arange(max(n_p, n_q), dtype=np.float64)[:, None]
    j = np.arange(d, dtype=np.float64)[None, :]
    p = np.sin(0.173 * i + 0.71 * j) + 0.3 * np.cos(0.011 * i * j + 0.5) + 0.2 * np.sin(0.029 * i)
    q = np.sin(0.173 * i + 0.71 * j + 0.25) + 0.3 * np.cos(0.013 * i * j) + 0.02 * j * np.cos(0.07 * i)
    return p[:n_p], q[:n_q]


def main():
    cmd = sys.argv[1]
    if cmd == "fixture":
        out, n_p, n_q, d = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        if len(sys.argv) > 7:
            p, q = fixture_repeated(n_p, n_q, d, int(sys.argv[6]), int(sys.argv[7]))
        else:
            p, q = fixture(n_p, n_q, d)
        np.save(f"{out}/p.npy", p)
        np.save(f"{out}/q.npy", q)
        res, out = score(p, q), f"{out}/ref.json"
    elif cmd == "score":
        res = score(load(sys.argv[2]), load(sys.argv[3]))
        out = sys.argv[4]
    elif cmd == "pca":
        _, ratios, kept = reduce(load(sys.argv[2]))
        res, out = {"ratios": ratios.tolist(), "kept": kept}, sys.argv[3]
    elif cmd == "check_h5":
        import h5py
        with h5py.File(sys.argv[2], "r") as f:
            res = {name: {"shape": list(f[name].shape), "dtype": str(f[name].dtype)} for name in f}
            res["attrs"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            res["features_sum"] = float(np.sum(f["features"][:].astype(np.float64)))
            if "texts" in f:
                res["texts"] = [t.decode() if isinstance(t, bytes) else t for t in f["texts"][:]]
            if "token_ids" in f:
                res["token_ids"] = f["token_ids"][:].tolist()
        out = sys.argv[3]
    else:
        raise SystemExit(f"unknown command {cmd}")
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
