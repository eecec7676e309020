"""A collection: documents chunked, embedded, stored and indexed, and searched with metadata filters.

    colls = Collections("data")                          # retrieval.catalog: every collection of a data dir
    docs = colls.create("notes", CollectionConfig())     # default embedder all-MiniLM-L6-v2, IVF-PQ index
    docs.ingest([Document(id=None, text="...", metadata={"lang": "en"})])
    hits = docs.search("what is ...?", k=5, filter={"lang": "en"})
    colls.close()                                        # snapshots every index

SQLite (store.py) is the source of truth. An ingestion validates, chunks and embeds every document first,
then commits them (durably) before it touches the index, so a crash at any point loses nothing acknowledged;
the vector index (vector_index.VectorIndex) is derived from the stored float16 vectors and brought back in
step on open (recovery.py). The embedder is only loaded when the collection first needs to embed.

User input is checked here, once, as it enters (validation.py, common.checks); the layers below assert.

Thread safety: every public method may be called from any thread. Each collection has a lock that guards its
index (held for the SQLite write and the index update of an ingestion, and for a search; never while
embedding).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InvalidArgumentError, NotFoundError
from retrieval import recovery
from retrieval.chunker import Chunker, ChunkerConfig
from retrieval.embedder import Embedder, get_embedder
from retrieval.filters import compile_filter
from retrieval.store import Store, blobs_to_vectors, vectors_to_blobs
from retrieval.types import Document, Hit, IngestResult, SearchParams, SearchResult, StoredChunk, StoredDocument
from retrieval.validation import (
    as_document,
    check_document,
    check_document_id,
    check_query_text,
    check_query_vector,
    check_search,
)
from retrieval.vector_index import IndexConfig

__all__ = ["Collection", "CollectionConfig"]

log = logging.getLogger("pqrag.collection")


# --- configuration ---------------------------------------------------------------------------------


@dataclass
class CollectionConfig:
    """How a collection embeds, chunks and indexes. Stored in SQLite with the collection.

    embedder: a local sentence-transformers model directory; None = the bundled all-MiniLM-L6-v2.
    dimension: the embedding dimension; filled in from the embedder at create (a given value
      must match it).
    index: the vector index (kind, m, nbits, nlist, nprobe, metric, backend, rerank...). The
      metric ("ip" on normalised vectors by default, or "l2") lives there; `metric` reads it.
    chunker: chunk and overlap sizes in the embedder's word pieces.
    """

    embedder: str | None = None
    dimension: int | None = None
    index: IndexConfig = field(default_factory=IndexConfig)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)

    @property
    def metric(self) -> str:
        return self.index.metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "dimension": self.dimension,
            "index": self.index.to_dict(),
            "chunker": dataclasses.asdict(self.chunker),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CollectionConfig:
        names = {f.name for f in dataclasses.fields(ChunkerConfig)}
        chunker = ChunkerConfig(**{k: v for k, v in (d.get("chunker") or {}).items() if k in names})
        return cls(
            embedder=d.get("embedder"),
            dimension=d.get("dimension"),
            index=IndexConfig.from_dict(d.get("index") or {}),
            chunker=chunker,
        )


@dataclass
class _Prepared:
    """A validated, chunked document, ready to be embedded and written."""

    doc_id: str
    text: str
    metadata_json: str
    source: str
    spans: list[tuple[int, int]]
    chunk_texts: list[str]


# --- one collection ------------------------------------------------------------------------------


class Collection:
    """A named set of documents with its embedder, chunker and vector index. Made by `Collections`.

    row: the collection's row of the store (cid, name, config, dimension, created_at). embedder: one already
    loaded for this collection (Collections.create has it), else it is loaded on first use.
    """

    def __init__(
        self,
        store: Store,
        row: Mapping[str, Any],
        index_dir: Path,
        device: str | None,
        snapshot_every: int,
        embedder: Embedder | None = None,
    ):
        self._store = store
        self.cid: int = row["cid"]
        self.name: str = row["name"]
        self.config = CollectionConfig.from_dict(row["config"])
        self.dimension: int = int(row["dimension"])
        self.created_at: float = float(row["created_at"])
        self.index_dir = index_dir
        self._device = device
        self._snapshot_every = snapshot_every
        self._lock = threading.RLock()
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._closed = False
        # restored_from: how the index came up when opened, "snapshot" (plus replayed changes) or "store" (rebuilt)
        self._index, self.restored_from = recovery.restore(
            store, self.cid, self.dimension, self.config.index, index_dir
        )

    def snapshot(self) -> None:
        """Save the index now (it is also saved periodically, after training, and on close)."""
        with self._lock:
            self._require_open()
            recovery.save(self._store, self.cid, self._index)

    # --- embedding ---------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The collection's embedder, loaded on first use (a restart that only searches by vector, or
        only restores the index, never loads it)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = get_embedder(self.config.embedder, device=self._device)
                if self._embedder.dimension != self.dimension:
                    raise InvalidArgumentError(
                        f"collection {self.name}: the embedder at {self._embedder.model_path} gives "
                        f"{self._embedder.dimension}-dimensional vectors, the collection holds {self.dimension}"
                    )
            return self._embedder

    @property
    def embedder_loaded(self) -> bool:
        return self._embedder is not None

    def _require_open(self) -> None:
        if self._closed:
            raise NotFoundError(f"collection {self.name!r} was deleted or closed")

    # --- documents ---------------------------------------------------------------------------------

    def ingest(self, documents: Sequence[Document | Mapping[str, Any]]) -> list[IngestResult]:
        """Insert or replace documents; returns one result per document, in order.

        Every document is validated, chunked and embedded before anything is written: a bad document
        fails the call and stores nothing. The documents are then committed in one transaction (each
        one complete: old chunks tombstoned, new ones in) and added to the index. A document id seen
        twice in one call ends up as its last version.
        """
        self._require_open()
        docs = [as_document(d, i) for i, d in enumerate(documents)]
        if not docs:
            return []
        checked = [check_document(d, i) for i, d in enumerate(docs)]
        chunker = Chunker(self.config.chunker, self.embedder.token_offsets)
        prepared: list[_Prepared] = []
        for i, (doc, (doc_id, meta, source)) in enumerate(zip(docs, checked)):
            chunks = chunker.chunk(doc.text)
            if not chunks:
                raise InvalidArgumentError(
                    f"document {i} (id {doc_id!r}) has no text the tokenizer can index (only control or "
                    "unknown characters?)"
                )
            prepared.append(
                _Prepared(doc_id, doc.text, meta, source, [(c.start, c.end) for c in chunks], [c.text for c in chunks])
            )
        texts = [t for p in prepared for t in p.chunk_texts]
        x = self.embedder.embed(texts)  # (n_chunks, d)
        blobs = vectors_to_blobs(x)
        # The index gets exactly what the store holds, so a rebuild from the store changes nothing.
        x = blobs_to_vectors(blobs, self.dimension)

        results: list[IngestResult] = []
        with self._lock:
            self._require_open()
            new_ids, old_ids = [], []
            now = time.time()
            offset = 0
            with self._store.write() as conn:
                for p in prepared:
                    n = len(p.spans)
                    ids, old, replaced = self._store.put_document(
                        conn,
                        self.cid,
                        p.doc_id,
                        p.text,
                        p.metadata_json,
                        p.source,
                        p.spans,
                        p.chunk_texts,
                        blobs[offset : offset + n],
                        now,
                    )
                    offset += n
                    new_ids.append(ids)
                    old_ids.append(old)
                    results.append(IngestResult(p.doc_id, n, replaced))
            # Committed: from here on the documents survive anything. A document replaced twice in
            # this batch has its first version's chunks among the old ids, never in the index.
            ids = np.concatenate(new_ids)
            old = np.concatenate(old_ids)
            live = ~np.isin(ids, old)
            self._apply(old[~np.isin(old, ids)], x[live], ids[live])
        return results

    def _apply(self, remove_ids: np.ndarray, x: np.ndarray, ids: np.ndarray) -> None:
        """Bring the index in step with a change the store has committed (the caller holds the lock)."""
        self._index = recovery.apply(self._store, self.cid, self._index, remove_ids, x, ids, self._snapshot_every)

    def get_document(self, doc_id: str, include_chunks: bool = False) -> StoredDocument:
        self._require_open()
        doc_id = check_document_id(doc_id)
        row = self._store.get_document(self.cid, doc_id, include_chunks=include_chunks)
        if row is None:
            raise NotFoundError(f"document {doc_id!r} not found in collection {self.name!r}")
        chunks = None
        if row["chunks"] is not None:
            chunks = [StoredChunk(c["chunk_id"], c["text"], c["start"], c["end"]) for c in row["chunks"]]
        return StoredDocument(
            row["id"],
            row["text"],
            row["metadata"],
            row["source"],
            row["chunk_count"],
            chunks,
            row["created_at"],
            row["updated_at"],
        )

    def delete_document(self, doc_id: str) -> int:
        """Remove a document from the store and the index; returns how many chunks it had."""
        self._require_open()
        doc_id = check_document_id(doc_id)
        with self._lock:
            self._require_open()
            with self._store.write() as conn:
                old = self._store.delete_document(conn, self.cid, doc_id)
            if old is None:
                raise NotFoundError(f"document {doc_id!r} not found in collection {self.name!r}")
            self._apply(old, np.zeros((0, self.dimension), np.float32), np.zeros(0, np.int64))
        return len(old)

    # --- search ------------------------------------------------------------------------------------

    def search(
        self,
        query: str | None = None,
        vector: np.ndarray | Sequence[float] | None = None,
        k: int = SearchParams.k,
        filter: Mapping[str, Any] | None = None,
        nprobe: int | None = None,
        rerank: bool | None = None,
    ) -> SearchResult:
        """The k chunks nearest to a query text (embedded here) or a query vector, best first.

        filter: metadata conditions on documents, applied inside the index search (so k hits come back
          whenever k matching chunks exist): {"lang": "en"}, {"lang": {"$eq": "en"}},
          {"tag": {"$in": ["a", "b"]}}; several fields are ANDed.
        nprobe: IVF lists to visit (None: the collection's default). rerank: re-rank PQ candidates
          with the exact vectors (None: the collection's default).
        """
        self._require_open()
        params = check_search(k, nprobe, rerank)
        if (query is None) == (vector is None):
            raise InvalidArgumentError("give exactly one of a query text or a query vector")
        where, where_params = compile_filter(dict(filter) if isinstance(filter, Mapping) else filter)

        t0 = time.perf_counter()
        if query is not None:
            xq = self.embedder.embed([check_query_text(query)])
        else:
            xq = check_query_vector(vector, self.dimension, self.name)
        t1 = time.perf_counter()

        with self._lock:
            self._require_open()
            hits: list[Hit] = []
            allowed = None
            if filter:
                allowed = self._store.allowed_ids(self.cid, where, where_params)
            if self._index.ntotal > 0 and (allowed is None or len(allowed) > 0):
                D, I = self._index.search(xq, params.k, nprobe=params.nprobe, allowed=allowed, rerank=params.rerank)
                found = [(int(i), float(d)) for i, d in zip(I[0], D[0]) if i >= 0]
                rows = self._store.chunk_rows(self.cid, [i for i, _ in found])
                sign = 1.0 if self.config.metric == "ip" else -1.0
                for i, d in found:
                    r = rows.get(i)
                    assert r is not None, f"index id {i} has no chunk row"
                    hits.append(
                        Hit(r["doc_id"], i, sign * d, r["text"], r["metadata"], r["source"], r["start"], r["end"])
                    )
        t2 = time.perf_counter()
        return SearchResult(hits, embed_ms=(t1 - t0) * 1e3, search_ms=(t2 - t1) * 1e3)

    # --- maintenance -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self._require_open()
        n_docs, n_chunks = self._store.counts(self.cid)
        with self._lock:
            state = "trained" if self._index.is_trained else "exact"
            ntotal = self._index.ntotal
        return {
            "name": self.name,
            "document_count": n_docs,
            "chunk_count": n_chunks,
            "index_state": state,
            "indexed_vectors": ntotal,
            "dimension": self.dimension,
            "metric": self.config.metric,
            "embedder": self.config.embedder,
            "created_at": self.created_at,
        }

    def retrain(self) -> None:
        """Retrain the index's quantizers on the vectors it holds now (after the data drifted or grew)."""
        with self._lock:
            self._require_open()
            self._index.retrain()
            recovery.save(self._store, self.cid, self._index)

    def close(self, snapshot: bool = True) -> None:
        """Snapshot the index if it changed since the last one (unless snapshot=False), and refuse further calls."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if snapshot and self._index.unsaved:
                try:
                    recovery.save(self._store, self.cid, self._index)
                except Exception:  # the store still has everything: the next open replays it
                    log.exception("collection %s: snapshot on close failed", self.name)

    def drop(self) -> None:
        """Delete the collection's rows from the store (one transaction) and close it without a snapshot. Waits for
        its in-flight write or search; every later call raises NotFoundError. Collections.delete calls this and then
        removes the index directory."""
        with self._lock:
            with self._store.write() as conn:
                self._store.delete_collection(conn, self.cid)
            self._closed = True

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, d={self.dimension}, metric={self.config.metric!r})"
