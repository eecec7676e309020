"""Input checks for collections: names, documents, queries, search options.

Pure functions that return the checked value or raise the retrieval error the service maps to a gRPC status
(InvalidArgumentError -> INVALID_ARGUMENT, ResourceExhaustedError -> RESOURCE_EXHAUSTED), with a message that
says what to fix. They run before anything is written, so a rejected call changes nothing. Every id and name has
its length limit wherever it is taken, and a message quotes at most ~200 characters of the input (common.quote).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.checks import optional_positive_int, positive_int
from common.errors import InvalidArgumentError, ResourceExhaustedError, quote
from retrieval.types import Document, SearchParams

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT_BYTES = 5 * 1024 * 1024  # per document text (UTF-8)
MAX_QUERY_BYTES = 64 * 1024
MAX_DOC_ID_CHARS = 512
MAX_METADATA_BYTES = 64 * 1024
MAX_SOURCE_CHARS = 4096
# Chunks one document may have: bounds the cost of one request, whatever the chunking (5 MB of text in 256-piece
# chunks is ~5,000; a tiny chunk_tokens with a large overlap could otherwise make millions).
MAX_CHUNKS_PER_DOCUMENT = 20_000
MAX_NPROBE = 65536  # IVF lists a search may visit (no index has more lists: index_config.MAX_NLIST)
# |reader_threshold| at most: the extractive reader's margins are differences of logits, a few units wide.
MAX_READER_THRESHOLD = 100.0
# |min_similarity| at most: dense scores are inner products (cosine in [-1, 1] for normalised embeddings) or negative
# squared L2 distances, which unnormalised vectors can make large but not past this.
MAX_MIN_SIMILARITY = 1e6


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgumentError(f"invalid collection name {quote(name)}: use 1 to 64 letters, digits, '_' or '-'")
    return name


def _optional_bounded(value: Any, name: str, bound: float, meaning: str, unset: str) -> float | None:
    """None, or a finite number (not a bool) within [-bound, bound] as a float; else InvalidArgumentError saying what
    the setting is (meaning) and what unset does."""
    if value is None:
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or abs(value) > bound or not math.isfinite(value):  # abs first: 10**400
        raise InvalidArgumentError(
            f"{name} must be a finite number in [-{bound:.0f}, {bound:.0f}] ({meaning}), or unset for {unset}; got "
            f"{quote(value)}"
        )
    return float(value)


def check_reader_threshold(value: Any) -> float | None:
    """A collection's reader_threshold: None (the reader's own null_threshold) or a float in
    [-MAX_READER_THRESHOLD, MAX_READER_THRESHOLD]."""
    meaning = "the margin of span over no-answer score the reader's answer must reach"
    return _optional_bounded(value, "reader_threshold", MAX_READER_THRESHOLD, meaning, "the reader's own threshold")


def check_min_similarity(value: Any) -> float | None:
    """A collection's min_similarity: None (no cut) or a float in [-MAX_MIN_SIMILARITY, MAX_MIN_SIMILARITY]."""
    meaning = "the dense score, inner product or -squared L2, the nearest chunk to a question must reach for an answer"
    return _optional_bounded(value, "min_similarity", MAX_MIN_SIMILARITY, meaning, "no cut")


def utf8_size(text: str, what: str) -> int:
    """Bytes of text in UTF-8; lone surrogates (which SQLite and protobuf refuse) are an error naming `what`."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{what} is not valid Unicode text ({exc.reason} at {exc.start})") from exc


def as_document(doc: Any, position: int) -> Document:
    """A Document from a Document or a {id, text, metadata, source} mapping."""
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, Mapping):
        unknown = set(doc) - {"id", "text", "metadata", "source"}
        if unknown:
            raise InvalidArgumentError(
                f"document {position}: unknown fields {sorted(unknown)}; use id, text, metadata, source"
            )
        return Document(
            id=doc.get("id"), text=doc.get("text"), metadata=doc.get("metadata") or {}, source=doc.get("source") or ""
        )
    raise InvalidArgumentError(f"document {position} is a {type(doc).__name__}; pass Document objects or dicts")


def check_document(doc: Document, position: int) -> tuple[str, str, str]:
    """(doc id, metadata JSON, source) of a valid document (a missing id becomes a fresh UUID)."""
    doc_id = doc.id
    if doc_id is None or doc_id == "":
        doc_id = str(uuid.uuid4())
    if not isinstance(doc_id, str):
        raise InvalidArgumentError(f"document {position}: id must be a string, got {type(doc_id).__name__}")
    label = f"document {position} (id {quote(doc_id)})"
    check_document_id(doc_id, label)
    if not isinstance(doc.text, str):
        raise InvalidArgumentError(f"{label}: text must be a string, got {type(doc.text).__name__}")
    if not doc.text.strip():
        raise InvalidArgumentError(f"{label} has empty text; send the document's text")
    size = utf8_size(doc.text, f"{label}: the text")
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
        raise InvalidArgumentError(
            f"{label}: metadata must be JSON (strings, finite numbers, booleans, lists, objects): {exc}"
        ) from exc
    if utf8_size(meta, f"{label}: the metadata") > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"{label}: metadata is larger than {MAX_METADATA_BYTES} bytes")
    source = doc.source if doc.source is not None else ""
    if not isinstance(source, str):
        raise InvalidArgumentError(f"{label}: source must be a string, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise InvalidArgumentError(f"{label}: source is longer than {MAX_SOURCE_CHARS} characters")
    utf8_size(source, f"{label}: the source")
    return doc_id, meta, source


def check_chunk_count(n_chunks: int, position: int, doc_id: str) -> int:
    if n_chunks > MAX_CHUNKS_PER_DOCUMENT:
        raise ResourceExhaustedError(
            f"document {position} (id {quote(doc_id)}) makes {n_chunks} chunks, more than the "
            f"{MAX_CHUNKS_PER_DOCUMENT} one document may have; split it into several documents"
        )
    return n_chunks


def check_search(k: Any, nprobe: Any, rerank: Any) -> SearchParams:
    """k: 1..SearchParams.MAX_K; nprobe: 1..MAX_NPROBE or None (the collection's default); rerank: a bool or
    None (the collection's default)."""
    k = positive_int(k, "k", SearchParams.MAX_K)
    nprobe = optional_positive_int(nprobe, "nprobe", MAX_NPROBE)
    if rerank is not None and not isinstance(rerank, bool):
        raise InvalidArgumentError(f"rerank must be true, false or unset, got {quote(rerank)}")
    return SearchParams(k, nprobe, rerank)


def check_document_id(doc_id: Any, label: str = "document id") -> str:
    """A document id, as ingestion, GetDocument and DeleteDocument take it: 1 to MAX_DOC_ID_CHARS characters of
    valid Unicode, not only spaces."""
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgumentError(f"{label} must be a non-empty string, got {quote(doc_id)}")
    if len(doc_id) > MAX_DOC_ID_CHARS or not doc_id.strip():
        raise InvalidArgumentError(
            f"{label}: ids are 1 to {MAX_DOC_ID_CHARS} characters, not only spaces (got {len(doc_id)} characters)"
        )
    utf8_size(doc_id, f"{label}: the id")
    return doc_id


def check_query_text(query: Any) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InvalidArgumentError("the query text is empty; send a question or use a query vector")
    if utf8_size(query, "the query") > MAX_QUERY_BYTES:
        raise InvalidArgumentError(f"the query is longer than {MAX_QUERY_BYTES} bytes")
    return query


def check_query_vector(vector: Any, dimension: int, collection: str) -> np.ndarray:
    """(1, dimension) float32 from a vector of `dimension` finite numbers (or a (1, dimension) array)."""
    try:
        v = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"the query vector must be a list of numbers: {exc}") from exc
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.shape[0] != dimension:
        raise InvalidArgumentError(
            f"the query vector has shape {tuple(v.shape)}; collection {collection!r} needs {dimension} values"
        )
    if not np.isfinite(v).all():
        raise InvalidArgumentError("the query vector holds NaN or infinite values")
    return v[None, :]
