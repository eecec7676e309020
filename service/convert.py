"""Pure functions between protobuf messages and the domain's objects (retrieval's and rag's).

Validation here covers what only the wire format can get wrong (unset fields, a collection named
differently mid-stream); everything about values is checked once, in the domain, and comes back as a
`common.errors` exception that the servicer maps to a status code.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2, timestamp_pb2

from common.errors import InvalidArgumentError, quote
from pqrag.v1 import collections_pb2, documents_pb2, rag_pb2, search_pb2
from rag.passages import Passage
from rag.pipeline import AnswerEnd, AnswerEvent, Context, TextDelta
from rag.request import AnswerRequest
from retrieval import ChunkerConfig, CollectionConfig, Document, IndexConfig
from service import structs
from service.structs import dict_to_struct, struct_to_dict

EMPTY = empty_pb2.Empty()


def require_name(name: str, what: str = "collection") -> str:
    if not name:
        raise InvalidArgumentError(f"{what} name is required")
    return name


def require_document_id(doc_id: str) -> str:
    if not doc_id:
        raise InvalidArgumentError("document_id is required")
    return doc_id


# --- collections ---------------------------------------------------------------------------------


def collection_config_from_proto(c: collections_pb2.Collection) -> tuple[str, CollectionConfig]:
    name = require_name(c.name)
    index = IndexConfig()
    spec = c.index
    overrides = {
        "kind": spec.kind or None,
        "m": spec.m or None,
        "nbits": spec.nbits or None,
        "nlist": spec.nlist or None,
        "nprobe": spec.nprobe or None,
        "metric": spec.metric or None,
        "backend": spec.backend or None,
        "rerank": spec.rerank if spec.HasField("rerank") else None,
        "recall_target": spec.recall_target if spec.HasField("recall_target") else None,
        "rerank_factor": spec.rerank_factor or None,
        "min_train_size": spec.min_train_size or None,
    }
    index = _replace(index, overrides)
    chunker = _replace(
        ChunkerConfig(),
        {"chunk_tokens": c.chunking.chunk_tokens or None, "overlap_tokens": c.chunking.overlap_tokens or None},
    )
    config = CollectionConfig(embedder=c.embedder or None, index=index, chunker=chunker)
    config = _replace(
        config,
        {
            "search_mode": mode_from_proto(c.default_search_mode),
            "grounding": grounding_from_proto(c.default_grounding),
            "reader_threshold": reader_threshold_from_proto(c),
            "min_similarity": min_similarity_from_proto(c),
        },
    )
    return name, config


# UpdateCollection: the mask paths that may change -> Collections.update's settings. The fixed fields shape the stored
# vectors (changing one takes a new collection); Collection's other fields are output only.
UPDATE_PATHS = {
    "default_search_mode": "search_mode",
    "default_grounding": "grounding",
    "reader_threshold": "reader_threshold",
    "min_similarity": "min_similarity",
}
FIXED_FIELDS = ("embedder", "index", "chunking")


def reader_threshold_from_proto(c: collections_pb2.Collection) -> float | None:
    """Unset: None (the reader's own threshold); a value is checked by the catalog (finite, in range)."""
    return c.reader_threshold if c.HasField("reader_threshold") else None


def min_similarity_from_proto(c: collections_pb2.Collection) -> float | None:
    """Unset: None (no cut on the nearest chunk's dense score); a value is checked by the catalog (finite, in range)."""
    return c.min_similarity if c.HasField("min_similarity") else None


def collection_update_from_proto(request: collections_pb2.UpdateCollectionRequest) -> tuple[str, dict[str, Any]]:
    """UpdateCollectionRequest -> (name, Collections.update's settings): the fields update_mask names (an unset one:
    None, back to its default), or with no mask the updatable fields the collection populates (AIP-134)."""
    c = request.collection
    name = require_name(c.name)
    values = {  # read only for the paths asked: a field outside the mask is ignored, whatever it holds
        "default_search_mode": lambda: mode_from_proto(c.default_search_mode),  # None: hybrid, the default
        "default_grounding": lambda: grounding_from_proto(c.default_grounding),
        "reader_threshold": lambda: reader_threshold_from_proto(c),
        "min_similarity": lambda: min_similarity_from_proto(c),
    }
    paths = list(dict.fromkeys(request.update_mask.paths))
    wrong = [p for p in paths if p not in UPDATE_PATHS]
    if wrong:
        raise InvalidArgumentError(
            f"update_mask path {quote(wrong[0])} cannot be updated; the updatable paths are "
            f"{', '.join(UPDATE_PATHS)} (embedder, index and chunking shape the stored vectors: changing them takes a "
            "new collection; the other fields are output only)"
        )
    if not paths:
        paths = [p for p in UPDATE_PATHS if values[p]() is not None]
    return name, {UPDATE_PATHS[p]: values[p]() for p in paths}


def fixed_fields_set(c: collections_pb2.Collection) -> list[str]:
    """The fields of FIXED_FIELDS that `c` populates."""
    return [f for f in FIXED_FIELDS if (bool(c.embedder) if f == "embedder" else c.HasField(f))]


def check_fixed_fields(c: collections_pb2.Collection, current: collections_pb2.Collection) -> None:
    """An UpdateCollection without a mask may repeat the fixed fields (a collection read with GetCollection, changed
    and sent back), not change them: a populated one that differs from `current` is InvalidArgumentError."""
    changed = [f for f in fixed_fields_set(c) if getattr(c, f) != getattr(current, f)]
    if changed:
        raise InvalidArgumentError(
            f"{', '.join(changed)} cannot be updated: fixed at create, they shape the stored vectors (changing them "
            f"takes a new collection); the updatable fields are {', '.join(UPDATE_PATHS)} (name them in update_mask)"
        )


def _replace(obj, overrides: dict[str, Any]):
    import dataclasses

    return dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})


def collection_to_proto(coll) -> collections_pb2.Collection:
    """coll: a retrieval.collection.Collection. Reads its stats (touches SQLite: call off the loop)."""
    cfg = coll.config
    stats = coll.stats()
    created = timestamp_pb2.Timestamp()
    created.FromSeconds(int(stats.get("created_at", 0)))
    ix = cfg.index
    return collections_pb2.Collection(
        name=coll.name,
        embedder=cfg.embedder or "",
        dimension=int(stats["dimension"]),
        index=collections_pb2.IndexSpec(
            kind=ix.kind or "",
            m=ix.m or 0,
            nbits=ix.nbits or 0,
            nlist=ix.nlist or 0,
            nprobe=ix.nprobe or 0,
            metric=ix.metric,
            backend=ix.backend or "",
            rerank=bool(ix.rerank),
            recall_target=ix.recall_target,
            rerank_factor=ix.rerank_factor or 0,
            min_train_size=ix.min_train_size,
        ),
        chunking=collections_pb2.ChunkingSpec(
            chunk_tokens=cfg.chunker.chunk_tokens, overlap_tokens=cfg.chunker.overlap_tokens
        ),
        document_count=int(stats["document_count"]),
        chunk_count=int(stats["chunk_count"]),
        index_state=str(stats["index_state"]),
        create_time=created,
        default_search_mode=structs.mode_to_proto(cfg.search_mode),
        default_grounding=grounding_to_proto(cfg.grounding),
        reader_threshold=cfg.reader_threshold,  # None: left unset
        min_similarity=cfg.min_similarity,  # (likewise)
        tuning=tuning_to_proto(stats["index"]["tuning"]),
        index_training=bool(stats["training"]),
    )


def tuning_to_proto(report: dict[str, Any] | None) -> collections_pb2.IndexTuning | None:
    """The tuning report of VectorIndex.stats() (retrieval.tuning.tune) -> IndexTuning; None before any tuning."""
    if report is None:
        return None
    p = report.get("params")
    params = None
    if p is not None:
        params = collections_pb2.IndexSpec(
            kind=p["kind"],
            m=p["m"],
            nbits=p["nbits"],
            nlist=p["nlist"],
            nprobe=p["nprobe"],
            rerank_factor=p["rerank_factor"],
        )
    return collections_pb2.IndexTuning(
        params=params,
        recall=float(report.get("recall", 0.0)),
        recall_stderr=float(report.get("recall_stderr", 0.0)),
        recall_target=float(report["recall_target"]),
        met_target=bool(report["met"]),
        bytes_per_vector=float(report.get("bytes_per_vector", 0.0)),
        trained_vectors=int(report["vectors"]),
        queries=int(report["queries"]),
        settings_trained=int(report.get("settings_trained", 0)),
        train_seconds=float(report.get("seconds", 0.0)),
        reason=report.get("reason") or "",
    )


# --- search modes --------------------------------------------------------------------------------


def mode_from_proto(mode: int) -> str | None:
    """SearchMode -> the domain's mode name; None for SEARCH_MODE_UNSPECIFIED (the collection's default)."""
    try:
        return structs.mode_from_proto(mode)
    except ValueError:
        raise InvalidArgumentError(f"unknown SearchMode {mode}; use DENSE, LEXICAL, HYBRID or leave it unset") from None


def fusion_from_proto(f: search_pb2.FusionParams) -> dict[str, Any]:
    """The FusionParams fields the client set, by name (retrieval.FusionParams's)."""
    return {field.name: value for field, value in f.ListFields()}


# --- documents -----------------------------------------------------------------------------------


def stream_collection(req: documents_pb2.IngestRequest, current: str, position: int) -> str:
    """The collection a streamed IngestRequest writes to: set on the first, the same (or empty) after."""
    if not current:
        if not req.collection:
            raise InvalidArgumentError("the first IngestRequest must name the collection")
        return req.collection
    if req.collection and req.collection != current:
        raise InvalidArgumentError(
            f"document {position} names collection {req.collection!r} but the stream writes to {current!r}; "
            "use one stream per collection"
        )
    return current


def document_from_proto(d: documents_pb2.Document, position: int) -> Document:
    if not d.text.strip():
        label = f"document {position}" + (f" (id {d.id!r})" if d.id else "")
        raise InvalidArgumentError(f"{label} has empty text; send the document's text in Document.text")
    return Document(id=d.id or None, text=d.text, metadata=struct_to_dict(d.metadata), source=d.source)


def document_to_proto(doc) -> documents_pb2.Document:
    chunks = [
        documents_pb2.Chunk(id=int(c.chunk_id), text=c.text, start=int(c.start), end=int(c.end))
        for c in (doc.chunks or [])
    ]
    return documents_pb2.Document(
        id=doc.id,
        text=doc.text,
        metadata=dict_to_struct(doc.metadata),
        source=doc.source or "",
        chunk_count=int(doc.chunk_count),
        chunks=chunks,
    )


# --- search --------------------------------------------------------------------------------------


def search_query_from_proto(req: search_pb2.SearchRequest) -> tuple[str, dict[str, Any]]:
    """(collection name, keyword arguments for Collection.search). Unset fields are left out: the domain's
    defaults apply (k, nprobe, rerank)."""
    which = req.WhichOneof("query")
    if which is None:
        raise InvalidArgumentError("set the query: SearchRequest.text or SearchRequest.vector")
    query: dict[str, Any] = {
        "query": req.text if which == "text" else None,
        "vector": list(req.vector.values) if which == "vector" else None,
        "filter": struct_to_dict(req.filter) if req.HasField("filter") else None,
        "nprobe": req.nprobe or None,
        "rerank": req.rerank if req.HasField("rerank") else None,
        "mode": mode_from_proto(req.mode),
        **fusion_from_proto(req.fusion),
    }
    if req.HasField("top_k"):
        query["k"] = req.top_k
    return require_name(req.collection), query


def search_result_to_proto(result) -> search_pb2.SearchResponse:
    hits = [
        search_pb2.Hit(
            document_id=h.doc_id,
            chunk_id=int(h.chunk_id),
            score=float(h.score),
            text=h.text,
            metadata=dict_to_struct(h.metadata),
            source=h.source or "",
            start=int(h.start),
            end=int(h.end),
            dense_rank=h.dense_rank,
            dense_score=h.dense_score,
            lexical_rank=h.lexical_rank,
            lexical_score=h.lexical_score,
        )
        for h in result.hits
    ]
    return search_pb2.SearchResponse(hits=hits, embed_ms=result.embed_ms, search_ms=result.search_ms)


# --- rag -----------------------------------------------------------------------------------------


def sampling_from_proto(p: rag_pb2.GenerationParams) -> dict[str, Any]:
    """The GenerationParams fields the client set, by name (vLLM's, as SamplingParams spells them)."""
    fields = {f.name: value for f, value in p.ListFields() if f.name != "stop"}
    if p.stop:
        fields["stop"] = list(p.stop)
    return fields


_GROUNDINGS: dict[str | None, int] = {  # rag.request.GROUNDINGS (and None: unset) <-> Grounding
    None: collections_pb2.GROUNDING_UNSPECIFIED,
    "free": collections_pb2.GROUNDING_FREE,
    "quote": collections_pb2.GROUNDING_QUOTE,
    "extract": collections_pb2.GROUNDING_EXTRACT,
}


def grounding_from_proto(grounding: int) -> str | None:
    """Grounding -> "free" / "quote" / "extract"; None for GROUNDING_UNSPECIFIED (the collection's, the server's or
    the model's default)."""
    names = {v: k for k, v in _GROUNDINGS.items()}
    if grounding not in names:
        raise InvalidArgumentError(f"unknown Grounding {grounding}; use FREE, QUOTE, EXTRACT or leave it unset")
    return names[grounding]


def grounding_to_proto(grounding: str | None) -> int:
    return _GROUNDINGS[grounding]


def _answer_fields(req: rag_pb2.AskRequest | rag_pb2.ChatRequest) -> dict[str, Any]:
    """The AnswerRequest fields Ask and Chat share; unset ones are left out (the domain's defaults)."""
    fields: dict[str, Any] = {"collection": require_name(req.collection), "sampling": sampling_from_proto(req.params)}
    if req.HasField("num_passages"):
        fields["num_passages"] = req.num_passages
    if req.HasField("filter"):
        fields["filter"] = struct_to_dict(req.filter)
    if req.mode != search_pb2.SEARCH_MODE_UNSPECIFIED:
        fields["mode"] = mode_from_proto(req.mode)
    if req.grounding != collections_pb2.GROUNDING_UNSPECIFIED:
        fields["grounding"] = grounding_from_proto(req.grounding)
    if req.HasField("fusion"):
        fields["fusion"] = fusion_from_proto(req.fusion)
    return fields


def ask_request_from_proto(req: rag_pb2.AskRequest) -> AnswerRequest:
    return AnswerRequest.ask(question=req.question, **_answer_fields(req))


def chat_request_from_proto(req: rag_pb2.ChatRequest) -> AnswerRequest:
    messages = [{"role": m.role, "content": m.content} for m in req.messages]
    return AnswerRequest(messages=messages, **_answer_fields(req))


def citation_to_proto(p: Passage) -> rag_pb2.Citation:
    return rag_pb2.Citation(
        number=p.number,
        document_id=p.doc_id,
        chunk_id=int(p.chunk_id),
        score=float(p.score),
        source=p.source or "",
        start=int(p.start),
        end=int(p.end),
        snippet=p.text,
    )


def answer_event_to_proto(event: AnswerEvent) -> rag_pb2.AskResponse:
    if isinstance(event, Context):
        return rag_pb2.AskResponse(context=rag_pb2.Context(citations=[citation_to_proto(p) for p in event.passages]))
    if isinstance(event, TextDelta):
        return rag_pb2.AskResponse(delta=rag_pb2.AnswerDelta(text=event.text))
    assert isinstance(event, AnswerEnd), event
    return rag_pb2.AskResponse(
        final=rag_pb2.AnswerEnd(
            finish_reason=event.finish_reason,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            retrieval_ms=event.retrieval_ms,
            time_to_first_token_ms=event.time_to_first_token_ms,
            total_ms=event.total_ms,
        )
    )
