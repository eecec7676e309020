"""The pqrag gRPC server: builds the servicers over the domain (retrieval's Collections, rag's pipeline, the
colocated generator and the extractive reader), health and reflection, and runs them until a signal.

    server = await create_server(ServerConfig(data_dir="data", port=0))
    await server.start()              # serving on server.port
    ...
    await server.stop(grace=5)        # drains calls, stops the generator and the workers, closes the store

Every call passes the gate first (service.gate: API keys, rate limits, decoding, scopes, audit). Health tells the
truth (service.health): NOT_SERVING when the store fails, the generator's engine dies or the server drains.

serve() runs until SIGTERM/SIGINT: health NOT_SERVING, new calls refused (UNAVAILABLE), in-flight ones get
`grace_period` seconds, index snapshots are written, exit 0; a second signal exits at once. When the generator's
engine thread dies the server does the same and exits EXIT_ENGINE_DIED, for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.errors import InvalidArgumentError
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
from service.gate import Gate
from service.health import Health
from service.http.server import HttpServer, create_http_server
from service.metrics import ServerMetrics
from service.servicers.collections import CollectionsServicer
from service.servicers.documents import DocumentsServicer
from service.servicers.rag import RagServicer
from service.servicers.search import SearchServicer
from service.tls import ServerTLS

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM
    from rag.reader import Reader

log = logging.getLogger("pqrag.server")

SERVICE_NAMES = (
    collections_pb2.DESCRIPTOR.services_by_name["Collections"].full_name,
    documents_pb2.DESCRIPTOR.services_by_name["Documents"].full_name,
    search_pb2.DESCRIPTOR.services_by_name["Search"].full_name,
    rag_pb2.DESCRIPTOR.services_by_name["Rag"].full_name,
)

__all__ = ["EXIT_ENGINE_DIED", "SERVICE_NAMES", "Server", "ServerConfig", "create_server", "serve"]

EXIT_ENGINE_DIED = 70  # EX_SOFTWARE: the generator's engine thread died; a supervisor restarts the process


@dataclass
class Server:
    """A built (not yet started) pqrag server and everything it owns, which stop() releases."""

    grpc_server: grpc.aio.Server
    port: int  # the bound port (the one chosen, for port 0)
    collections: Collections
    generator: AsyncLLM | None  # None: Rag answers extract only (with a reader), the rest FAILED_PRECONDITION
    metrics: ServerMetrics
    executor: ThreadPoolExecutor  # the worker pool for blocking domain work
    http: HttpServer | None = None  # the HTTP front door (ServerConfig.http_port), over the same domain objects
    gate: Gate | None = None  # keys, rate limits, admission, audit, the interceptor (service.gate)
    health: Health | None = None
    bulk_executor: ThreadPoolExecutor | None = None  # ingestion's pool, apart from the queries'
    metrics_port: int | None = None  # the bound /metrics port, when served
    fatal: asyncio.Event | None = None  # set when the server must exit non-zero (the engine died)
    reader: Reader | None = None  # the extractive reader of extract answers (ServerConfig.reader); None: none

    def engine_died(self, exc: BaseException) -> None:
        """On the loop: report NOT_SERVING and ask serve() to exit EXIT_ENGINE_DIED (AsyncLLM's docstring says why
        no restart in-process)."""
        if self.health is not None:
            message = f"the generator engine thread died ({type(exc).__name__}); the server exits to be restarted"
            asyncio.ensure_future(self.health.report("engine", message))
        if self.fatal is not None:
            self.fatal.set()

    async def start(self) -> None:
        await self.grpc_server.start()
        if self.http is not None:
            await self.http.start()

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING and new calls refused (UNAVAILABLE; health stays open), in-flight ones get `grace`
        seconds, then the rest is cancelled, the generator's thread and the worker pools stop and the collections
        close (snapshotting their indexes)."""
        deadline = time.monotonic() + (grace or 0)
        if self.gate is not None:
            self.gate.interceptor.drain()
        if self.health is not None:
            await self.health.report("shutdown", "the server is shutting down")
        if self.http is not None:
            self.http.ctx.draining = True

        async def grpc_stop() -> None:
            if self.gate is not None and not await self.gate.interceptor.wait_idle(grace):
                log.warning(
                    "%d calls still running after the grace period: cancelling them", self.gate.interceptor.in_flight
                )
            await self.grpc_server.stop(max(0.0, deadline - time.monotonic()))

        if self.http is not None:
            await asyncio.gather(grpc_stop(), self.http.stop(grace))
        else:
            await grpc_stop()
        if self.generator is not None:
            self.generator.shutdown()
        self.executor.shutdown(wait=True)
        if self.bulk_executor is not None:
            self.bulk_executor.shutdown(wait=True)
        if self.health is not None:
            await self.health.close()
        self.metrics.close()
        self.collections.close()  # snapshots every index
        if self.gate is not None:
            self.gate.close()


async def create_server(config: ServerConfig) -> Server:
    """Build (not start) the server: open the data dir, load the reader and the generator, bind the port."""
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="pqrag-worker")
    bulk_executor = ThreadPoolExecutor(max_workers=config.bulk_workers, thread_name_prefix="pqrag-bulk")
    collections = Collections(config.data_dir, model_dirs=tuple(config.models_dirs))
    generator = None
    try:
        reader = load_reader(config.reader) if config.reader else None
        if config.model:
            generator = load_generator(config.model, device=config.device, dtype=config.dtype, **config.engine)
        return await _build(config, collections, executor, generator, bulk_executor, reader)
    except BaseException:
        if generator is not None:
            generator.shutdown()
        executor.shutdown(wait=False)
        bulk_executor.shutdown(wait=False)
        collections.close(snapshot=False)
        raise


def load_reader(directory: str) -> Reader:
    """The extractive reader in `directory` (rag.reader.Reader.load), once at startup; a directory that is missing or
    does not hold a reader is refused here, naming it."""
    from rag.reader import Reader

    try:
        reader = Reader.load(directory)
    except Exception as exc:  # missing files, bad JSON, weights of another shape: all the same to the operator
        raise InvalidArgumentError(
            f"cannot load the reader in {directory} ({type(exc).__name__}: {exc}); pass --reader DIR with a trained "
            "reader (reader_config.json + reader.safetensors), or --reader none to serve without extract answers"
        ) from exc
    log.info("reader %s loaded (%s, top %d layers trained)", directory, reader.cfg.base, reader.cfg.trained_layers)
    return reader


async def _build(
    config: ServerConfig,
    collections: Collections,
    executor: ThreadPoolExecutor,
    generator: AsyncLLM | None,
    bulk_executor: ThreadPoolExecutor,
    reader: Reader | None = None,
) -> Server:
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    metrics = ServerMetrics()
    gate = Gate.for_config(config, metrics)  # UnsafeConfigError: refuses to serve openly (check_exposure)
    server = grpc.aio.server(options=options, interceptors=[gate.interceptor])
    args = (collections, executor, metrics, bulk_executor)
    collections_pb2_grpc.add_CollectionsServicer_to_server(CollectionsServicer(*args), server)
    documents_pb2_grpc.add_DocumentsServicer_to_server(DocumentsServicer(*args), server)
    search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(*args), server)
    rag = RagServicer(
        *args,
        generator=generator,
        reader=reader,
        admission=gate.admission,
        limits=gate.limits,
        grounding=config.grounding,
    )
    rag_pb2_grpc.add_RagServicer_to_server(rag, server)
    if generator is not None:
        metrics.watch_engine(generator.metrics)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    checker = Health(health_servicer, ("", *SERVICE_NAMES), gauge=metrics.serving)
    await checker.publish()
    if config.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    tls = ServerTLS(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
    address = f"{config.host}:{config.port}"
    port = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    http = None
    if config.http_port is not None:
        http = create_http_server(config, collections, executor, metrics, generator, reader)
    metrics_port = None
    if config.metrics_port is not None:
        cert = {"certfile": config.tls_cert, "keyfile": config.tls_key} if tls else {}
        metrics_port = metrics.serve_http(config.metrics_port, addr=config.metrics_host, **cert)
    if http is not None:
        http.ctx.authorize = gate.http_authorizer  # the same keys, roles, scopes and rate limits as gRPC
        http.ctx.admission, http.ctx.limits, http.ctx.health = gate.admission, gate.limits, checker
    built = Server(
        server, port, collections, generator, metrics, executor, http, gate, checker, bulk_executor, metrics_port
    )
    built.fatal = asyncio.Event()
    built.reader = reader
    checker.watch_store(collections.check, config.health_probe_s)
    if generator is not None:
        loop = asyncio.get_running_loop()
        generator.on_death = lambda exc: loop.call_soon_threadsafe(built.engine_died, exc)
    return built


async def serve(config: ServerConfig, ready: Callable[[Server], None] | None = None) -> int:
    """Run until SIGINT/SIGTERM (or the engine's death), then drain and close (module docstring); returns the exit
    status. ready(server): once serving."""
    server = await create_server(config)
    await server.start()
    log.info("pqrag serving on %s:%d (data dir %s)", config.host, server.port, config.data_dir)
    if server.http is not None:
        log.info("HTTP on %s: OpenAI API at %s/v1, console at %s/", server.http.url, server.http.url, server.http.url)
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def second_signal(sig: int) -> None:
        log.warning("second signal: exiting now (acknowledged documents are durable; snapshots are not written)")
        signal.signal(sig, signal.SIG_DFL)  # the signal's default action: the process ends at once
        signal.raise_signal(sig)

    def first_signal(sig: int) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, second_signal, s)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first_signal, sig)
    assert server.fatal is not None
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.fatal.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    died = server.fatal.is_set()
    log.info(
        "shutting down: finishing the calls in flight (at most %.0f s), then writing index snapshots",
        config.grace_period,
    )
    if died:
        stop.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, second_signal, s)
    await server.stop(grace=config.grace_period)
    log.info("stopped%s", f" (the generator engine died: exit status {EXIT_ENGINE_DIED})" if died else "")
    return EXIT_ENGINE_DIED if died else 0
