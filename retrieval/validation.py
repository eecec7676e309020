"""Input checks for collections: names, documents, queries, search options.

Pure functions that return the checked value or raise the retrieval error the service maps to a gRPC status
(InvalidArgumentError -> INVALID_ARGUMENT, ResourceExhaustedError -> RESOURCE_EXHAUSTED), with a message that
says what to fix. They run before anything is written, so a rejected call changes nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.checks import optional_positive_int, positive_int
from common.errors import InvalidArgumentError, ResourceExhaustedError
from retrieval.types import Document, SearchParams

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT_BYTES = 5 * 1024 * 1024  # per document text (UTF-8)
MAX_QUERY_BYTES = 64 * 1024
MAX_DOC_ID_CHARS = 512
MAX_METADATA_BYTES = 64 * 1024


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgumentError(f"invalid collection name {name!r}: use 1 to 64 letters, digits, '_' or '-'")
    return name


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
    label = f"document {position} (id {doc_id!r})"
    if not isinstance(doc_id, str):
        raise InvalidArgumentError(f"document {position}: id must be a string, got {type(doc_id).__name__}")
    if len(doc_id) > MAX_DOC_ID_CHARS or not doc_id.strip():
        raise InvalidArgumentError(f"{label}: ids are 1 to {MAX_DOC_ID_CHARS} characters, not only spaces")
    utf8_size(doc_id, f"{label}: the id")
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
    utf8_size(source, f"{label}: the source")
    return doc_id, meta, source


def check_search(k: Any, nprobe: Any, rerank: Any) -> SearchParams:
    """k: 1..SearchParams.MAX_K; nprobe: a positive integer or None (the collection's default); rerank: a bool or
    None (the collection's default)."""
    k = positive_int(k, "k", SearchParams.MAX_K)
    nprobe = optional_positive_int(nprobe, "nprobe")
    if rerank is not None and not isinstance(rerank, bool):
        raise InvalidArgumentError(f"rerank must be true, false or unset, got {rerank!r}")
    return SearchParams(k, nprobe, rerank)


def check_document_id(doc_id: Any) -> str:
    """The id of a document to read or delete (ingestion checks ids with the rest of a document: check_document)."""
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgumentError(f"document id must be a non-empty string, got {doc_id!r}")
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
