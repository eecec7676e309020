"""The two retrievers a search runs over one collection, and the join of their fused hits with the store.

    dense(store, cid, index, xq, k, params, where)      # nearest vectors (vector_index.py), as a fusion.Ranked
    lexical(store, cid, text, k, where, where_params)   # bm25 over the chunk texts (lexical.py), as a fusion.Ranked
    hits(store, cid, fused)                             # fusion.Fused -> types.Hit with text, span, metadata

A metadata filter (filters.compile_filter's SQL condition) applies inside each retriever: the dense one searches the
allowed chunk ids only, the lexical one joins the condition into its FTS5 query, so k hits come back whenever k
matching chunks exist. Callers hold the collection's lock, so every id found has its row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.fusion import Fused, Ranked
from retrieval.lexical import match_query
from retrieval.store import Store
from retrieval.types import Hit, SearchParams
from retrieval.vector_index import VectorIndex


def dense(
    store: Store, cid: int, index: VectorIndex, xq: np.ndarray, k: int, params: SearchParams, where: Any
) -> Ranked:
    """The k nearest chunks to xq (1, d); where: None or the filter's (SQL condition, parameters)."""
    allowed = store.allowed_ids(cid, *where) if where else None
    if index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
        return Ranked.empty()
    D, I = index.search(xq, k, nprobe=params.nprobe, allowed=allowed, rerank=params.rerank)
    keep = I[0] >= 0
    sign = 1.0 if index.config.metric == "ip" else -1.0  # higher is better: negated squared L2 distances
    return Ranked(I[0][keep], sign * D[0][keep].astype(np.float64))


def lexical(store: Store, cid: int, text: str, k: int, where: str, where_params: list[Any]) -> Ranked:
    """The k chunks whose texts best match the words of `text` (bm25); empty when it holds no word."""
    match = match_query(text)
    if match is None:
        return Ranked.empty()
    rows = store.lexical_search(cid, match, k, where, where_params)
    return Ranked(rows[:, 0].astype(np.int64), rows[:, 1])


def hits(store: Store, cid: int, fused: list[Fused]) -> list[Hit]:
    """Fused chunks joined with their texts and documents, in order."""
    rows = store.chunk_rows(cid, [f.chunk_id for f in fused])
    out = []
    for f in fused:
        r = rows.get(f.chunk_id)
        assert r is not None, f"chunk {f.chunk_id} has no row"
        out.append(
            Hit(
                r["doc_id"],
                f.chunk_id,
                f.score,
                r["text"],
                r["metadata"],
                r["source"],
                r["start"],
                r["end"],
                dense_rank=f.dense_rank,
                dense_score=f.dense_score,
                lexical_rank=f.lexical_rank,
                lexical_score=f.lexical_score,
            )
        )
    return out
