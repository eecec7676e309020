"""The ASGI app: the OpenAI-compatible API, REST for collections and documents, health, metrics and the console,
over one HttpContext (the server's collections, generator, worker pool and metrics).

    app = create_app(ctx)        # served by service.http.server.HttpServer (uvicorn, in the gRPC server's loop)

Three ASGI middlewares wrap it: the request body limit (413 in OpenAI's shape before a byte of a too-large body is
read when Content-Length says so, else as soon as the count passes the limit), our own bugs as 500s in OpenAI's
shape, and the HTTP metrics (requests and latency per route and status, in the server's Prometheus registry).
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http import collections_routes, documents_routes, errors, openai_routes, service_routes
from service.http.context import HttpContext


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            exc = errors.BodyTooLarge(self.limit)
            return await errors.error_response(413, exc.detail, code=exc.code)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise errors.BodyTooLarge(
                        self.limit
                    )  # FastAPI passes HTTPExceptions raised while reading to errors
            return message

        await self.app(scope, counted, send)


class InternalErrors:
    """Anything the handlers let escape is a bug of ours: a 500 in OpenAI's shape, logged with its traceback once
    (Starlette's own last resort answers in plain text and re-raises into the server's log)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            err = errors.api_error_of(exc)  # logs it
            if started or scope["type"] != "http":
                raise
            await errors.error_response(err.status, err.message, err.param, err.code)(scope, receive, send)


class HttpMetrics:
    """Requests and latency per route template (not per URL: ids would blow up the label set) and status."""

    def __init__(self, app: ASGIApp, registry):
        self.app = app
        self.requests = Counter(
            "pqrag_http_requests", "HTTP requests, by route and status", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            "pqrag_http_latency_seconds",
            "HTTP request latency to the last byte (streams included), by route",
            ["route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        start = time.perf_counter()

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(route).observe(time.perf_counter() - start)
            self.requests.labels(route, str(status)).inc()


def create_app(ctx: HttpContext) -> FastAPI:
    app = FastAPI(
        title="pqrag",
        summary="OpenAI-compatible API, REST for collections and documents, and a web console",
        version="1",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    app.include_router(openai_routes.router)
    app.include_router(collections_routes.router)
    app.include_router(documents_routes.router)
    app.include_router(service_routes.router)
    app.mount("/console", StaticFiles(directory=str(service_routes.CONSOLE_DIR)), name="console")
    app.add_middleware(BodyLimit, limit=ctx.max_body_bytes)
    app.add_middleware(InternalErrors)
    app.add_middleware(HttpMetrics, registry=ctx.metrics.registry)  # outermost: it sees the 413s and 500s too
    return app
