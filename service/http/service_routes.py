"""The service's own endpoints: GET /health (the engine's and the store's state; 503 when not serving), GET /metrics
(the server's Prometheus registry, the same one the gRPC RPCs record into) and the web console at / (one page and
its static files, served from service/http/console: no build step, nothing from a CDN)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.http.context import HttpContext

router = APIRouter(tags=["service"])

CONSOLE_DIR = resources.files("service.http") / "console"


def health_report(ctx: HttpContext) -> tuple[bool, dict[str, Any]]:
    """(serving, report). Serving: the store is open and answers its probe, the generator (when there is one)
    runs, and the server is not stopping. `problems` names what is wrong (the gRPC health service's reasons)."""
    problems = dict(ctx.health.problems) if ctx.health is not None else {}
    try:
        store = {"state": "open", "collections": len(ctx.collections.names())}
    except RuntimeError:  # closed: the server is stopping
        store = {"state": "closed"}
        problems.setdefault("store", "the store is closed")
    if "store" in problems:
        store["state"] = "failing"
    if ctx.generator is None:
        engine: dict[str, Any] = {"state": "absent"}
    else:
        engine = {"state": "running" if ctx.generator.running else "stopped", "model": ctx.served_model_name}
        engine.update(ctx.generator.metrics())
        if not ctx.generator.running:
            problems.setdefault("engine", "the generator engine is not running")
    if ctx.draining:
        problems.setdefault("shutdown", "the server is shutting down")
    serving = not problems
    report = {"status": "serving" if serving else "not_serving", "engine": engine, "store": store}
    if problems:
        report["problems"] = problems
    return serving, report


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Unauthenticated, like gRPC's health service: load balancers and orchestrators probe it."""
    serving, report = health_report(request.app.state.ctx)
    return JSONResponse(report, status_code=200 if serving else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx: HttpContext = request.app.state.ctx
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def console() -> FileResponse:
    return FileResponse(str(CONSOLE_DIR / "index.html"), headers={"cache-control": "no-cache"})
