"""Single-query latency of the whole Search RPC (embedding included), p50/p99.

Starts a real server (subprocess, fresh data dir), ingests SciFact documents (or the bundled Python
docs when ../shared/data is missing), then sends queries one at a time over gRPC. As the peer in the
same run it times the same work in-process: embedding the query with sentence-transformers and an
exact faiss search over the same vectors, so the ratio shows what the RPC, the store and the index
add on top of the embedder.

    python bench/search_rpc.py [--docs 2000] [--queries 300] [--json bench/out/search_rpc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.client import Client  # noqa: E402
from service.launcher import start_server_process  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def load_corpus(n_docs: int) -> tuple[list[dict], list[str]]:
    if (SCIFACT / "corpus.jsonl").exists():
        docs = []
        with open(SCIFACT / "corpus.jsonl") as f:
            for line in f:
                r = json.loads(line)
                docs.append({"id": r["_id"], "text": (r["title"] + "\n" + r["text"]).strip(), "source": "scifact"})
                if len(docs) >= n_docs:
                    break
        with open(SCIFACT / "queries.jsonl") as f:
            queries = [json.loads(line)["text"] for line in f]
        return docs, queries
    from retrieval.corpora import python_docs

    docs = list(python_docs())[:n_docs]
    queries = [f"What does the {d['metadata']['topic']} statement do?" for d in docs]
    return docs, queries


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "search_rpc.json"))
    args = ap.parse_args()

    docs, queries = load_corpus(args.docs)
    queries = (queries * (1 + args.queries // max(len(queries), 1)))[: args.queries]
    data_dir = tempfile.mkdtemp(prefix="pqrag-bench-")
    proc, target = start_server_process(data_dir, extra_args=("--no-generator",))
    try:
        with Client(target, timeout=3600) as c:
            c.wait_ready()
            c.create_collection("bench")
            t0 = time.perf_counter()
            n_chunks = sum(a.chunk_count for a in c.ingest("bench", docs))
            ingest_s = time.perf_counter() - t0
            info = c.get_collection("bench")
            for q in queries[:10]:  # warm-up
                c.search_raw("bench", q, k=10)
            rpc_ms, server_ms, embed_ms, index_ms = [], [], [], []
            for q in queries:
                t = time.perf_counter()
                resp = c.search_raw("bench", q, k=10)
                rpc_ms.append((time.perf_counter() - t) * 1e3)
                server_ms.append(resp.embed_ms + resp.search_ms)
                embed_ms.append(resp.embed_ms)
                index_ms.append(resp.search_ms)  # index search + the SQLite join of texts and metadata
    finally:
        proc.terminate()
        proc.wait()

    # Peer in the same run: the embedder alone plus exact faiss search over the same chunk texts.
    import faiss
    import torch

    from retrieval.embedder import get_embedder

    torch.set_num_threads(os.cpu_count() or 1)
    emb = get_embedder()
    xb = emb.embed([d["text"] for d in docs])
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    for q in queries[:10]:
        index.search(emb.embed([q]), 10)
    peer_ms, peer_embed_ms = [], []
    for q in queries:
        t = time.perf_counter()
        xq = emb.embed([q])
        t_embed = time.perf_counter()
        index.search(xq, 10)
        peer_ms.append((time.perf_counter() - t) * 1e3)
        peer_embed_ms.append((t_embed - t) * 1e3)

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "docs": len(docs),
        "chunks": n_chunks,
        "index_state": info.index_state,
        "ingest_s": round(ingest_s, 2),
        "chunks_per_s": round(n_chunks / ingest_s, 1),
        "search_rpc": percentiles(rpc_ms),
        "server_side": percentiles(server_ms),
        "server_embed": percentiles(embed_ms),
        "server_search_and_join": percentiles(index_ms),
        "peer_embed_plus_faiss_flat": percentiles(peer_ms),
        "peer_embed": percentiles(peer_embed_ms),
    }
    result["ratio_p50_rpc_over_peer"] = result["search_rpc"]["p50_ms"] / result["peer_embed_plus_faiss_flat"]["p50_ms"]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print("| what | p50 ms | p99 ms |\n|---|---|---|")
    for key in (
        "search_rpc",
        "server_side",
        "server_embed",
        "server_search_and_join",
        "peer_embed_plus_faiss_flat",
        "peer_embed",
    ):
        print(f"| {key} | {result[key]['p50_ms']:.1f} | {result[key]['p99_ms']:.1f} |")
    print(
        f"docs {len(docs)}, chunks {n_chunks}, index {info.index_state}, ingest {result['chunks_per_s']} chunks/s; "
        f"RPC/peer p50 ratio {result['ratio_p50_rpc_over_peer']:.2f}"
    )


if __name__ == "__main__":
    main()
