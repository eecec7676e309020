"""The command line's retrieval flags and views, apart from cli.py: the `collections` actions (an index's settings at
`collections create`, the settings `collections update` changes), a search's mode and fusion (`search`, `ask`,
`chat`), and the text form of hits and of a collection's tuning report.

    add_collection_actions(subparsers)  the parsers of `pqrag collections create|get|delete|list|update`
    add_index_flags(create_parser)  ->  index_spec(args): Client.create_collection keyword arguments
    update_settings(args)               Client.update_collection keyword arguments (`collections update`)
    add_mode_flags(parser)          ->  mode_options(args): {"mode", "fusion"} for search_raw / ask_stream / chat_stream
    print_hits(resp)                    `pqrag search` without --json (each hit's dense and lexical ranks)
    print_collection(out)               `pqrag collections get` without --json (settings, then the tuning report)
"""

from __future__ import annotations

import argparse
from typing import Any

from service.cli_options import GROUNDINGS

MODES = ("dense", "lexical", "hybrid")


READER_THRESHOLD_HELP = (
    "grounding extract: answer only when the reader's best span beats no-answer by this margin, in [-100, 100] "
    "(default: the reader's own null_threshold, set on its training data; calibrate one on a few of the collection's "
    "labelled questions with python -m rag.calibrate_reader)"
)
MIN_SIMILARITY_HELP = (
    "answer only when the collection's nearest chunk to the question has a dense score (the index's: inner product, "
    "or -squared L2) of at least this, else decline without reading or generating; in [-1e6, 1e6] (default: no cut)"
)


def add_collection_actions(csub: Any) -> None:
    """`pqrag collections create|get|delete|list|update` on `csub`, the collections command's subparsers."""
    c = csub.add_parser("create")
    c.add_argument("name")
    c.add_argument(
        "--embedder", help="embedder model name (default all-MiniLM-L6-v2; others: the server's --models-dir)"
    )
    add_index_flags(c)
    for action in ("get", "delete"):
        csub.add_parser(action).add_argument("name")
    csub.add_parser("list")
    u = csub.add_parser(
        "update",
        help="change the settings that leave the stored vectors as they are",
        description="Change a collection's search mode, grounding, reader threshold or minimum similarity; the "
        "settings not given stay. "
        "The embedder, index and chunking are fixed at create: changing them takes a new collection.",
    )
    u.add_argument("name")
    u.add_argument(
        "--search-mode", "--mode", dest="search_mode", choices=MODES, help="what a search naming no mode does"
    )
    g = u.add_mutually_exclusive_group()
    g.add_argument("--grounding", choices=GROUNDINGS, help="answers' decoding")
    g.add_argument("--no-grounding", action="store_true", help="back to the server's default grounding")
    r = u.add_mutually_exclusive_group()
    r.add_argument("--reader-threshold", type=float, metavar="X", help=READER_THRESHOLD_HELP)
    r.add_argument("--no-reader-threshold", action="store_true", help="back to the reader's own null_threshold")
    sim = u.add_mutually_exclusive_group()
    sim.add_argument("--min-similarity", type=float, metavar="X", help=MIN_SIMILARITY_HELP)
    sim.add_argument("--no-min-similarity", action="store_true", help="back to no cut on the nearest chunk's score")


def update_settings(args: argparse.Namespace) -> dict[str, Any]:
    """`collections update`'s flags as Client.update_collection keyword arguments; none given is an error."""
    clear = [k for k in ("grounding", "reader_threshold", "min_similarity") if getattr(args, f"no_{k}")]
    given = {k: getattr(args, k) for k in ("search_mode", "grounding", "reader_threshold", "min_similarity")}
    if not clear and all(v is None for v in given.values()):
        raise SystemExit(
            "pqrag collections update: nothing to change; give --search-mode, --grounding / --no-grounding, "
            "--reader-threshold / --no-reader-threshold or --min-similarity / --no-min-similarity"
        )
    return {**given, "clear": clear}


def print_updated(out: dict[str, Any]) -> None:
    """`pqrag collections update` without --json: the settings it may change, as they are now."""
    grounding = out["default_grounding"] or "the server's"
    threshold = "the reader's own" if out["reader_threshold"] is None else out["reader_threshold"]
    similarity = "none" if out["min_similarity"] is None else out["min_similarity"]
    mode = out["default_search_mode"] or "hybrid"
    print(
        f"updated collection {out['name']}: search mode {mode}, grounding {grounding}, reader threshold {threshold}, "
        f"min similarity {similarity}"
    )


def add_index_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", dest="search_mode", choices=MODES, help="what a search naming no mode does (hybrid)")
    p.add_argument("--grounding", choices=GROUNDINGS, help="answers' decoding (default: the server's)")
    p.add_argument("--reader-threshold", type=float, metavar="X", help=READER_THRESHOLD_HELP)
    p.add_argument("--min-similarity", type=float, metavar="X", help=MIN_SIMILARITY_HELP)
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
    settings = ("search_mode", "grounding", "reader_threshold", "min_similarity")
    spec = {k: getattr(args, k) for k in (*names, "metric", "backend", *settings)}
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
        if k == "min_similarity" and v is None:
            v = "unset (no cut)"
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
