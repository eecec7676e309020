"""Shared test helpers: documents written straight into a store (random vectors, no embedder), clustered test
vectors, exact ground truth and recall."""

import json
import time

import numpy as np

from retrieval.store import vectors_to_blobs

D = 8


def put(store, cid, doc_id, n_chunks, metadata=None, seed=0):
    text = " ".join(f"w{i}" for i in range(n_chunks))
    spans = [(3 * i, 3 * i + 2) for i in range(n_chunks)]
    x = np.random.default_rng(seed).standard_normal((n_chunks, D)).astype(np.float32)
    with store.write() as conn:
        return store.put_document(
            conn,
            cid,
            doc_id,
            text,
            json.dumps(metadata or {}),
            f"src/{doc_id}",
            spans,
            [text[s:e] for s, e in spans],
            vectors_to_blobs(x),
            time.time(),
        )


def new_collection(store, name="c"):
    with store.write() as conn:
        return store.insert_collection(conn, name, {"k": 1}, D, time.time())


def clustered(n, d, k=64, seed=0):
    """n vectors (n, d) float32 around k fixed centers: structure PQ and IVF can learn, deterministic per seed."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((k, d)).astype(np.float32) * 1.5
    return (centers[rng.integers(0, k, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def ground_truth(xb, xq, k, metric):
    """Exact top-k row numbers of xb for each query (nq, k)."""
    s = xq @ xb.T if metric == "ip" else -((xq[:, None] - xb[None]) ** 2).sum(-1)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def recall(I, G, k=10):
    """Mean fraction of each row of G[:, :k] found in the same row of I[:, :k]."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / len(b[:k]) for a, b in zip(I, G)]))
