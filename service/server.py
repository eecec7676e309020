"""The pqrag gRPC server: builds the servicers over the domain (retrieval's Collections, rag's pipeline and the
colocated generator), health and reflection, and runs them until a signal.

    server = await create_server(ServerConfig(data_dir="data", port=0))
    await server.start()              # serving on server.port
    ...
    await server.stop(grace=5)        # drains calls, stops the generator and the workers, closes the store
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
from rag.generator import load_generator
from retrieval import Collections
from service.config import ServerConfig
from service.metrics import ServerMetrics
from service.servicers.collections import CollectionsServicer
from service.servicers.documents import DocumentsServicer
from service.servicers.rag import RagServicer
from service.servicers.search import SearchServicer

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM

log = logging.getLogger("pqrag.server")

SERVICE_NAMES = (
    collections_pb2.DESCRIPTOR.services_by_name["Collections"].full_name,
    documents_pb2.DESCRIPTOR.services_by_name["Documents"].full_name,
    search_pb2.DESCRIPTOR.services_by_name["Search"].full_name,
    rag_pb2.DESCRIPTOR.services_by_name["Rag"].full_name,
)

__all__ = ["SERVICE_NAMES", "Server", "ServerConfig", "create_server", "serve"]


@dataclass
class Server:
    """A built (not yet started) pqrag server and everything it owns, which stop() releases."""

    grpc_server: grpc.aio.Server
    port: int  # the bound port (the one chosen, for port 0)
    collections: Collections
    generator: AsyncLLM | None  # None: retrieval only (Rag answers FAILED_PRECONDITION)
    metrics: ServerMetrics
    executor: ThreadPoolExecutor  # the worker pool for blocking domain work

    async def start(self) -> None:
        await self.grpc_server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish for `grace` seconds, then stop the generator's thread and
        the worker pool and close the collections (snapshotting their indexes)."""
        await self.grpc_server.stop(grace)
        if self.generator is not None:
            self.generator.shutdown()
        self.executor.shutdown(wait=True)
        self.metrics.close()
        self.collections.close()


async def create_server(config: ServerConfig) -> Server:
    """Build (not start) the server: open the data dir, load the generator, bind the port."""
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="pqrag-worker")
    collections = Collections(config.data_dir)
    generator = None
    try:
        if config.model:
            generator = load_generator(config.model, device=config.device, **config.engine)
        return await _build(config, collections, executor, generator)
    except BaseException:
        if generator is not None:
            generator.shutdown()
        executor.shutdown(wait=False)
        collections.close(snapshot=False)
        raise


async def _build(
    config: ServerConfig, collections: Collections, executor: ThreadPoolExecutor, generator: AsyncLLM | None
) -> Server:
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    metrics = ServerMetrics()
    args = (collections, executor, metrics)
    collections_pb2_grpc.add_CollectionsServicer_to_server(CollectionsServicer(*args), server)
    documents_pb2_grpc.add_DocumentsServicer_to_server(DocumentsServicer(*args), server)
    search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(*args), server)
    rag_pb2_grpc.add_RagServicer_to_server(RagServicer(*args, generator=generator), server)
    if generator is not None:
        metrics.watch_engine(generator.metrics)

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
    return Server(server, port, collections, generator, metrics, executor)


async def serve(config: ServerConfig, ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight RPCs and close the store."""
    server = await create_server(config)
    await server.start()
    log.info("pqrag serving on %s:%d (data dir %s)", config.host, server.port, config.data_dir)
    if ready is not None:
        ready(server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=5)
