"""Collections of documents: chunk -> embed -> store -> index, and search with metadata filters.

    colls = Collections("data")                          # data/pqrag.sqlite3 + data/indexes/<cid>-<name>/
    docs = colls.create("notes", CollectionConfig())     # default embedder all-MiniLM-L6-v2, IVF-PQ index
    docs.ingest([Document(id=None, text="...", metadata={"lang": "en"})])
    hits = docs.search("what is ...?", k=5, filter={"lang": "en"})
    colls.close()                                        # snapshots every index

SQLite (store.py) is the source of truth; each collection's vector index (adaptive.CollectionIndex)
is derived from the float16 vectors stored with the chunks. An ingestion commits the document
(durably) before it touches the index, so a crash at any point loses nothing acknowledged: on open,
the index snapshot (taken every `snapshot_every` changed chunks and on close) is loaded and the
chunks and tombstones newer than its `last_seq` are replayed; without a usable snapshot the index is
rebuilt from the stored vectors. Nothing is re-embedded, and the embedder is only loaded when a
collection first needs to embed.

Thread safety: every public method may be called from any thread. Each collection has a lock that
guards its index (held for the SQLite write and the index update of an ingestion, and for a search;
never while embedding); the manager has one for its name table.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from retrieval.adaptive import SNAPSHOT, CollectionIndex, IndexConfig
from retrieval.chunker import Chunker, ChunkerConfig
from retrieval.embedder import Embedder, get_embedder, resolve_model_path
from retrieval.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from retrieval.store import Document, Store, blobs_to_vectors, compile_filter, vectors_to_blobs

__all__ = [
    "Collection", "CollectionConfig", "Collections", "Document", "Hit", "IngestResult", "SearchResult",
    "StoredChunk", "StoredDocument",
]

log = logging.getLogger("pqrag.collection")

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT_BYTES = 5 * 1024 * 1024  # per document text (UTF-8)
MAX_QUERY_BYTES = 64 * 1024
MAX_DOC_ID_CHARS = 512
MAX_METADATA_BYTES = 64 * 1024
MAX_K = 1000
DB_FILE = "pqrag.sqlite3"
INDEX_DIR = "indexes"


# --- configuration and results -------------------------------------------------------------------

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
        return {"embedder": self.embedder, "dimension": self.dimension,
                "index": self.index.to_dict(), "chunker": dataclasses.asdict(self.chunker)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CollectionConfig":
        names = {f.name for f in dataclasses.fields(ChunkerConfig)}
        chunker = ChunkerConfig(**{k: v for k, v in (d.get("chunker") or {}).items() if k in names})
        return cls(embedder=d.get("embedder"), dimension=d.get("dimension"),
                   index=IndexConfig.from_dict(d.get("index") or {}), chunker=chunker)


@dataclass
class IngestResult:
    doc_id: str
    chunk_count: int
    replaced: bool  # an existing document with this id was replaced

    @property
    def created(self) -> bool:
        return not self.replaced


@dataclass
class Hit:
    doc_id: str
    chunk_id: int
    score: float  # inner product (higher is closer) or negative squared L2 distance
    text: str  # the chunk: document text[start:end]
    metadata: dict[str, Any]
    source: str
    start: int
    end: int


class SearchResult(list):
    """The hits (a list of Hit, best first) with timings in milliseconds."""

    def __init__(self, hits: Iterable[Hit] = (), embed_ms: float = 0.0, search_ms: float = 0.0):
        super().__init__(hits)
        self.embed_ms = embed_ms
        self.search_ms = search_ms

    @property
    def hits(self) -> list[Hit]:
        return self


@dataclass
class StoredChunk:
    chunk_id: int
    text: str
    start: int
    end: int


@dataclass
class StoredDocument:
    id: str
    text: str
    metadata: dict[str, Any]
    source: str
    chunk_count: int
    chunks: list[StoredChunk] | None  # None unless asked for
    created_at: float = 0.0
    updated_at: float = 0.0


# --- validation ----------------------------------------------------------------------------------

def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgumentError(
            f"invalid collection name {name!r}: use 1 to 64 letters, digits, '_' or '-'"
        )
    return name


def _utf8_size(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{what} is not valid Unicode text ({exc.reason} at {exc.start})") from exc


def _as_document(doc: Any, position: int) -> Document:
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, Mapping):
        unknown = set(doc) - {"id", "text", "metadata", "source"}
        if unknown:
            raise InvalidArgumentError(f"document {position}: unknown fields {sorted(unknown)}; "
                                       "use id, text, metadata, source")
        return Document(id=doc.get("id"), text=doc.get("text"), metadata=doc.get("metadata") or {},
                        source=doc.get("source") or "")
    raise InvalidArgumentError(f"document {position} is a {type(doc).__name__}; pass Document objects or dicts")


@dataclass
class _Prepared:
    doc_id: str
    text: str
    metadata_json: str
    source: str
    spans: list[tuple[int, int]]
    chunk_texts: list[str]


def _check_document(doc: Document, position: int) -> tuple[str, str, str]:
    """(doc id, metadata JSON, source) of a valid document; raises on anything else."""
    doc_id = doc.id
    if doc_id is None or doc_id == "":
        doc_id = str(uuid.uuid4())
    label = f"document {position} (id {doc_id!r})"
    if not isinstance(doc_id, str):
        raise InvalidArgumentError(f"document {position}: id must be a string, got {type(doc_id).__name__}")
    if len(doc_id) > MAX_DOC_ID_CHARS or not doc_id.strip():
        raise InvalidArgumentError(f"{label}: ids are 1 to {MAX_DOC_ID_CHARS} characters, not only spaces")
    _utf8_size(doc_id, f"{label}: the id")
    if not isinstance(doc.text, str):
        raise InvalidArgumentError(f"{label}: text must be a string, got {type(doc.text).__name__}")
    if not doc.text.strip():
        raise InvalidArgumentError(f"{label} has empty text; send the document's text")
    size = _utf8_size(doc.text, f"{label}: the text")
    if size > MAX_TEXT_BYTES:
        raise ResourceExhaustedError(
            f"{label} has {size} bytes of text, more than the {MAX_TEXT_BYTES} byte limit; split it into "
            "several documents"
        )
    if not isinstance(doc.metadata, Mapping):
        raise InvalidArgumentError(f"{label}: metadata must be an object, got {type(doc.metadata).__name__}")
    if not all(isinstance(k, str) for k in doc.metadata):
        raise InvalidArgumentError(f"{label}: metadata keys must be strings")
    try:
        meta = json.dumps(dict(doc.metadata), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{label}: metadata must be JSON (strings, finite numbers, booleans, "
                                   f"lists, objects): {exc}") from exc
    if _utf8_size(meta, f"{label}: the metadata") > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"{label}: metadata is larger than {MAX_METADATA_BYTES} bytes")
    source = doc.source if doc.source is not None else ""
    if not isinstance(source, str):
        raise InvalidArgumentError(f"{label}: source must be a string, got {type(source).__name__}")
    _utf8_size(source, f"{label}: the source")
    return doc_id, meta, source


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidArgumentError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    return int(k)


# --- one collection ------------------------------------------------------------------------------

class Collection:
    """A named set of documents with its embedder, chunker and vector index. Made by `Collections`."""

    def __init__(self, store: Store, row: Mapping[str, Any], index_dir: Path, device: str | None,
                 snapshot_every: int):
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
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self._closed = False
        self._dirty = 0  # chunks added or removed since the last snapshot
        # How the index was restored when opened: "snapshot" (plus replayed changes) or "store" (rebuilt).
        self.restored_from = "store"
        self._index = self._open_index()

    # --- the index ---------------------------------------------------------------------------------

    def _new_index(self) -> CollectionIndex:
        """An empty index in a clean directory (its vector file lives there)."""
        if self.index_dir.exists():
            shutil.rmtree(self.index_dir)
        return CollectionIndex(self.dimension, dataclasses.replace(self.config.index), path=self.index_dir)

    def _open_index(self) -> CollectionIndex:
        """The snapshot brought up to date from SQLite, or an index rebuilt from the stored vectors."""
        if (self.index_dir / SNAPSHOT).exists():
            try:
                return self._replay(CollectionIndex.load(self.index_dir))
            except Exception as exc:  # partial, damaged, from another version, or out of step
                log.warning("collection %s: index snapshot unusable (%s: %s); rebuilding from the store",
                            self.name, type(exc).__name__, exc)
        return self._rebuild_index()

    def _replay(self, index: CollectionIndex) -> CollectionIndex:
        """Apply the deletions and additions newer than the snapshot's last_seq."""
        last_seq = int(index.last_seq)
        dead = self._store.tombstoned_ids(self.cid, last_seq)
        if len(dead):
            index.remove(dead)
        added = 0
        for ids, x in self._store.iter_vectors(self.cid, self.dimension, after_seq=last_seq):
            index.add(x, ids)
            added += len(ids)
        _, n_chunks = self._store.counts(self.cid)
        if index.ntotal != n_chunks:
            raise ValueError(f"the index holds {index.ntotal} vectors but the store {n_chunks} chunks")
        self._dirty = added + len(dead)
        self.restored_from = "snapshot"
        log.info("collection %s: snapshot at seq %d + %d replayed changes", self.name, last_seq, self._dirty)
        return index

    def _rebuild_index(self) -> CollectionIndex:
        index = self._new_index()
        n = 0
        for ids, x in self._store.iter_vectors(self.cid, self.dimension):
            index.add(x, ids)
            n += len(ids)
        self._dirty = n + 1  # a fresh index is worth a snapshot
        return index

    def _index_state(self) -> str:
        return "trained" if self._index.is_trained else "exact"

    def snapshot(self) -> None:
        """Save the index with the sequence number it reflects, then forget older tombstones."""
        with self._lock:
            self._require_open()
            last_seq = self._store.last_seq()  # no write of this collection is in flight: we hold its lock
            self._index.save(last_seq=last_seq)
            self._dirty = 0
        self._store.prune_tombstones(self.cid, last_seq)

    def _after_change(self, n_changed: int, state_before: str) -> None:
        # Called with the lock held. Snapshots are periodic (training is worth saving at once).
        self._dirty += n_changed
        if self._dirty >= self._snapshot_every or self._index_state() != state_before:
            try:
                self.snapshot()
            except Exception:  # the change is committed; the next open replays it from the store
                log.exception("collection %s: index snapshot failed", self.name)

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
        docs = [_as_document(d, i) for i, d in enumerate(documents)]
        if not docs:
            return []
        checked = [_check_document(d, i) for i, d in enumerate(docs)]
        chunker = Chunker(self.config.chunker, self.embedder.token_offsets)
        prepared: list[_Prepared] = []
        for i, (doc, (doc_id, meta, source)) in enumerate(zip(docs, checked)):
            chunks = chunker.chunk(doc.text)
            if not chunks:
                raise InvalidArgumentError(
                    f"document {i} (id {doc_id!r}) has no text the tokenizer can index (only control or "
                    "unknown characters?)"
                )
            prepared.append(_Prepared(doc_id, doc.text, meta, source, [(c.start, c.end) for c in chunks],
                                      [c.text for c in chunks]))
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
                        conn, self.cid, p.doc_id, p.text, p.metadata_json, p.source, p.spans, p.chunk_texts,
                        blobs[offset : offset + n], now,
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
            self._update_index(old[~np.isin(old, ids)], x[live], ids[live])
        return results

    def _update_index(self, remove_ids: np.ndarray, x: np.ndarray, ids: np.ndarray) -> None:
        """Apply a committed change to the index (lock held). The store already has it, so if the
        index fails it is rebuilt from the store rather than left out of step."""
        state = self._index_state()
        try:
            if len(remove_ids):
                self._index.remove(remove_ids)
            if len(ids):
                self._index.add(x, ids)
        except Exception:
            log.exception("collection %s: index update failed; rebuilding it from the store", self.name)
            self._index = self._rebuild_index()
        self._after_change(len(remove_ids) + len(ids), state)

    def get_document(self, doc_id: str, include_chunks: bool = False) -> StoredDocument:
        self._require_open()
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidArgumentError(f"document id must be a non-empty string, got {doc_id!r}")
        row = self._store.get_document(self.cid, doc_id, include_chunks=include_chunks)
        if row is None:
            raise NotFoundError(f"document {doc_id!r} not found in collection {self.name!r}")
        chunks = None
        if row["chunks"] is not None:
            chunks = [StoredChunk(c["chunk_id"], c["text"], c["start"], c["end"]) for c in row["chunks"]]
        return StoredDocument(row["id"], row["text"], row["metadata"], row["source"], row["chunk_count"], chunks,
                              row["created_at"], row["updated_at"])

    def delete_document(self, doc_id: str) -> int:
        """Remove a document from the store and the index; returns how many chunks it had."""
        self._require_open()
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidArgumentError(f"document id must be a non-empty string, got {doc_id!r}")
        with self._lock:
            self._require_open()
            with self._store.write() as conn:
                old = self._store.delete_document(conn, self.cid, doc_id)
            if old is None:
                raise NotFoundError(f"document {doc_id!r} not found in collection {self.name!r}")
            self._update_index(old, np.zeros((0, self.dimension), np.float32), np.zeros(0, np.int64))
        return len(old)

    # --- search ------------------------------------------------------------------------------------

    def search(self, query: str | None = None, vector: np.ndarray | Sequence[float] | None = None, k: int = 10,
               filter: Mapping[str, Any] | None = None, nprobe: int | None = None,
               rerank: bool | None = None) -> SearchResult:
        """The k chunks nearest to a query text (embedded here) or a query vector, best first.

        filter: metadata conditions on documents, applied inside the index search (so k hits come back
          whenever k matching chunks exist): {"lang": "en"}, {"lang": {"$eq": "en"}},
          {"tag": {"$in": ["a", "b"]}}; several fields are ANDed.
        nprobe: IVF lists to visit (None: the collection's default). rerank: re-rank PQ candidates
          with the exact vectors (None: the collection's default).
        """
        self._require_open()
        k = _check_k(k)
        if (query is None) == (vector is None):
            raise InvalidArgumentError("give exactly one of a query text or a query vector")
        where, params = compile_filter(dict(filter) if isinstance(filter, Mapping) else filter)
        if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer))
                                   or nprobe < 1):
            raise InvalidArgumentError(f"nprobe must be a positive integer (or unset), got {nprobe!r}")
        if rerank is not None and not isinstance(rerank, bool):
            raise InvalidArgumentError(f"rerank must be true, false or unset, got {rerank!r}")

        t0 = time.perf_counter()
        if query is not None:
            if not isinstance(query, str) or not query.strip():
                raise InvalidArgumentError("the query text is empty; send a question or use a query vector")
            if _utf8_size(query, "the query") > MAX_QUERY_BYTES:
                raise InvalidArgumentError(f"the query is longer than {MAX_QUERY_BYTES} bytes")
            xq = self.embedder.embed([query])
        else:
            xq = self._check_vector(vector)
        t1 = time.perf_counter()

        with self._lock:
            self._require_open()
            hits: list[Hit] = []
            allowed = None
            if filter:
                allowed = self._store.allowed_ids(self.cid, where, params)
            if self._index.ntotal > 0 and (allowed is None or len(allowed) > 0):
                D, I = self._index.search(xq, k, nprobe=None if nprobe is None else int(nprobe),
                                          allowed=allowed, rerank=rerank)
                found = [(int(i), float(d)) for i, d in zip(I[0], D[0]) if i >= 0]
                rows = self._store.chunk_rows(self.cid, [i for i, _ in found])
                sign = 1.0 if self.config.metric == "ip" else -1.0
                for i, d in found:
                    r = rows.get(i)
                    assert r is not None, f"index id {i} has no chunk row"
                    hits.append(Hit(r["doc_id"], i, sign * d, r["text"], r["metadata"], r["source"],
                                    r["start"], r["end"]))
        t2 = time.perf_counter()
        return SearchResult(hits, embed_ms=(t1 - t0) * 1e3, search_ms=(t2 - t1) * 1e3)

    def _check_vector(self, vector: Any) -> np.ndarray:
        try:
            v = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"the query vector must be a list of numbers: {exc}") from exc
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 1 or v.shape[0] != self.dimension:
            raise InvalidArgumentError(
                f"the query vector has shape {tuple(v.shape)}; collection {self.name!r} needs "
                f"{self.dimension} values"
            )
        if not np.isfinite(v).all():
            raise InvalidArgumentError("the query vector holds NaN or infinite values")
        return v[None, :]

    # --- maintenance -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self._require_open()
        n_docs, n_chunks = self._store.counts(self.cid)
        with self._lock:
            state, ntotal = self._index_state(), int(self._index.ntotal)
        return {
            "name": self.name, "document_count": n_docs, "chunk_count": n_chunks, "index_state": state,
            "indexed_vectors": ntotal, "dimension": self.dimension, "metric": self.config.metric,
            "embedder": self.config.embedder, "created_at": self.created_at,
        }

    def retrain(self) -> None:
        """Retrain the index's quantizers on the vectors it holds now (after the data drifted or grew)."""
        with self._lock:
            self._require_open()
            self._index.retrain()
            self.snapshot()

    def close(self, snapshot: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            if snapshot and self._dirty:
                try:
                    self.snapshot()
                except Exception:  # the store still has everything: the next open replays it
                    log.exception("collection %s: snapshot on close failed", self.name)
            self._closed = True

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, d={self.dimension}, metric={self.config.metric!r})"


# --- the manager ---------------------------------------------------------------------------------

class Collections:
    """Every collection under one data directory: data_dir/pqrag.sqlite3 and data_dir/indexes/.

    device: where embedders run (None: CUDA when available). snapshot_every: changed chunks between
    index snapshots (they are also taken on close and after the index trains).
    One process at a time owns a data directory (an exclusive lock on data_dir/LOCK).
    """

    def __init__(self, data_dir: str | os.PathLike, device: str | None = None, snapshot_every: int = 10_000):
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / INDEX_DIR).mkdir(exist_ok=True)
        self._lock_file = open(self.data_dir / "LOCK", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise RuntimeError(f"data directory {self.data_dir} is in use by another pqrag process "
                               "(or another Collections object in this one); close it first") from exc
        self.device = device
        self.snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self._closed = False
        try:
            self._store = Store(self.data_dir / DB_FILE)
            for row in self._store.collection_rows():
                self._collections[row["name"]] = self._open(row)
            self._remove_orphan_index_dirs()
        except BaseException:
            self.close()
            raise

    def _index_dir(self, cid: int, name: str) -> Path:
        return self.data_dir / INDEX_DIR / f"{cid}-{name}"

    def _open(self, row: Mapping[str, Any]) -> Collection:
        return Collection(self._store, row, self._index_dir(row["cid"], row["name"]), self.device,
                          self.snapshot_every)

    def _remove_orphan_index_dirs(self) -> None:
        """Index directories of collections deleted by a process that died before removing them."""
        live = {c.index_dir.name for c in self._collections.values()}
        for p in (self.data_dir / INDEX_DIR).iterdir():
            if p.name not in live:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    @property
    def embedder_loaded(self) -> bool:
        return self._embedder is not None

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the collections are closed")

    def create(self, name: str, config: CollectionConfig | None = None) -> Collection:
        """A new empty collection. Loads its embedder (to learn the dimension) and checks the config."""
        self._require_open()
        validate_name(name)
        config = dataclasses.replace(config) if config is not None else CollectionConfig()
        if not isinstance(config.index, IndexConfig) or not isinstance(config.chunker, ChunkerConfig):
            raise InvalidArgumentError("config.index must be an IndexConfig and config.chunker a ChunkerConfig")
        with self._lock:
            if name in self._collections:
                raise AlreadyExistsError(f"collection {name!r} already exists")
        # Outside the lock: loading a model takes seconds and must not stall the other collections.
        if config.embedder:
            config.embedder = resolve_model_path(config.embedder)  # absolute: restarts may run elsewhere
        embedder = get_embedder(config.embedder, device=self.device)
        if config.dimension is not None and config.dimension != embedder.dimension:
            raise InvalidArgumentError(
                f"dimension {config.dimension} does not match the embedder's {embedder.dimension}; "
                "leave it unset to take the embedder's"
            )
        config.dimension = embedder.dimension
        if config.chunker.chunk_tokens > embedder.max_text_tokens:
            raise InvalidArgumentError(
                f"chunk_tokens {config.chunker.chunk_tokens} exceeds what the embedder reads "
                f"({embedder.max_text_tokens} word pieces); use at most that"
            )
        try:
            config.index.validate(embedder.dimension)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"invalid index configuration: {exc}") from exc

        with self._lock:
            self._require_open()
            if name in self._collections:
                raise AlreadyExistsError(f"collection {name!r} already exists")
            now = time.time()
            with self._store.write() as conn:
                cid = self._store.insert_collection(conn, name, config.to_dict(), embedder.dimension, now)
            index_dir = self._index_dir(cid, name)
            if index_dir.exists():  # cids are never reused, but be sure no stale snapshot is picked up
                shutil.rmtree(index_dir)
            row = {"cid": cid, "name": name, "config": config.to_dict(), "dimension": embedder.dimension,
                   "created_at": now}
            coll = self._open(row)
            coll._embedder = embedder
            self._collections[name] = coll
        return coll

    def get(self, name: str) -> Collection:
        self._require_open()
        with self._lock:
            coll = self._collections.get(name)
        if coll is None:
            raise NotFoundError(f"collection {name!r} not found")
        return coll

    def list(self) -> list[Collection]:
        """Every collection, by name."""
        self._require_open()
        with self._lock:
            return [self._collections[n] for n in sorted(self._collections)]

    def names(self) -> list[str]:
        return [c.name for c in self.list()]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._collections

    def delete(self, name: str) -> None:
        """Remove a collection: its rows, its index files, and the name (free for a new create)."""
        self._require_open()
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                raise NotFoundError(f"collection {name!r} not found")
            with coll._lock:  # waits for the collection's in-flight write or search
                with self._store.write() as conn:
                    self._store.delete_collection(conn, coll.cid)
                coll._closed = True
            del self._collections[name]
        # After the commit: a crash before this leaves an orphan directory, removed at the next open.
        shutil.rmtree(coll.index_dir, ignore_errors=True)

    def close(self, snapshot: bool = True) -> None:
        """Snapshot every index (unless snapshot=False) and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            colls = list(self._collections.values())
        for c in colls:
            c.close(snapshot=snapshot)
        if hasattr(self, "_store"):
            self._store.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def __enter__(self) -> "Collections":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
