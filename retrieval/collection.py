"""A collection: documents chunked, embedded, stored and indexed, and searched with metadata filters.

    colls = Collections("data")                          # retrieval.catalog: every collection of a data dir
    docs = colls.create("notes", CollectionConfig())     # default embedder all-MiniLM-L6-v2, IVF-PQ index
    docs.ingest([Document(id=None, text="...", metadata={"lang": "en"})])
    hits = docs.search("what is ...?", k=5, filter={"lang": "en"})     # the collection's mode: hybrid by default
    hits = docs.search("what is ...?", mode="lexical")                  # or "dense", "hybrid" (fusion.py)
    colls.close()                                        # snapshots every index

SQLite (store.py) is the source of truth. An ingestion validates, chunks and embeds every document first,
then commits them (durably) before it touches the index, so a crash at any point loses nothing acknowledged;
the vector index (vector_index.VectorIndex) is derived from the stored float16 vectors and brought back in
step on open (recovery.py). The embedder is only loaded when the collection first needs to embed. The chunk
texts' full-text index (lexical search) is written by the store in the same transaction as the chunks.

The index trains itself: when it is due (VectorIndex.training_due), a background thread (retrainer.py) tunes and
trains it from a copy of the vectors' rows (tuning.py) and installs it under the lock, so searches and writes go on
meanwhile; the snapshot taken then also records what the tuning measured.

User input is checked here, once, as it enters (validation.py, common.checks); the layers below assert.

Thread safety: every public method may be called from any thread. Each collection has a lock that guards its
index (held for the SQLite write and the index update of an ingestion, and for a search; never while
embedding or tuning).
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

from common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, quote
from retrieval import recovery, retrievers
from retrieval.chunker import Chunker, ChunkerConfig
from retrieval.embedder import Embedder, get_embedder, stored_model_name
from retrieval.filters import compile_filter
from retrieval.fusion import DEFAULT_MODE, Ranked, check_fusion, check_mode, fuse, single
from retrieval.retrainer import BackgroundTrainer
from retrieval.store import Store, blobs_to_vectors, vectors_to_blobs
from retrieval.types import Document, IngestResult, SearchParams, SearchResult, StoredChunk, StoredDocument
from retrieval.validation import (
    as_document,
    check_chunk_count,
    check_document,
    check_document_id,
    check_query_text,
    check_query_vector,
    check_search,
)
from retrieval.vector_index import IndexConfig, VectorIndex

__all__ = ["Collection", "CollectionConfig"]

log = logging.getLogger("pqrag.collection")


# --- configuration ---------------------------------------------------------------------------------


@dataclass
class CollectionConfig:
    """How a collection embeds, chunks and indexes. Stored in SQLite with the collection; search_mode, grounding,
    reader_threshold and min_similarity can be changed later (Collections.update swaps in a new config), the others
    are fixed.

    embedder: a model name (retrieval.embedder: the bundled all-MiniLM-L6-v2 when None, else a sentence-transformers
      directory in one of the server's model dirs), never a path.
    dimension: the embedding dimension; filled in from the embedder at create (a given value
      must match it).
    index: the vector index (recall target; kind, m, nbits, nlist, nprobe, rerank factor: chosen by measurement
      unless pinned; metric, backend...). The metric ("ip" on normalised vectors by default, or "l2") lives there;
      `metric` reads it.
    chunker: chunk and overlap sizes in the embedder's word pieces.
    search_mode: what a search without a mode does: "hybrid" (dense + lexical, fused), "dense" or "lexical".
    reader_threshold: the extractive reader's no-answer threshold for questions over this collection (grounding
      "extract"): an answer is given only when the best span's margin (span score minus no-answer score) reaches it.
      None: the reader's own null_threshold (chosen by its trainer on its training data); its margins are not
      calibrated across domains, so a collection calibrated on a few of its own labelled questions
      (`python -m rag.calibrate_reader`) answers more of them.
    min_similarity: the least dense score (the index's: inner product, or -squared L2 distance) the collection's
      nearest chunk to a question must have for a RAG answer over it (SearchResult.nearest_score); below it the
      question is declined without reading or generating (nothing stored is about it), a cut like Qdrant's
      score_threshold or LlamaIndex's similarity_cutoff.
      None: no such cut. Chosen with reader_threshold by `python -m rag.calibrate_reader`.
    """

    embedder: str | None = None
    dimension: int | None = None
    index: IndexConfig = field(default_factory=IndexConfig)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    search_mode: str = DEFAULT_MODE
    # how RAG answers over it are decoded, "free" | "quote" | "extract" (None: the server's)
    grounding: str | None = None
    # the extractive reader's no-answer threshold over it (None: the reader's own null_threshold)
    reader_threshold: float | None = None
    # the nearest chunk's dense score a RAG answer needs (None: any)
    min_similarity: float | None = None

    @property
    def metric(self) -> str:
        return self.index.metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "dimension": self.dimension,
            "index": self.index.to_dict(),
            "chunker": dataclasses.asdict(self.chunker),
            "search_mode": self.search_mode,
            "grounding": self.grounding,
            "reader_threshold": self.reader_threshold,
            "min_similarity": self.min_similarity,
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
            search_mode=d.get("search_mode", DEFAULT_MODE),
            grounding=d.get("grounding"),
            reader_threshold=d.get("reader_threshold"),  # absent from configs stored before it existed
            min_similarity=d.get("min_similarity"),  # (likewise)
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
        model_dirs: tuple[str, ...] = (),
    ):
        self._store = store
        self._model_dirs = tuple(model_dirs)
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
        self._trainer = BackgroundTrainer(self.name)
        with self._lock:
            self._schedule_training()

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
                name = stored_model_name(self.config.embedder, self._model_dirs)
                self._embedder = get_embedder(name, device=self._device, model_dirs=self._model_dirs)
                if self._embedder.dimension != self.dimension:
                    raise FailedPreconditionError(
                        f"collection {self.name}: the embedder {self._embedder.name!r} gives "
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
                    f"document {i} (id {quote(doc_id)}) has no text the tokenizer can index (only control or "
                    "unknown characters?)"
                )
            check_chunk_count(len(chunks), i, doc_id)
            prepared.append(
                _Prepared(doc_id, doc.text, meta, source, [(c.start, c.end) for c in chunks], [c.text for c in chunks])
            )
        texts = [t for p in prepared for t in p.chunk_texts]
        x = self.embedder.embed(texts, bulk=True)  # (n_chunks, d); in batches that let queries go first
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
        self._schedule_training()

    # --- training ----------------------------------------------------------------------------------

    def _schedule_training(self) -> None:
        """Start a background (re)training when the index says one is due (the caller holds the lock); while one
        runs, the next check is queued behind it."""
        if self._index.training_due():
            self._trainer.start(self._train_when_due)

    def _train_when_due(self, cancelled) -> None:
        """The background work: take the rows if a training is (still) due, then tune and install them."""
        with self._lock:
            if self._closed or not self._index.training_due():
                return
            index, job = self._index, self._index.training_job()
        self._train(index, job, cancelled)

    def _train(self, index: VectorIndex, job, cancelled=lambda: False) -> dict:
        """Tune on `job` without the lock, then install under it (unless the collection closed or its index was
        rebuilt meanwhile) and snapshot, the tuning report included. Returns the report."""
        tuned = job.tune(index.config, cancelled)  # minutes for a large collection: searches and writes go on
        with self._lock:
            if self._closed or self._index is not index:
                return tuned.report
            installed = index.install(job, tuned)
            log.info(
                "collection %s: index %s: %s", self.name, "trained" if installed else "stays as it is", tuned.report
            )
            try:
                recovery.save(self._store, self.cid, index)
            except Exception:  # the store has everything; the next open replays it (and may tune again)
                log.exception("collection %s: snapshot after training failed", self.name)
        return tuned.report

    def wait_for_training(self, timeout: float | None = None) -> bool:
        """Wait for the background training in progress, if any; True when none is left."""
        return self._trainer.wait(timeout)

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
        mode: str | None = None,
        rrf_k: int | None = None,
        alpha: float | None = None,
        candidates: int | None = None,
    ) -> SearchResult:
        """The k chunks that best match a query text or a query vector, best first.

        mode: "dense" (nearest vectors; the text is embedded here), "lexical" (bm25 over the chunk texts: the
          text's words, never FTS5 syntax) or "hybrid" (both, fused); None: the collection's search_mode for a
          text, "dense" for a vector (lexical and hybrid need the text).
        filter: metadata conditions on documents, applied inside each retriever (so k hits come back whenever k
          matching chunks exist): {"lang": "en"}, {"lang": {"$eq": "en"}}, {"tag": {"$in": ["a", "b"]}}; several
          fields are ANDed.
        nprobe: IVF lists to visit (None: the index's). rerank: re-rank PQ candidates with the exact vectors
          (None: the collection's default).
        rrf_k, alpha, candidates: hybrid's fusion (fusion.FusionParams; None: the defaults).
        Each hit carries its rank and score in the dense and the lexical ranking (None where it was not in one); the
        result carries the nearest chunk's dense score (SearchResult.nearest_score).
        """
        self._require_open()
        params = check_search(k, nprobe, rerank)
        fusion = check_fusion(rrf_k, alpha, candidates)
        if (query is None) == (vector is None):
            raise InvalidArgumentError("give exactly one of a query text or a query vector")
        mode = check_mode(mode) or (self.config.search_mode if query is not None else "dense")
        if query is None and mode != "dense":
            raise InvalidArgumentError(f"{mode} search reads the query's words: send a query text, not a vector")
        where, where_params = compile_filter(dict(filter) if isinstance(filter, Mapping) else filter)

        t0 = time.perf_counter()
        if query is not None:
            query = check_query_text(query)
        xq = None
        if vector is not None:
            xq = check_query_vector(vector, self.dimension, self.name)
        elif mode != "lexical":
            xq = self.embedder.embed([query])
        t1 = time.perf_counter()

        depth = max(params.k, fusion.candidates) if mode == "hybrid" else params.k
        with self._lock:
            self._require_open()
            dense = lexical = Ranked.empty()
            if mode != "lexical":
                dense = retrievers.dense(
                    self._store, self.cid, self._index, xq, depth, params, filter and (where, where_params)
                )
            if mode != "dense":
                lexical = retrievers.lexical(self._store, self.cid, query, depth, where, where_params)
            if mode == "hybrid":
                fused = fuse(dense, lexical, params.k, fusion)
            else:
                fused = single(dense if mode == "dense" else lexical, mode == "dense", params.k)
            hits = retrievers.hits(self._store, self.cid, fused)
        t2 = time.perf_counter()
        nearest = float(dense.scores[0]) if len(dense.scores) else None
        return SearchResult(hits, embed_ms=(t1 - t0) * 1e3, search_ms=(t2 - t1) * 1e3, nearest_score=nearest)

    # --- maintenance -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self._require_open()
        n_docs, n_chunks = self._store.counts(self.cid)
        with self._lock:
            state = "trained" if self._index.is_trained else "exact"
            ntotal = self._index.ntotal
            index = self._index.stats()
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
            "search_mode": self.config.search_mode,
            "index": index,  # the trained parameters and the last tuning's report (VectorIndex.stats)
            "training": self._trainer.running,
        }

    def retrain(self) -> dict:
        """Tune and retrain the index on the vectors it holds now (after the data drifted or grew), taking the best
        setting measured even below the recall target; searches and writes go on meanwhile. Returns the tuning report;
        FailedPreconditionError when there are too few vectors to train anything."""
        self._require_open()
        self._trainer.wait()  # one training at a time
        with self._lock:
            self._require_open()
            index, job = self._index, self._index.training_job(force=True)
        report = self._train(index, job)
        if report.get("params") is None:
            raise FailedPreconditionError(f"collection {self.name!r}: cannot train its index: {report['reason']}")
        return report

    def close(self, snapshot: bool = True) -> None:
        """Stop a training in progress, snapshot the index if it changed since the last one (unless snapshot=False),
        and refuse further calls."""
        self._trainer.stop()  # before the lock: the training installs under it
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
        self._trainer.stop()
        with self._lock:
            with self._store.write() as conn:
                self._store.delete_collection(conn, self.cid)
            self._closed = True

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, d={self.dimension}, metric={self.config.metric!r})"
