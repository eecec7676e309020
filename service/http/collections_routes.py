"""REST for collections and search, for jobs and scripts that don't speak gRPC:

    GET    /v1/collections                    list (with counts and index state), paged like ListCollections
    POST   /v1/collections                    create {"name", "embedder"?, "index"?: {...}, "chunking"?: {...},
                                                      "search_mode"?, "grounding"?, "reader_threshold"?,
                                                      "min_similarity"?}
    GET    /v1/collections/{c}                one collection
    PATCH  /v1/collections/{c}                update {"search_mode"?, "grounding"?, "reader_threshold"?,
                                              "min_similarity"?}: a JSON merge patch (RFC 7396): a key absent stays,
                                              null puts it back to its default
    DELETE /v1/collections/{c}                delete it, its documents and its index
    POST   /v1/collections/{c}/search         {"query" | "vector", "top_k"?, "filter"?, "mode"?, "nprobe"?, "rerank"?}

Each route translates JSON to the same domain calls the gRPC servicers make (retrieval's Collections and
Collection), in the worker pool; values are checked there, once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from retrieval import ChunkerConfig, Collection, CollectionConfig, IndexConfig
from service.http.auth import authorize
from service.http.context import HttpContext
from service.http.embeddings import embedder_name
from service.http.errors import ApiError

router = APIRouter(prefix="/v1/collections", tags=["collections"])


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    embedder: str | None = Field(None, description="a local sentence-transformers directory; default MiniLM")
    index: dict[str, Any] | None = Field(None, description="IndexConfig fields to set (kind, m, nbits, metric, ...)")
    chunking: dict[str, Any] | None = Field(None, description="ChunkerConfig fields (chunk_tokens, overlap_tokens)")
    search_mode: str | None = Field(None, description="a search without a mode: hybrid, dense or lexical")
    grounding: str | None = Field(None, description="answers' decoding: free, quote or extract (default: the server's)")
    reader_threshold: float | None = Field(  # strict: true or "1.5" is a 400, not 1.0 / 1.5
        None,
        strict=True,
        description="grounding extract: the margin (best span score minus no-answer score) an answer must reach, in "
        "[-100, 100] (default: the reader's own null_threshold; python -m rag.calibrate_reader finds one)",
    )
    min_similarity: float | None = Field(  # strict, as reader_threshold
        None,
        strict=True,
        description="the dense score (inner product, or -squared L2) the collection's nearest chunk to a question "
        "must reach for an answer, in [-1e6, 1e6]; below it the question is declined (default: no cut)",
    )


class UpdateCollection(BaseModel):
    """A JSON merge patch of a collection's updatable settings (Collections.update): a key absent is unchanged, null
    puts the setting back to its default. Other keys reach Collections.update, whose 400 names the updatable ones."""

    model_config = ConfigDict(extra="allow")

    search_mode: str | None = Field(
        None, description="a search without a mode: hybrid, dense or lexical (null: hybrid)"
    )
    grounding: str | None = Field(None, description="answers' decoding: free, quote or extract (null: the server's)")
    reader_threshold: float | None = Field(  # strict: true or "1.5" is a 400, not 1.0 / 1.5
        None,
        strict=True,
        description="grounding extract: the margin an answer must reach, in [-100, 100] (null: the reader's own)",
    )
    min_similarity: float | None = Field(  # strict, as reader_threshold
        None,
        strict=True,
        description="the dense score the nearest chunk must reach for an answer, in [-1e6, 1e6] (null: no cut)",
    )


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = None
    vector: list[float] | None = None
    top_k: int | None = Field(None, description="hits to return (default: the server's)")
    filter: dict[str, Any] | None = None
    mode: str | None = Field(None, description="dense, lexical or hybrid (default: the collection's)")
    nprobe: int | None = None
    rerank: bool | None = None


def _ctx(request: Request) -> HttpContext:
    return request.app.state.ctx


def _with(obj: Any, fields: dict[str, Any] | None, what: str) -> Any:
    """A config dataclass with the fields a request set; an unknown name is a 400 naming the known ones."""
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(fields or {}) - known)
    if unknown:
        raise ApiError(400, f"unknown {what} field(s) {unknown}; known: {sorted(known)}", param=what)
    return dataclasses.replace(obj, **(fields or {}))


def collection_config(body: CreateCollection) -> CollectionConfig:
    config = CollectionConfig(
        embedder=body.embedder or None,
        index=_with(IndexConfig(), body.index, "index"),
        chunker=_with(ChunkerConfig(), body.chunking, "chunking"),
    )
    if body.search_mode is not None:
        config = _with(config, {"search_mode": body.search_mode}, "collection")
    if body.grounding is not None:
        config = _with(config, {"grounding": body.grounding}, "collection")
    if body.reader_threshold is not None:
        config = _with(config, {"reader_threshold": body.reader_threshold}, "collection")
    if body.min_similarity is not None:
        config = _with(config, {"min_similarity": body.min_similarity}, "collection")
    return config


def collection_json(coll: Collection) -> dict[str, Any]:
    """A collection with its counts and index state (reads SQLite: call it in the worker pool)."""
    config = coll.config  # read once: an update swaps in a new one
    stats = coll.stats()
    return {
        "object": "collection",
        **stats,
        "embedder": embedder_name(config.embedder),
        "index": config.index.to_dict(),
        "chunking": dataclasses.asdict(config.chunker),
        "search_mode": config.search_mode,
        "grounding": config.grounding,  # null: the server's
        "reader_threshold": config.reader_threshold,  # null: the reader's own
        "min_similarity": config.min_similarity,  # null: no cut
    }


def hit_json(h: Any) -> dict[str, Any]:
    return {
        "document_id": h.doc_id,
        "chunk_id": int(h.chunk_id),
        "score": float(h.score),
        "text": h.text,
        "metadata": h.metadata,
        "source": h.source,
        "start": int(h.start),
        "end": int(h.end),
    }


def _page(ctx: HttpContext, page_size: int | None, page_token: str) -> dict[str, Any]:
    page, next_token = ctx.collections.list_page(page_size, page_token)
    return {"object": "list", "data": [collection_json(c) for c in page], "next_page_token": next_token}


@router.get("")
async def list_collections(request: Request, page_size: int | None = None, page_token: str = "") -> dict[str, Any]:
    await authorize(request, "read")
    ctx = _ctx(request)
    return await ctx.run(_page, ctx, page_size, page_token)


@router.post("", status_code=201)
async def create_collection(request: Request, body: CreateCollection) -> dict[str, Any]:
    await authorize(request, "admin", body.name)
    ctx = _ctx(request)
    coll = await ctx.run(ctx.collections.create, body.name, collection_config(body))
    return await ctx.run(collection_json, coll)


@router.get("/{collection}")
async def get_collection(request: Request, collection: str) -> dict[str, Any]:
    await authorize(request, "read", collection)
    ctx = _ctx(request)
    return await ctx.run(collection_json, await ctx.run(ctx.collections.get, collection))


@router.patch("/{collection}")
async def update_collection(request: Request, collection: str, body: UpdateCollection) -> dict[str, Any]:
    """Change the settings that leave the stored vectors as they are; the embedder, index and chunking are fixed."""
    await authorize(request, "admin", collection)
    ctx = _ctx(request)
    settings = {k: getattr(body, k) for k in body.model_fields_set}  # the keys sent, extra ones too
    coll = await ctx.run(ctx.collections.update, collection, **settings)
    return await ctx.run(collection_json, coll)


@router.delete("/{collection}")
async def delete_collection(request: Request, collection: str) -> dict[str, Any]:
    await authorize(request, "admin", collection)
    ctx = _ctx(request)
    await ctx.run(ctx.collections.delete, collection)
    return {"id": collection, "object": "collection.deleted", "deleted": True}


def _search(ctx: HttpContext, collection: str, body: SearchBody) -> dict[str, Any]:
    coll = ctx.collections.get(collection)
    query = body.model_dump(exclude_none=True, exclude={"top_k"})
    if body.top_k is not None:
        query["k"] = body.top_k
    result = coll.search(**query)
    ctx.metrics.embed_seconds.observe(result.embed_ms / 1e3)
    ctx.metrics.search_seconds.observe(result.search_ms / 1e3)
    return {
        "object": "list",
        "data": [hit_json(h) for h in result.hits],
        "embed_ms": result.embed_ms,
        "search_ms": result.search_ms,
    }


@router.post("/{collection}/search")
async def search(request: Request, collection: str, body: SearchBody) -> JSONResponse:
    """The chunks nearest to a query text (or vector), best first, each with its document's span [start, end)."""
    await authorize(request, "read", collection)
    ctx = _ctx(request)
    return JSONResponse(await ctx.run(_search, ctx, collection, body))
