"""HttpServer: uvicorn serving the HTTP app inside the gRPC server's event loop (one process, one engine).

    http = create_http_server(config, collections, executor, metrics, generator)   # binds the port (TLS: config's)
    await http.start()        # serving on http.port
    await http.stop(grace=5)  # stops accepting, lets requests finish for `grace` seconds, then cancels the rest

uvicorn's Server.serve() would install its own signal handlers; pqrag's serve() owns SIGINT/SIGTERM, so this
drives uvicorn's startup / main loop / shutdown steps itself, on a socket bound here (port 0 picks a free one).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import uvicorn

from retrieval import Collections
from service.config import ServerConfig
from service.http.app import create_app
from service.http.context import HttpContext, model_name
from service.metrics import ServerMetrics
from service.tls import ServerTLS

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM
    from rag.reader import Reader

log = logging.getLogger("pqrag.http")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when host is an IPv6 address); OSError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


class HttpServer:
    def __init__(self, ctx: HttpContext, sock: socket.socket, ssl_context: ssl.SSLContext | None = None):
        self.ctx = ctx
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.ssl_context = ssl_context  # TLS (service.tls: the gRPC port's certificate, mutual when it has a CA)
        self.scheme = "https" if ssl_context is not None else "http"
        self.config = uvicorn.Config(
            create_app(ctx),
            lifespan="off",
            log_config=None,  # pqrag's logging configuration stays as it is
            access_log=False,
        )
        self.server = uvicorn.Server(self.config)
        self._main_loop: asyncio.Task | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self.config.load()
        self.config.ssl = self.ssl_context  # what uvicorn's startup hands asyncio's create_server
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[self.sock])
        self._main_loop = asyncio.ensure_future(self.server.main_loop())

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; requests in flight (streams included) get `grace` seconds, then are cancelled (which
        aborts their generation). /health answers 503 from the start of the stop."""
        self.ctx.draining = True
        if self._main_loop is None:  # never started
            self.sock.close()
            return
        self.server.should_exit = True
        await self._main_loop
        self.config.timeout_graceful_shutdown = grace if grace is not None else 0
        await self.server.shutdown(sockets=[self.sock])


def create_http_server(
    config: ServerConfig,
    collections: Collections,
    executor: ThreadPoolExecutor,
    metrics: ServerMetrics,
    generator: AsyncLLM | None,
    reader: Reader | None = None,
) -> HttpServer:
    """Build (not start) the HTTP server over the gRPC server's own collections, generator, reader, pool and
    metrics."""
    assert config.http_port is not None
    served = config.served_model_name or (model_name(config.model) if config.model else None)
    ctx = HttpContext(
        collections=collections,
        executor=executor,
        metrics=metrics,
        generator=generator,
        served_model_name=served,
        max_body_bytes=config.max_message_bytes,
        grounding=config.grounding,
        reader=reader,
    )
    tls = ServerTLS(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
    return HttpServer(ctx, bind(config.host, config.http_port), tls.ssl_context() if tls is not None else None)
