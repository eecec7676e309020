"""/v1/embeddings: texts embedded by one of the collections' embedders, named as /v1/models lists them.

An embedder is named after its model directory (the bundled default: all-MiniLM-L6-v2); it is served once some
collection uses it, through that collection's own loaded embedder (no second copy of the model). Vectors are
those ingestion stores and search compares: L2-normalised float32, as floats or as base64 of their little-endian
bytes (what the openai SDK asks for by default, and decodes).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np

from retrieval import Collection, Collections
from retrieval.embedder import DEFAULT_MODEL_NAME
from service.http.errors import ApiError
from service.http.schemas import EmbeddingRequest

MAX_INPUTS = 2048  # texts per request, as OpenAI's API allows


def embedder_name(embedder: str | None) -> str:
    """A collection's configured embedder (None: the bundled default) as a model id."""
    return os.path.basename(os.path.normpath(embedder)) if embedder else DEFAULT_MODEL_NAME


def embedders(collections: Collections) -> dict[str, list[Collection]]:
    """Model id -> the collections embedding with it (sorted by name)."""
    out: dict[str, list[Collection]] = {}
    for coll in collections.list():
        out.setdefault(embedder_name(coll.config.embedder), []).append(coll)
    return out


def texts_of(req: EmbeddingRequest) -> list[str]:
    """The input as a list of texts; token arrays and empty strings are refused as OpenAI does."""
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise ApiError(400, "input is empty: send a string or a list of strings", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "token arrays are not supported: send the input as text", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", param="input")
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(400, f"input[{i}] is empty: every input needs text", param="input")
    return texts


def embed(collections: Collections, req: EmbeddingRequest) -> dict[str, Any]:
    """The embeddings response (blocking: run it in the worker pool)."""
    served = embedders(collections)
    if req.model not in served:
        names = sorted(served) or "none: create a collection first"
        raise ApiError(
            404,
            f"model {req.model!r} is not an embedder of this server's collections ({names})",
            "model",
            "model_not_found",
        )
    texts = texts_of(req)
    embedder = served[req.model][0].embedder  # loaded on first use
    if req.dimensions is not None and req.dimensions != embedder.dimension:
        raise ApiError(400, f"{req.model} gives {embedder.dimension} dimensions, not {req.dimensions}", "dimensions")
    counts = [len(embedder.token_offsets(t)) for t in texts]
    for i, n in enumerate(counts):
        if n > embedder.max_text_tokens:
            raise ApiError(
                400,
                f"input[{i}] has {n} word pieces; {req.model} reads at most {embedder.max_text_tokens}: shorten it",
                param="input",
                code="context_length_exceeded",
            )
    x = np.asarray(embedder.embed(texts), dtype="<f4")  # (n, d)
    if req.encoding_format == "base64":
        vectors: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in x]
    else:
        vectors = x.tolist()
    tokens = sum(counts)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
