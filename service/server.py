"""The pqrag gRPC server: thin servicers over `retrieval.Collections`.

Servicers validate requests, call the domain in a worker pool (embedding and index search are
blocking, CPU- or GPU-bound work that must not stall the event loop), map domain errors to status
codes and translate messages. They own no retrieval logic.

    server, port = await create_server(ServerConfig(data_dir="data", port=0))
    await server.start()
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PqragError,
    ResourceExhaustedError,
)
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
from retrieval.catalog import Collections
from service import convert
from service.metrics import ServerMetrics
from service.rag import GeneratorUnavailableError, answer, ask_query_from_proto, chat_query_from_proto

log = logging.getLogger("pqrag.server")

SERVICE_NAMES = (
    collections_pb2.DESCRIPTOR.services_by_name["Collections"].full_name,
    documents_pb2.DESCRIPTOR.services_by_name["Documents"].full_name,
    search_pb2.DESCRIPTOR.services_by_name["Search"].full_name,
    rag_pb2.DESCRIPTOR.services_by_name["Rag"].full_name,
)

# Documents handed to one Collection.ingest call: large enough to batch the embedder, small enough
# that acknowledgements keep flowing.
INGEST_BATCH = 32


@dataclass
class ServerConfig:
    data_dir: str = "data"
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (tests)
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 16 * 1024 * 1024
    workers: int = 4  # threads for embedding, search and SQLite
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None disables
    # The colocated generator: a checkpoint directory (config.json + safetensors + tokenizer.json), or None to
    # serve retrieval alone (Rag answers FAILED_PRECONDITION).
    model: str | None = None
    device: str | None = None  # generator device; None: CUDA when available
    kv_cache_memory: int | None = None  # bytes of KV cache; None: sized by the engine
    max_num_seqs: int = 64  # sequences decoded together


_STATUS = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (GeneratorUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _rpc(method: str) -> Callable:
    """Metrics and error mapping for one servicer method (unary, client-streaming or bidi)."""

    def decorate(fn: Callable) -> Callable:
        async def fail(self, context, outcome, exc: BaseException) -> None:
            code = status_for(exc)
            outcome["code"] = code.name
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
                await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
            await context.abort(code, str(exc))

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self, request, context):
                with self.metrics.observe(method) as outcome:
                    try:
                        async for item in fn(self, request, context):
                            yield item
                    except Exception as exc:
                        if context.code() is not None and context.code() != grpc.StatusCode.OK:
                            raise  # already aborted
                        await fail(self, context, outcome, exc)

            return stream_wrapper

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            with self.metrics.observe(method) as outcome:
                try:
                    return await fn(self, request, context)
                except Exception as exc:
                    if context.code() is not None and context.code() != grpc.StatusCode.OK:
                        raise  # already aborted with its own code
                    await fail(self, context, outcome, exc)

        return wrapper

    return decorate


class _Base:
    def __init__(self, collections: Collections, executor: ThreadPoolExecutor, metrics: ServerMetrics):
        self.collections = collections
        self.executor = executor
        self.metrics = metrics

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking domain work in the worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))


class CollectionsServicer(_Base, collections_pb2_grpc.CollectionsServicer):
    @_rpc("CreateCollection")
    async def CreateCollection(self, request, context):
        name, config = convert.collection_config_from_proto(request.collection)
        coll = await self.run(self.collections.create, name, config)
        return await self.run(convert.collection_to_proto, coll)

    @_rpc("GetCollection")
    async def GetCollection(self, request, context):
        coll = await self.run(self.collections.get, convert.require_name(request.name))
        return await self.run(convert.collection_to_proto, coll)

    @_rpc("ListCollections")
    async def ListCollections(self, request, context):
        page_size = request.page_size or 1000
        if page_size > 1000:
            raise InvalidArgumentError(f"page_size must be at most 1000, got {page_size}")
        colls = await self.run(self.collections.list)
        names = sorted(c.name for c in colls)
        start = 0
        if request.page_token:
            # The token is the last name of the previous page, so deletions between pages skip nothing.
            start = next((i for i, n in enumerate(names) if n > request.page_token), len(names))
        page = [c for c in sorted(colls, key=lambda c: c.name)][start : start + page_size]
        next_token = page[-1].name if start + page_size < len(names) and page else ""
        protos = [await self.run(convert.collection_to_proto, c) for c in page]
        return collections_pb2.ListCollectionsResponse(collections=protos, next_page_token=next_token)

    @_rpc("DeleteCollection")
    async def DeleteCollection(self, request, context):
        await self.run(self.collections.delete, convert.require_name(request.name))
        return convert.EMPTY


class DocumentsServicer(_Base, documents_pb2_grpc.DocumentsServicer):
    async def _ingest_batches(self, request_iterator) -> AsyncIterator[tuple[str, list, int]]:
        """Read the request stream into batches of domain documents.

        A reader task fills a queue so a batch is whatever has arrived (at least one document): a
        client that waits for each acknowledgement before sending the next document never stalls.
        Yields (collection, documents, index of the first document in the stream).
        """
        queue: asyncio.Queue = asyncio.Queue(maxsize=4 * INGEST_BATCH)
        done = object()

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    await queue.put(req)
                await queue.put(done)
            except BaseException as exc:  # surfaced to the consumer
                await queue.put(exc)

        task = asyncio.ensure_future(reader())
        collection_name = ""
        position = 0
        try:
            finished = False
            while not finished:
                items = [await queue.get()]
                while len(items) < INGEST_BATCH and not queue.empty():
                    items.append(queue.get_nowait())
                batch = []
                for item in items:
                    if item is done:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    collection_name = convert.stream_collection(item, collection_name, position + len(batch))
                    batch.append(convert.document_from_proto(item.document, position + len(batch)))
                if batch:
                    yield collection_name, batch, position
                    position += len(batch)
        finally:
            task.cancel()

    async def _ingest(self, collection_name: str, batch: list, position: int):
        coll = await self.run(self.collections.get, collection_name)
        try:
            results = await self.run(coll.ingest, batch)
        except PqragError as exc:
            if not position:
                raise
            # Earlier batches were acknowledged and stay stored; say so, so the client resumes right.
            raise type(exc)(f"{exc} (the {position} documents before this batch are stored)") from exc
        self.metrics.ingested_documents.labels(collection_name).inc(len(results))
        self.metrics.ingested_chunks.labels(collection_name).inc(sum(r.chunk_count for r in results))
        return results

    @_rpc("Ingest")
    async def Ingest(self, request_iterator, context):
        summary = documents_pb2.IngestSummary()
        async for name, batch, position in self._ingest_batches(request_iterator):
            summary.collection = name
            for r in await self._ingest(name, batch, position):
                summary.document_count += 1
                summary.chunk_count += r.chunk_count
                summary.replaced_count += int(r.replaced)
                summary.document_ids.append(r.doc_id)
        if not summary.collection:
            raise InvalidArgumentError("the stream held no documents: send at least one IngestRequest")
        return summary

    @_rpc("IngestStream")
    async def IngestStream(self, request_iterator, context):
        async for name, batch, position in self._ingest_batches(request_iterator):
            for i, r in enumerate(await self._ingest(name, batch, position)):
                yield documents_pb2.IngestAck(
                    document_id=r.doc_id, chunk_count=r.chunk_count, replaced=r.replaced, index=position + i
                )

    @_rpc("GetDocument")
    async def GetDocument(self, request, context):
        coll = await self.run(self.collections.get, convert.require_name(request.collection))
        doc_id = convert.require_document_id(request.document_id)
        doc = await self.run(coll.get_document, doc_id, include_chunks=request.include_chunks)
        return convert.document_to_proto(doc)

    @_rpc("DeleteDocument")
    async def DeleteDocument(self, request, context):
        coll = await self.run(self.collections.get, convert.require_name(request.collection))
        await self.run(coll.delete_document, convert.require_document_id(request.document_id))
        return convert.EMPTY


class SearchServicer(_Base, search_pb2_grpc.SearchServicer):
    @_rpc("Search")
    async def Search(self, request, context):
        query = convert.search_query_from_proto(request)
        coll = await self.run(self.collections.get, query.pop("collection"))
        result = await self.run(coll.search, **query)
        self.metrics.embed_seconds.observe(result.embed_ms / 1e3)
        self.metrics.search_seconds.observe(result.search_ms / 1e3)
        return convert.search_result_to_proto(result)


class RagServicer(_Base, rag_pb2_grpc.RagServicer):
    def __init__(self, *args, llm=None):
        super().__init__(*args)
        self.llm = llm

    @_rpc("Ask")
    async def Ask(self, request, context):
        async for message in answer(self, self.llm, ask_query_from_proto(request)):
            yield message

    @_rpc("Chat")
    async def Chat(self, request, context):
        async for message in answer(self, self.llm, chat_query_from_proto(request)):
            yield message


def load_generator(config: ServerConfig):
    """The AsyncLLM for config.model (started), or None without one."""
    if not config.model:
        return None
    from llm.async_engine import AsyncLLM

    kw = {"max_num_seqs": config.max_num_seqs}
    if config.kv_cache_memory:
        kw["kv_cache_memory"] = config.kv_cache_memory
    llm = AsyncLLM.from_dir(config.model, device=config.device, **kw)
    if llm.tokenizer is None:
        raise ValueError(f"{config.model} has no tokenizer.json: the generator needs one to build prompts")
    try:  # the Rag prompt needs the chat template's special tokens: refuse at startup, not on every request
        llm.tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=True)
    except ValueError as exc:  # not started yet: no engine thread to stop
        raise ValueError(f"{config.model}: {exc} (serve it with --no-generator, or give it a pqrag tokenizer)") from exc
    llm.start()
    log.info("generator %s loaded (%d layers, %d experts)", config.model, llm.config.num_layers, llm.config.num_experts)
    return llm


async def create_server(config: ServerConfig) -> tuple[grpc.aio.Server, int, Collections]:
    """Build (not start) the server; returns (server, bound port, the collections it serves)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="pqrag-worker")
    collections = Collections(config.data_dir)
    metrics = ServerMetrics()
    args = (collections, executor, metrics)
    collections_pb2_grpc.add_CollectionsServicer_to_server(CollectionsServicer(*args), server)
    documents_pb2_grpc.add_DocumentsServicer_to_server(DocumentsServicer(*args), server)
    search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(*args), server)
    llm = load_generator(config)
    rag_pb2_grpc.add_RagServicer_to_server(RagServicer(*args, llm=llm), server)
    if llm is not None:
        metrics.watch_engine(llm.metrics)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    if config.metrics_port is not None:
        metrics.serve_http(config.metrics_port, addr=config.host)
    server.pqrag_executor = executor  # type: ignore[attr-defined]  # shut down with the server
    server.pqrag_metrics = metrics  # type: ignore[attr-defined]
    server.pqrag_llm = llm  # type: ignore[attr-defined]  # its engine thread stops with the server
    return server, port, collections


def shutdown(server: grpc.aio.Server) -> None:
    """After server.stop(): the generator's thread and the worker pool (the caller closes the collections)."""
    if server.pqrag_llm is not None:
        server.pqrag_llm.shutdown()
    server.pqrag_executor.shutdown(wait=True)


async def serve(config: ServerConfig, ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight RPCs and close the store."""
    server, port, collections = await create_server(config)
    await server.start()
    log.info("pqrag serving on %s:%d (data dir %s)", config.host, port, config.data_dir)
    if ready is not None:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=5)
    shutdown(server)
    collections.close()
