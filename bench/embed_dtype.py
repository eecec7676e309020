"""The embedder in float32 against bfloat16 (issue 14): SciFact nDCG@10 of each, and ingestion chunks/s.

    python bench/embed_dtype.py                      # the full SciFact corpus (5,183 abstracts, 300 test claims)
    python bench/embed_dtype.py --docs 300 --ingest-docs 50      # a smoke run

- Quality: the bundled all-MiniLM-L6-v2 (retrieval.embedder.Embedder) embeds the corpus (title + " " + text) and the
  test claims in each dtype; exact inner-product top-10 per claim; nDCG@10 against the test qrels (the goal: bf16
  within 0.005 of float32). `--docs N` keeps the relevant documents plus the first others up to N.
- Speed: `--ingest-docs` SciFact documents ingested through a real Collection (chunking, embedding, SQLite, the
  vector index) in a fresh data directory per dtype (PQRAG_EMBED_DTYPE); chunks/s of each (the goal: bf16 >= 2x
  float32, on a CPU with AMX / avx512_bf16; elsewhere bf16 is emulated and slower, which is why it is not the
  default there).
Writes bench/out/embed_dtype.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.engine import machine, write_report  # noqa: E402
from bench.retrieval import SCIFACT, load_jsonl, ndcg_recall, scifact_qrels  # noqa: E402
from common.device import describe_dtype_choice  # noqa: E402
from retrieval import Collections, Document  # noqa: E402
from retrieval.embedder import DTYPE_ENV, get_embedder  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = ("float32", "bfloat16")


def scifact(docs: int | None) -> tuple[list[dict], list[str], list[str], dict[str, set]]:
    """(corpus rows, their texts, test query texts, qrels) with the corpus cut to `docs` (relevant ones kept)."""
    corpus = load_jsonl(os.path.join(SCIFACT, "corpus.jsonl"))
    queries, qrels = scifact_qrels()
    if docs is not None:
        relevant = set().union(*qrels.values())
        keep = [d for d in corpus if d["_id"] in relevant]
        keep += [d for d in corpus if d["_id"] not in relevant][: max(0, docs - len(keep))]
        corpus = keep
    qids = sorted(qrels, key=int)
    texts = [(d.get("title") or "") + " " + d["text"] for d in corpus]
    return corpus, texts, [queries[q] for q in qids], {q: qrels[q] for q in qids}


def quality(dtype: str, corpus, texts, queries, qrels) -> tuple[float, float]:
    """(nDCG@10, seconds to embed the corpus) with the embedder in dtype."""
    emb = get_embedder(device="cpu", dtype=dtype)
    t = time.perf_counter()
    xb = emb.embed(texts, bulk=True)
    secs = time.perf_counter() - t
    xq = emb.embed(queries)
    top = np.argsort(-(xq @ xb.T), axis=1)[:, :100]
    doc_ids = np.array([d["_id"] for d in corpus])
    return ndcg_recall(top, list(qrels), doc_ids, qrels)[0], secs


def ingestion(dtype: str, corpus: list[dict], n: int) -> tuple[int, float]:
    """(chunks, seconds) of ingesting n documents into a fresh collection with the embedder in dtype."""
    os.environ[DTYPE_ENV] = dtype
    docs = [Document(id=d["_id"], text=(d.get("title") or "") + "\n\n" + d["text"]) for d in corpus[:n]]
    with tempfile.TemporaryDirectory() as tmp, Collections(tmp) as colls:
        coll = colls.create("scifact")
        coll.ingest(docs[:4])  # warm-up: the model's first batches
        t = time.perf_counter()
        chunks = sum(r.chunk_count for r in coll.ingest(docs[4:]))
        return chunks, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, help="corpus size for nDCG (default: all 5,183)")
    ap.add_argument("--ingest-docs", type=int, default=1000, help="documents ingested per dtype")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "embed_dtype.md"))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    corpus, texts, queries, qrels = scifact(args.docs)
    rows = {}
    for dtype in DTYPES:
        ndcg, embed_s = quality(dtype, corpus, texts, queries, qrels)
        chunks, ingest_s = ingestion(dtype, corpus, args.ingest_docs + 4)
        rows[dtype] = (ndcg, len(texts) / embed_s, chunks / ingest_s)
        print(f"{dtype}: nDCG@10 {ndcg:.4f}, {len(texts) / embed_s:.1f} texts/s, {chunks / ingest_s:.1f} chunks/s")
    f32, b16 = rows["float32"], rows["bfloat16"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "".join(f"| {d} | {r[0]:.4f} | {r[1]:.1f} | {r[2]:.1f} |\n" for d, r in rows.items())
    md = f"""# Embedder dtype: float32 vs bfloat16

`python bench/embed_dtype.py {" ".join(sys.argv[1:])}`. Run: {now}.
Machine: {machine()}. Load average before the run: {load}; torch threads: {torch.get_num_threads()}.
The default here: {describe_dtype_choice("cpu")}.

SciFact: {len(texts)} documents, {len(queries)} test claims, exact top-10. Ingestion: {args.ingest_docs} documents
through a Collection (chunk, embed, SQLite, index) per dtype.

| embedder dtype | SciFact nDCG@10 | corpus texts/s (embedding only) | ingestion chunks/s |
|---|---:|---:|---:|
{table}
bf16 - float32 nDCG@10: {b16[0] - f32[0]:+.4f} (goal: within 0.005). Ingestion speed-up: {b16[2] / f32[2]:.2f}x (goal: >= 2x
on a CPU with AMX / avx512_bf16).
"""
    print(md)
    write_report(args.out, md)


if __name__ == "__main__":
    main()
