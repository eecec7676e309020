"""Hybrid retrieval benchmark: dense vs lexical (SQLite FTS5 bm25) vs hybrid (fused), through the real server.

    python bench/hybrid.py                          # SciFact + SQuAD quality, then Search RPC latency per mode
    python bench/hybrid.py --tune                   # SciFact TRAIN split: fusion and query construction settings
    python bench/hybrid.py --only latency --latency-queries 300
    python bench/hybrid.py --data-dir /tmp/hyb      # keep the ingested collections for the next run

A real `pqrag serve --no-generator` subprocess on a data dir (fresh unless --data-dir), collections with the
defaults (chunking 200/40 word pieces, the self-tuning index, default_search_mode hybrid), the bundled MiniLM.
Every number comes from Search RPCs, except --tune's grid, which fuses the dense and lexical rankings the server
returned with the server's own fusion code (retrieval.fusion.fuse) offline, and its stop-word comparison, which runs
the store's lexical SQL on an in-memory FTS5 copy of the same chunks.

* SciFact (../shared/data/scifact; BEIR layout): 5,183 abstracts ingested as "title\\n\\ntext"; 300 test claims
  (qrels/test.tsv). A document ranks where its best chunk does. nDCG@10 (binary relevance, BEIR's formula) over
  the first 10 distinct documents of a k=100 search (a k=10 search returns chunks, often fewer than 10 documents);
  recall@100 from a k=300 search (the first 100 distinct documents). Tuning uses the 809 TRAIN claims
  (qrels/train.tsv) only.
* SQuAD v1.1 dev (../shared/data/squad-v1.1-dev): 2,067 paragraphs as "title\\n\\ntext"; each question's paragraph
  is the one it was written from: top-1 / top-5 accuracy (first 1 / 5 distinct paragraphs of a k=20 search).
* Latency: single Search RPCs (k=10) over the SciFact collection, the three modes interleaved query by query after a
  warm-up; p50 / p99 of the client's round trip and the server's embed / search split; hybrid / dense ratios.

Writes bench/out/hybrid.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retrieval.fusion import FusionParams, Ranked, fuse  # noqa: E402
from retrieval.lexical import match_query  # noqa: E402
from retrieval.schema import FTS_DDL  # noqa: E402
from service.client import Client  # noqa: E402
from service.launcher import start_server_process  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SCIFACT, SQUAD = DATA / "scifact", DATA / "squad-v1.1-dev"
MODES = ("dense", "lexical", "hybrid")
NDCG_DEPTH = 100  # chunks searched to rank 10 distinct documents


def load_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_qrels(path: Path) -> dict[str, set[str]]:
    qrels: dict[str, set[str]] = {}
    with open(path) as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, set()).add(did)
    return qrels


def corpus_docs(path: Path) -> list[dict]:
    return [
        {"id": d["_id"], "text": ((d.get("title") or "") + "\n\n" + d["text"]).strip(), "source": path.parent.name}
        for d in load_jsonl(path / "corpus.jsonl")
    ]


# --- server and collections ------------------------------------------------------------------------------------


def ensure_collection(c: Client, name: str, docs: list[dict], chunk_tokens: int | None) -> dict:
    """The collection holding `docs`, ingested unless a kept data dir already has it; waits for its index training."""
    names = {x.name for x in c.list_collections()}
    t0 = time.perf_counter()
    if name in names and c.get_collection(name).document_count == len(docs):
        ingest_s, chunks = None, c.get_collection(name).chunk_count
    else:
        if name in names:
            c.delete_collection(name)
        c.create_collection(name, **({"chunk_tokens": chunk_tokens} if chunk_tokens else {}))
        chunks = sum(a.chunk_count for a in c.ingest(name, docs))
        ingest_s = time.perf_counter() - t0
        print(f"  ingested {len(docs)} documents ({chunks} chunks) into {name} in {ingest_s:.0f}s", flush=True)
    while (info := c.get_collection(name)).index_training:
        time.sleep(1.0)
    t = info.tuning
    tuning = None
    if info.HasField("tuning"):
        p = t.params
        tuning = {
            "params": f"{p.kind} m={p.m} nbits={p.nbits}"
            + (f" nlist={p.nlist} nprobe={p.nprobe}" if p.kind == "ivfpq" else "")
            + f" rerank_factor={p.rerank_factor}"
            if t.HasField("params")
            else None,
            "recall": round(t.recall, 4),
            "bytes_per_vector": round(t.bytes_per_vector, 1),
        }
    print(f"  {name}: {info.chunk_count} chunks, index {info.index_state}, tuning {tuning}", flush=True)
    return {
        "documents": len(docs),
        "chunks": chunks,
        "ingest_s": ingest_s,
        "index_state": info.index_state,
        **(tuning or {}),
    }


def ranked_docs(hits: list[dict], n: int) -> list[str]:
    """The first n distinct documents of a chunk ranking (a document ranks where its best chunk does)."""
    out: list[str] = []
    for h in hits:
        if h["doc_id"] not in out:
            out.append(h["doc_id"])
            if len(out) == n:
                break
    return out


def ndcg10(docs: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / np.log2(r + 2) for r, d in enumerate(docs[:10]) if d in relevant)
    return dcg / sum(1 / np.log2(r + 2) for r in range(min(len(relevant), 10)))


def recall_at(docs: list[str], relevant: set[str], n: int) -> float:
    return len(relevant & set(docs[:n])) / len(relevant)


# --- SciFact ---------------------------------------------------------------------------------------------------


def scifact_queries(split: str) -> tuple[list[str], dict[str, str], dict[str, set[str]]]:
    qrels = load_qrels(SCIFACT / "qrels" / f"{split}.tsv")
    text = {q["_id"]: q["text"] for q in load_jsonl(SCIFACT / "queries.jsonl")}
    return sorted(qrels, key=int), text, qrels


def run_scifact(c: Client, fusion: dict | None) -> list[dict]:
    qids, text, qrels = scifact_queries("test")
    rows = []
    for mode in MODES:
        t0 = time.perf_counter()
        nd = [
            ndcg10(ranked_docs(c.search("scifact", text[q], k=NDCG_DEPTH, mode=mode, fusion=fusion), 10), qrels[q])
            for q in qids
        ]
        rc = [
            recall_at(ranked_docs(c.search("scifact", text[q], k=300, mode=mode, fusion=fusion), 100), qrels[q], 100)
            for q in qids
        ]
        rows.append({"mode": mode, "ndcg@10": round(float(np.mean(nd)), 4), "recall@100": round(float(np.mean(rc)), 4)})
        print(
            f"  SciFact test {mode:8} nDCG@10 {rows[-1]['ndcg@10']:.4f}  recall@100 {rows[-1]['recall@100']:.4f}"
            f"  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return rows


def tune_scifact(c: Client) -> dict:
    """On the TRAIN claims: the fusion grid over the rankings the server returns, and stop words on / off."""
    qids, text, qrels = scifact_queries("train")
    depth = 200
    runs = {m: {} for m in ("dense", "lexical")}
    for mode in runs:
        for q in qids:
            hits = c.search("scifact", text[q], k=depth, mode=mode)
            score = "dense_score" if mode == "dense" else "lexical_score"
            runs[mode][q] = (
                hits,
                Ranked(np.array([h["chunk_id"] for h in hits], np.int64), np.array([h[score] for h in hits])),
            )
    doc_of = {h["chunk_id"]: h["doc_id"] for m in runs.values() for hits, _ in m.values() for h in hits}

    def ndcg_of(params: FusionParams) -> float:
        out = []
        for q in qids:
            d, l = runs["dense"][q][1], runs["lexical"][q][1]
            cut = params.candidates
            fused = fuse(Ranked(d.ids[:cut], d.scores[:cut]), Ranked(l.ids[:cut], l.scores[:cut]), NDCG_DEPTH, params)
            out.append(ndcg10(ranked_docs([{"doc_id": doc_of[f.chunk_id]} for f in fused], 10), qrels[q]))
        return float(np.mean(out))

    single = {m: float(np.mean([ndcg10(ranked_docs(runs[m][q][0], 10), qrels[q]) for q in qids])) for m in runs}
    grid = []
    for rrf_k, cand in itertools.product((5, 10, 20, 40, 60, 100), (20, 50, 100, 200)):
        grid.append(
            {
                "rrf_k": rrf_k,
                "alpha": None,
                "candidates": cand,
                "ndcg@10": ndcg_of(FusionParams(rrf_k, candidates=cand)),
            }
        )
    for alpha, cand in itertools.product((0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), (20, 50, 100, 200)):
        grid.append(
            {"rrf_k": None, "alpha": alpha, "candidates": cand, "ndcg@10": ndcg_of(FusionParams(None, alpha, cand))}
        )
    grid.sort(key=lambda r: -r["ndcg@10"])
    print(f"  SciFact train ({len(qids)} claims): dense {single['dense']:.4f}, lexical {single['lexical']:.4f}")
    print("  | rrf_k | alpha | candidates | nDCG@10 |\n  |---:|---:|---:|---:|")
    for r in grid[:12]:
        print(f"  | {r['rrf_k']} | {r['alpha']} | {r['candidates']} | {r['ndcg@10']:.4f} |")
    default = FusionParams()
    at_default = ndcg_of(default)
    print(f"  default fusion {default}: {at_default:.4f}", flush=True)
    return {
        "train_single": single,
        "grid": grid,
        "default_fusion_ndcg@10": at_default,
        "stop_words": stop_word_check(c, qids, text, qrels),
    }


def stop_word_check(c: Client, qids: list[str], text: dict, qrels: dict) -> dict:
    """Lexical nDCG@10 on the train claims with and without stop words, on an in-memory FTS5 copy of the chunks (the
    store's DDL and bm25 query), plus the mean number of chunks the OR query matches (the work it causes)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, doc_id TEXT, text TEXT)")
    conn.execute(FTS_DDL.format(table="f"))
    for d in corpus_docs(SCIFACT):
        doc = c.get_document("scifact", d["id"], include_chunks=True)
        conn.executemany("INSERT INTO chunks VALUES (?, ?, ?)", [(ch.id, d["id"], ch.text) for ch in doc.chunks])
    conn.execute("INSERT INTO f (rowid, text) SELECT id, text FROM chunks")
    out = {}
    for stop in (True, False):
        nd, matched = [], []
        for q in qids:
            m = match_query(text[q], stop_words=stop)
            rows = conn.execute(
                "SELECT c.doc_id FROM f JOIN chunks c ON c.id = f.rowid WHERE f MATCH ? ORDER BY bm25(f) LIMIT 50", (m,)
            ).fetchall()
            nd.append(ndcg10(ranked_docs([{"doc_id": r[0]} for r in rows], 10), qrels[q]))
            matched.append(conn.execute("SELECT count(*) FROM f WHERE f MATCH ?", (m,)).fetchone()[0])
        out["with_stop_words_dropped" if stop else "all_words"] = {
            "ndcg@10": round(float(np.mean(nd)), 4),
            "chunks_matched": round(float(np.mean(matched)), 1),
        }
    print(f"  lexical query construction (train): {out}", flush=True)
    return out


# --- SQuAD -----------------------------------------------------------------------------------------------------


def run_squad(c: Client, n_queries: int | None, fusion: dict | None) -> list[dict]:
    qrels = load_qrels(SQUAD / "qrels" / "test.tsv")
    queries = [q for q in load_jsonl(SQUAD / "queries.jsonl") if q["_id"] in qrels]
    if n_queries:
        queries = queries[:: max(1, len(queries) // n_queries)][:n_queries]
    rows = []
    for mode in MODES:
        t0 = time.perf_counter()
        top1 = top5 = 0
        for q in queries:
            docs = ranked_docs(c.search("squad", q["text"], k=20, mode=mode, fusion=fusion), 5)
            gold = qrels[q["_id"]]
            top1 += bool(docs[:1] and docs[0] in gold)
            top5 += bool(gold & set(docs))
        rows.append(
            {
                "mode": mode,
                "queries": len(queries),
                "top1": round(top1 / len(queries), 4),
                "top5": round(top5 / len(queries), 4),
            }
        )
        print(
            f"  SQuAD {mode:8} top-1 {rows[-1]['top1']:.4f}  top-5 {rows[-1]['top5']:.4f}"
            f"  ({len(queries)} questions, {time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return rows


# --- latency ---------------------------------------------------------------------------------------------------


def run_latency(c: Client, n: int) -> dict:
    qids, text, _ = scifact_queries("test")
    queries = [text[q] for q in qids]
    queries = (queries * (1 + n // len(queries)))[:n]
    for q in queries[:20]:  # warm-up
        for mode in MODES:
            c.search_raw("scifact", q, k=10, mode=mode)
    ms = {m: {"rpc": [], "embed": [], "search": []} for m in MODES}
    for i, q in enumerate(queries):
        for mode in MODES[i % 3 :] + MODES[: i % 3]:  # rotate the order: no mode always runs first
            t = time.perf_counter()
            resp = c.search_raw("scifact", q, k=10, mode=mode)
            ms[mode]["rpc"].append((time.perf_counter() - t) * 1e3)
            ms[mode]["embed"].append(resp.embed_ms)
            ms[mode]["search"].append(resp.search_ms)
    out = {
        m: {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} for k, v in d.items()}
        for m, d in ms.items()
    }
    for p in ("p50", "p99"):
        out[f"hybrid_over_dense_{p}"] = out["hybrid"]["rpc"][p] / out["dense"]["rpc"][p]
    print(
        "  | mode | RPC p50 | RPC p99 | embed p50 | search+join p50 | search+join p99 |\n  |---|---:|---:|---:|---:|---:|"
    )
    for m in MODES:
        r = out[m]
        print(
            f"  | {m} | {r['rpc']['p50']:.1f} | {r['rpc']['p99']:.1f} | {r['embed']['p50']:.1f} | "
            f"{r['search']['p50']:.2f} | {r['search']['p99']:.2f} |"
        )
    print(
        f"  hybrid / dense: p50 {out['hybrid_over_dense_p50']:.2f}, p99 {out['hybrid_over_dense_p99']:.2f}", flush=True
    )
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="scifact,squad,latency", help="comma-separated: scifact, squad, latency")
    ap.add_argument("--tune", action="store_true", help="SciFact train-split tuning (fusion grid, stop words) first")
    ap.add_argument("--data-dir", help="keep the server's data dir here (reused when it holds the collections)")
    ap.add_argument("--chunk-tokens", type=int, help="SciFact collection's chunk size (default: the server's)")
    ap.add_argument("--squad-queries", type=int, help="a deterministic subset of the 10,570 questions")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--rrf-k", type=int)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--candidates", type=int)
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "hybrid.json"))
    args = ap.parse_args(argv)
    parts = set(args.only.split(","))
    fusion = {k: getattr(args, k) for k in ("rrf_k", "alpha", "candidates") if getattr(args, k) is not None} or None
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="pqrag-hybrid-")
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "fusion": fusion or "server default",
    }
    t0 = time.perf_counter()
    proc, target = start_server_process(data_dir, extra_args=("--no-generator",))
    try:
        with Client(target, timeout=3600) as c:
            c.wait_ready()
            if parts & {"scifact", "latency"} or args.tune:
                result["scifact_collection"] = ensure_collection(c, "scifact", corpus_docs(SCIFACT), args.chunk_tokens)
            if args.tune:
                result["tuning"] = tune_scifact(c)
            if "scifact" in parts:
                result["scifact"] = run_scifact(c, fusion)
            if "squad" in parts:
                result["squad_collection"] = ensure_collection(c, "squad", corpus_docs(SQUAD), None)
                result["squad"] = run_squad(c, args.squad_queries, fusion)
            if "latency" in parts:
                result["latency"] = run_latency(c, args.latency_queries)
    finally:
        proc.terminate()
        proc.wait()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"total {result['total_s']}s; wrote {args.json}")


if __name__ == "__main__":
    main()
