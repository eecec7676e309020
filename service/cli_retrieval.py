"""The command line's retrieval flags and views, apart from cli.py: an index's settings at `collections create`, a
search's mode and fusion (`search`, `ask`, `chat`), and the text form of hits and of a collection's tuning report.

    add_index_flags(create_parser)  ->  index_spec(args): Client.create_collection keyword arguments
    add_mode_flags(parser)          ->  mode_options(args): {"mode", "fusion"} for search_raw / ask_stream / chat_stream
    print_hits(resp)                    `pqrag search` without --json (each hit's dense and lexical ranks)
    print_collection(out)               `pqrag collections get` without --json (settings, then the tuning report)
"""

from __future__ import annotations

import argparse
from typing import Any

from service.cli_options import GROUNDINGS

MODES = ("dense", "lexical", "hybrid")


def add_index_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", dest="search_mode", choices=MODES, help="what a search naming no mode does (hybrid)")
    p.add_argument("--grounding", choices=GROUNDINGS, help="answers' decoding (default: the server's)")
    p.add_argument(
        "--reader-threshold",
        type=float,
        metavar="X",
        help="grounding extract: answer only when the reader's best span beats no-answer by this margin, in "
        "[-100, 100] (default: the reader's own null_threshold, set on its training data; calibrate one on a few of "
        "the collection's labelled questions with python -m rag.calibrate_reader)",
    )
    g = p.add_argument_group("index", "unset values are chosen by measurement each time the index trains")
    g.add_argument("--recall-target", type=float, help="recall@10 the index must keep, in (0, 1] (default 0.95)")
    g.add_argument("--kind", choices=["ivfpq", "pq", "flat"], help="pin the index kind (flat: always exact)")
    g.add_argument("--m", type=int, help="pin the sub-quantizers per vector (must divide the dimension)")
    g.add_argument("--nbits", type=int, help="pin the bits per code (1..8)")
    g.add_argument("--nlist", type=int, help="pin the IVF lists")
    g.add_argument("--nprobe", type=int, help="pin the lists probed per query")
    g.add_argument("--rerank-factor", type=int, help="pin the PQ candidates re-ranked per hit")
    g.add_argument("--min-train-size", type=int, help="vectors before the index first trains (default 512)")
    g.add_argument("--metric", choices=["ip", "l2"])
    g.add_argument("--backend", choices=["torch", "faiss"])
    g.add_argument("--no-rerank", action="store_true", help="skip exact re-ranking of PQ candidates")


def index_spec(args: argparse.Namespace) -> dict[str, Any]:
    names = ("recall_target", "kind", "m", "nbits", "nlist", "nprobe", "rerank_factor", "min_train_size")
    spec = {k: getattr(args, k) for k in (*names, "metric", "backend", "search_mode", "grounding", "reader_threshold")}
    if args.no_rerank:
        spec["rerank"] = False
    return spec


def add_mode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=MODES, help="dense, lexical (bm25) or hybrid (default: the collection's)")
    p.add_argument("--rrf-k", type=int, help="hybrid: reciprocal rank fusion with this k (60 is usual) instead")
    p.add_argument("--alpha", type=float, help="hybrid: the dense side's weight in the fusion of scores (default 0.4)")
    p.add_argument("--candidates", type=int, help="hybrid: chunks each retriever fetches (default 100)")


def mode_options(args: argparse.Namespace) -> dict[str, Any]:
    fusion = {k: getattr(args, k) for k in ("rrf_k", "alpha", "candidates") if getattr(args, k) is not None}
    return {"mode": args.mode, "fusion": fusion or None}


def print_hits(hits: list[dict[str, Any]]) -> None:
    for i, h in enumerate(hits, 1):
        snippet = " ".join(h["text"].split())
        if len(snippet) > 240:
            snippet = snippet[:237] + "..."
        ranks = [f"{side} #{h[side + '_rank']}" for side in ("dense", "lexical") if h[side + "_rank"] is not None]
        print(f"[{i}] {h['score']:.4f}  {h['doc_id']}  (chunk {h['chunk_id']}, chars {h['start']}-{h['end']}; ", end="")
        print(f"{', '.join(ranks) or 'no ranks'})")
        print(f"    {snippet}")


def print_collection(out: dict[str, Any]) -> None:
    tuning = out.pop("tuning")
    for k, v in out.items():
        if k == "reader_threshold" and v is None:
            v = "unset (the reader's own)"
        print(f"{k:20} {v}")
    if tuning is None:
        print(f"{'tuning':20} none yet (exact search until the index first trains)")
        return
    p = tuning["params"]
    chosen = " ".join(f"{k}={v}" for k, v in p.items()) if p else "none qualified: " + tuning["reason"]
    met = "met" if tuning["met_target"] else "not met"
    print(f"{'tuned index':20} {chosen}")
    print(
        f"{'measured recall@10':20} {tuning['recall']:.3f} ± {tuning['recall_stderr']:.3f} (target "
        f"{tuning['recall_target']}: {met}) on {tuning['queries']} held-out vectors of {tuning['trained_vectors']}"
    )
    print(f"{'bytes per vector':20} {tuning['bytes_per_vector']} (+ the float16 copy kept for re-ranking)")
    print(f"{'training':20} {tuning['settings_trained']} settings trained in {tuning['train_seconds']} s")
