"""The values that cross retrieval's public API: what goes in (Document, SearchParams) and what comes back (Hit,
SearchResult, StoredDocument, StoredChunk, IngestResult). Plain dataclasses, no behaviour beyond their fields, so the
service, rag and the trainer can import them without the index or the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Document", "Hit", "IngestResult", "SearchParams", "SearchResult", "StoredChunk", "StoredDocument"]


@dataclass
class Document:
    """A document to ingest. id None: a UUID is assigned; a known id replaces that document.

    metadata: a JSON object; its scalar fields (str, number, bool) can be used in search filters.
    source: where it came from (a path or URL), returned with hits.
    """

    id: str | None
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class SearchParams:
    """A search's options once checked (validation.check_search), and the one place their defaults live: a caller
    that leaves k unset (the Search RPC, Ask's passages, the CLI) uses SearchParams.k."""

    MAX_K: ClassVar[int] = 1000  # hits one search may ask for

    k: int = 10  # hits to return, best first (1..MAX_K)
    nprobe: int | None = None  # IVF lists to visit; None: the collection's (IndexConfig.nprobe, else automatic)
    rerank: bool | None = None  # re-score PQ candidates exactly; None: the collection's IndexConfig.rerank


@dataclass
class Hit:
    doc_id: str
    chunk_id: int
    # dense: inner product (higher is closer) or negative squared L2 distance; lexical: bm25 (higher is better);
    # hybrid: the fused score (fusion.py)
    score: float
    text: str  # the chunk: document text[start:end]
    metadata: dict[str, Any]
    source: str
    start: int
    end: int
    # rank (from 1) and score of the chunk in each retriever's ranking; None where that retriever did not return it
    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None


class SearchResult(list):
    """The hits (a list of Hit, best first) with timings in milliseconds, and nearest_score: the dense score of the
    chunk nearest to the query among those the search may return (filter applied), whether or not fusion kept it
    among the hits (how close the collection comes to the question at all); None for a lexical search or an empty
    collection."""

    def __init__(
        self,
        hits: Iterable[Hit] = (),
        embed_ms: float = 0.0,
        search_ms: float = 0.0,
        nearest_score: float | None = None,
    ):
        super().__init__(hits)
        self.embed_ms = embed_ms
        self.search_ms = search_ms
        self.nearest_score = nearest_score

    @property
    def hits(self) -> list[Hit]:
        return self


@dataclass
class IngestResult:
    doc_id: str
    chunk_count: int
    replaced: bool  # an existing document with this id was replaced

    @property
    def created(self) -> bool:
        return not self.replaced


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
