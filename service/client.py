"""A small synchronous client for the pqrag API, used by the CLI, the demo and the tests.

with Client("localhost:50051") as c:
    c.create_collection("docs")
    c.update_collection("docs", reader_threshold=-1.5)   # or clear=["reader_threshold"]: back to the reader's own
    for ack in c.ingest("docs", [{"id": "a", "text": "..."}]):
        ...
    hits = c.search("docs", "what is a list comprehension?", k=5)
    for event in c.ask_stream("docs", "what is a list comprehension?", num_passages=5, max_tokens=64):
        ...                                     # context, then deltas, then final
    result = c.ask("docs", "what is a list comprehension?")   # {"answer", "citations", "final"}

with Client("rag.example:50051", api_key=key, tls_ca="ca.pem") as c:      # an API key over TLS
    ...                                 # mutual TLS: tls_cert="client.pem", tls_key="client.key" as well
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

import grpc
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pqrag.v1 import (
    collections_pb2,
    collections_pb2_grpc,
    documents_pb2,
    documents_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from service.structs import dict_to_struct, mode_from_proto, mode_to_proto, struct_to_dict

DEFAULT_SERVER = "localhost:50051"


def document_message(doc: Any) -> documents_pb2.Document:
    """A Document from a dict (id/text/metadata/source) or any object with those attributes."""
    get = doc.get if isinstance(doc, dict) else (lambda k, default=None: getattr(doc, k, default))
    return documents_pb2.Document(
        id=get("id") or "",
        text=get("text") or "",
        metadata=dict_to_struct(get("metadata") or {}),
        source=get("source") or "",
    )


RANK_FIELDS = ("dense_rank", "dense_score", "lexical_rank", "lexical_score")


def hit_to_dict(h: search_pb2.Hit) -> dict[str, Any]:
    return {
        "doc_id": h.document_id,
        "chunk_id": h.chunk_id,
        "score": h.score,
        "text": h.text,
        "metadata": struct_to_dict(h.metadata),
        "source": h.source,
        "start": h.start,
        "end": h.end,
        # rank (from 1) and score in each retriever's ranking; None where it did not return the hit
        **{f: getattr(h, f) if h.HasField(f) else None for f in RANK_FIELDS},
    }


def citation_to_dict(c: rag_pb2.Citation) -> dict[str, Any]:
    return {
        "number": c.number,
        "doc_id": c.document_id,
        "chunk_id": c.chunk_id,
        "score": c.score,
        "source": c.source,
        "start": c.start,
        "end": c.end,
        "snippet": c.snippet,
    }


def final_to_dict(f: rag_pb2.AnswerEnd) -> dict[str, Any]:
    return {
        "finish_reason": f.finish_reason,
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "retrieval_ms": f.retrieval_ms,
        "time_to_first_token_ms": f.time_to_first_token_ms,
        "total_ms": f.total_ms,
    }


def generation_params(**params: Any) -> rag_pb2.GenerationParams:
    """GenerationParams from keyword arguments (max_tokens=64, temperature=0.7, stop=["\\n\\n"], ...); None = unset.

    Sampling's top-k is spelled sample_top_k (GenerationParams.top_k), as the CLI's --sample-top-k: a bare top_k is
    refused, since it used to mean the passages retrieved (now num_passages).
    """
    if "top_k" in params:
        raise TypeError("top_k is ambiguous: pass num_passages= for the passages retrieved, sample_top_k= for sampling")
    stop = params.pop("stop", None) or []
    if "sample_top_k" in params:
        params["top_k"] = params.pop("sample_top_k")
    return rag_pb2.GenerationParams(stop=list(stop), **{k: v for k, v in params.items() if v is not None})


def collect_answer(
    events: Iterable[rag_pb2.AskResponse], on_delta: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """A whole Ask/Chat stream -> {"answer": str, "citations": [...], "final": {...}}; on_delta sees each text
    delta as it arrives (the CLI streams it to the terminal)."""
    out: dict[str, Any] = {"answer": "", "citations": [], "final": None}
    for ev in events:
        kind = ev.WhichOneof("event")
        if kind == "context":
            out["citations"] = [citation_to_dict(c) for c in ev.context.citations]
        elif kind == "delta":
            out["answer"] += ev.delta.text
            if on_delta is not None:
                on_delta(ev.delta.text)
        elif kind == "final":
            out["final"] = final_to_dict(ev.final)
    return out


def print_answer(events: Iterable[rag_pb2.AskResponse], out: TextIO | None = None) -> dict[str, Any]:
    """Print an Ask/Chat stream as it arrives (the text, then the cited sources and the timings) for a terminal;
    returns the collected answer, as collect_answer. Used by `pqrag ask/chat` and `make demo`."""
    out = out or sys.stdout  # looked up per call: sys.stdout may be replaced (pytest, redirection)

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    result = collect_answer(events, on_delta=write)
    out.write("\n")
    if result["citations"]:
        out.write("\nsources:\n")
        for c in result["citations"]:
            out.write(
                f"  [{c['number']}] {c['source'] or c['doc_id']} (chars {c['start']}-{c['end']}, "
                f"score {c['score']:.3f})\n"
            )
    f = result["final"]
    if f:
        out.write(
            f"({f['completion_tokens']} tokens, {f['finish_reason']}; retrieval {f['retrieval_ms']:.0f} ms, "
            f"first token {f['time_to_first_token_ms']:.0f} ms, total {f['total_ms']:.0f} ms)\n"
        )
    return result


def grounding_to_proto(grounding: str | None) -> int:
    """ "free" | "quote" | "extract" -> Grounding; None -> GROUNDING_UNSPECIFIED."""
    return collections_pb2.Grounding.Value(f"GROUNDING_{(grounding or 'unspecified').upper()}")


def grounding_from_proto(grounding: int) -> str | None:
    """Grounding -> "free" | "quote" | "extract"; None for GROUNDING_UNSPECIFIED."""
    if grounding == collections_pb2.GROUNDING_UNSPECIFIED:
        return None
    return collections_pb2.Grounding.Name(grounding).removeprefix("GROUNDING_").lower()


# Client.update_collection's settings -> UpdateCollectionRequest's mask paths
UPDATE_PATHS = {
    "search_mode": "default_search_mode",
    "grounding": "default_grounding",
    "reader_threshold": "reader_threshold",
    "min_similarity": "min_similarity",
}


def collection_to_dict(c: collections_pb2.Collection) -> dict[str, Any]:
    return {
        "name": c.name,
        "embedder": c.embedder or "default",
        "dimension": c.dimension,
        "documents": c.document_count,
        "chunks": c.chunk_count,
        "index_state": c.index_state,
        "index": {
            "kind": c.index.kind,
            "m": c.index.m,
            "nbits": c.index.nbits,
            "nlist": c.index.nlist,
            "nprobe": c.index.nprobe,
            "metric": c.index.metric,
            "rerank": c.index.rerank,
            "rerank_factor": c.index.rerank_factor,
            "recall_target": c.index.recall_target,
            "min_train_size": c.index.min_train_size,
        },
        "default_search_mode": mode_from_proto(c.default_search_mode),
        "default_grounding": grounding_from_proto(c.default_grounding),  # None: the server's
        "reader_threshold": c.reader_threshold if c.HasField("reader_threshold") else None,  # None: the reader's own
        "min_similarity": c.min_similarity if c.HasField("min_similarity") else None,  # None: no cut
        "index_training": c.index_training,
        "tuning": tuning_to_dict(c.tuning) if c.HasField("tuning") else None,
    }


def tuning_to_dict(t: collections_pb2.IndexTuning) -> dict[str, Any]:
    """What the index measured when it last trained: the chosen setting (None if none qualified), recall, bytes."""
    p = t.params
    chosen = None
    if t.HasField("params"):
        chosen = {"kind": p.kind, "m": p.m, "nbits": p.nbits, "rerank_factor": p.rerank_factor}
        if p.kind == "ivfpq":
            chosen.update(nlist=p.nlist, nprobe=p.nprobe)
    return {
        "params": chosen,
        "recall": round(t.recall, 4),
        "recall_stderr": round(t.recall_stderr, 4),
        "recall_target": t.recall_target,
        "met_target": t.met_target,
        "bytes_per_vector": round(t.bytes_per_vector, 1),
        "trained_vectors": t.trained_vectors,
        "queries": t.queries,
        "settings_trained": t.settings_trained,
        "train_seconds": round(t.train_seconds, 2),
        "reason": t.reason,
    }


class _BearerKey(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends `authorization: Bearer KEY` with every call (on a plaintext channel too, where grpc's call
    credentials would refuse: a loopback server, or a TLS-terminating proxy in front)."""

    def __init__(self, key: str):
        self.header = ("authorization", f"Bearer {key}")

    def _details(self, details):
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class Client:
    def __init__(
        self,
        target: str = DEFAULT_SERVER,
        timeout: float | None = 60.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        channel_options: list[tuple[str, object]] | None = None,
    ):
        """api_key: sent as `authorization: Bearer KEY`. TLS when tls is set or any tls_* file is given: tls_ca is
        the server's CA (None: the system's roots); tls_cert and tls_key, a client certificate for mutual TLS.
        channel_options: more grpc channel options (e.g. ("grpc.max_reconnect_backoff_ms", 1000))."""
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *(channel_options or []),
        ]
        if tls or tls_ca or tls_cert or tls_key:
            from service.tls import client_credentials

            channel = grpc.secure_channel(target, client_credentials(tls_ca, tls_cert, tls_key), options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        self.channel = grpc.intercept_channel(channel, _BearerKey(api_key)) if api_key else channel
        self.collections = collections_pb2_grpc.CollectionsStub(self.channel)
        self.documents = documents_pb2_grpc.DocumentsStub(self.channel)
        self.searcher = search_pb2_grpc.SearchStub(self.channel)
        self.rag = rag_pb2_grpc.RagStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def health(self, service: str = "") -> str:
        resp = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # collections
    def create_collection(
        self,
        name: str,
        embedder: str = "",
        search_mode: str | None = None,
        grounding: str | None = None,
        reader_threshold: float | None = None,
        min_similarity: float | None = None,
        **index: Any,
    ) -> collections_pb2.Collection:
        """index: IndexSpec fields (kind, m, nbits, recall_target, ...) and chunk_tokens / overlap_tokens; None or
        absent: the server's choice. search_mode: what a search naming no mode does (None: hybrid). grounding: how
        answers over it are decoded, "free", "quote" or "extract" (None: the server's default). reader_threshold: the
        extractive reader's no-answer threshold over it, the span-minus-no-answer margin an answer must reach (None:
        the reader's own; `python -m rag.calibrate_reader` finds one from a few of the collection's questions).
        min_similarity: the dense score (inner product, or -squared L2) the collection's nearest chunk to a question
        must reach for a RAG answer; below it the question is declined (None: no cut)."""
        chunking = {k: index.pop(k) for k in ("chunk_tokens", "overlap_tokens") if k in index}
        coll = collections_pb2.Collection(
            name=name,
            embedder=embedder,
            index=collections_pb2.IndexSpec(**{k: v for k, v in index.items() if v is not None}),
            chunking=collections_pb2.ChunkingSpec(**chunking),
            default_search_mode=mode_to_proto(search_mode),
            default_grounding=grounding_to_proto(grounding),
            reader_threshold=reader_threshold,  # None: unset
            min_similarity=min_similarity,  # (likewise)
        )
        return self.collections.CreateCollection(
            collections_pb2.CreateCollectionRequest(collection=coll), timeout=self.timeout
        )

    def update_collection(
        self,
        name: str,
        search_mode: str | None = None,
        grounding: str | None = None,
        reader_threshold: float | None = None,
        min_similarity: float | None = None,
        clear: Iterable[str] = (),
    ) -> collections_pb2.Collection:
        """Change a collection's settings that leave its vectors as they are; the ones given (not None) change, the
        others stay. clear: settings put back to their defaults, among "search_mode" (hybrid), "grounding" (the
        server's), "reader_threshold" (the reader's own) and "min_similarity" (no cut). Returns the collection as
        updated."""
        given = {
            "search_mode": search_mode,
            "grounding": grounding,
            "reader_threshold": reader_threshold,
            "min_similarity": min_similarity,
        }
        clear = list(clear)
        for k in clear:
            if k not in UPDATE_PATHS:
                raise ValueError(f"cannot clear {k!r}: the updatable settings are {', '.join(UPDATE_PATHS)}")
            if given[k] is not None:
                raise ValueError(f"{k} is both given and cleared")
        coll = collections_pb2.Collection(
            name=name,
            default_search_mode=mode_to_proto(search_mode),
            default_grounding=grounding_to_proto(grounding),
            reader_threshold=reader_threshold,  # None: unset
            min_similarity=min_similarity,  # (likewise)
        )
        paths = [UPDATE_PATHS[k] for k, v in given.items() if v is not None or k in clear]  # unset + named: cleared
        request = collections_pb2.UpdateCollectionRequest(
            collection=coll, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return self.collections.UpdateCollection(request, timeout=self.timeout)

    def get_collection(self, name: str) -> collections_pb2.Collection:
        return self.collections.GetCollection(collections_pb2.GetCollectionRequest(name=name), timeout=self.timeout)

    def list_collections(self) -> list[collections_pb2.Collection]:
        out, token = [], ""
        while True:
            resp = self.collections.ListCollections(
                collections_pb2.ListCollectionsRequest(page_token=token), timeout=self.timeout
            )
            out.extend(resp.collections)
            token = resp.next_page_token
            if not token:
                return out

    def delete_collection(self, name: str) -> None:
        self.collections.DeleteCollection(collections_pb2.DeleteCollectionRequest(name=name), timeout=self.timeout)

    # documents
    def _requests(self, collection: str, docs: Iterable[Any]) -> Iterator[documents_pb2.IngestRequest]:
        for i, doc in enumerate(docs):
            yield documents_pb2.IngestRequest(collection=collection if i == 0 else "", document=document_message(doc))

    def ingest(self, collection: str, docs: Iterable[Any]) -> Iterator[documents_pb2.IngestAck]:
        """Streams documents; yields one acknowledgement per document once it is durable."""
        return self.documents.IngestStream(self._requests(collection, docs))

    def ingest_summary(self, collection: str, docs: Iterable[Any]) -> documents_pb2.IngestSummary:
        return self.documents.Ingest(self._requests(collection, docs), timeout=self.timeout)

    def get_document(self, collection: str, document_id: str, include_chunks: bool = False) -> documents_pb2.Document:
        return self.documents.GetDocument(
            documents_pb2.GetDocumentRequest(
                collection=collection, document_id=document_id, include_chunks=include_chunks
            ),
            timeout=self.timeout,
        )

    def delete_document(self, collection: str, document_id: str) -> None:
        self.documents.DeleteDocument(
            documents_pb2.DeleteDocumentRequest(collection=collection, document_id=document_id), timeout=self.timeout
        )

    # search
    def search_raw(
        self,
        collection: str,
        text: str | None = None,
        vector: list[float] | None = None,
        k: int | None = None,  # None: the server's default
        filter: dict | None = None,
        nprobe: int = 0,
        rerank: bool | None = None,
        mode: str | None = None,  # "dense" | "lexical" | "hybrid"; None: the collection's default
        fusion: dict[str, Any] | None = None,  # hybrid: rrf_k, alpha, candidates (None: the server's defaults)
    ) -> search_pb2.SearchResponse:
        req = search_pb2.SearchRequest(collection=collection, nprobe=nprobe, mode=mode_to_proto(mode))
        if fusion:
            req.fusion.CopyFrom(search_pb2.FusionParams(**{k: v for k, v in fusion.items() if v is not None}))
        if k is not None:
            req.top_k = k
        if vector is not None:
            req.vector.values.extend(vector)
        elif text is not None:
            req.text = text
        if filter is not None:
            req.filter.CopyFrom(dict_to_struct(filter))
        if rerank is not None:
            req.rerank = rerank
        return self.searcher.Search(req, timeout=self.timeout)

    def search(self, collection: str, text: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        return [hit_to_dict(h) for h in self.search_raw(collection, text, **kw).hits]

    # rag
    @staticmethod
    def _rag_fields(
        req,
        num_passages: int | None,
        filter: dict | None,
        mode: str | None,
        fusion: dict | None,
        params: dict,
        grounding: str | None = None,
    ) -> None:
        if grounding is not None:  # "free" | "quote" | "extract"; None: the collection's, else the server's default
            req.grounding = grounding_to_proto(grounding)
        if num_passages is not None:
            req.num_passages = num_passages
        if filter is not None:
            req.filter.CopyFrom(dict_to_struct(filter))
        req.mode = mode_to_proto(mode)
        if fusion:
            req.fusion.CopyFrom(search_pb2.FusionParams(**{k: v for k, v in fusion.items() if v is not None}))
        req.params.CopyFrom(generation_params(**params))

    def ask_stream(
        self,
        collection: str,
        question: str,
        num_passages: int | None = None,
        filter: dict | None = None,
        mode: str | None = None,
        fusion: dict | None = None,
        grounding: str | None = None,
        **params: Any,
    ):
        """The raw AskResponse stream (a grpc call: iterate it, or .cancel() it). num_passages: passages retrieved
        (None: the server's default); mode, fusion: how they are retrieved, as for search (None: the collection's
        default); grounding: "free", "quote" or "extract" (None: the collection's, else the server's default);
        params: GenerationParams fields (see generation_params)."""
        req = rag_pb2.AskRequest(collection=collection, question=question)
        self._rag_fields(req, num_passages, filter, mode, fusion, params, grounding)
        return self.rag.Ask(req, timeout=self.timeout)

    def chat_stream(
        self,
        collection: str,
        messages: list[dict[str, str]],
        num_passages: int | None = None,
        filter: dict | None = None,
        mode: str | None = None,
        fusion: dict | None = None,
        grounding: str | None = None,
        **params: Any,
    ):
        req = rag_pb2.ChatRequest(
            collection=collection,
            messages=[rag_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        )
        self._rag_fields(req, num_passages, filter, mode, fusion, params, grounding)
        return self.rag.Chat(req, timeout=self.timeout)

    def ask(self, collection: str, question: str, **kw: Any) -> dict[str, Any]:
        return collect_answer(self.ask_stream(collection, question, **kw))

    def chat(self, collection: str, messages: list[dict[str, str]], **kw: Any) -> dict[str, Any]:
        return collect_answer(self.chat_stream(collection, messages, **kw))
