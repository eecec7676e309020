"""What every HTTP route works with: the server's one set of collections, its one generator (the same AsyncLLM the
gRPC servicers use: no second copy of the model) and extractive reader, the worker pool, the metrics registry, and
the gate's pieces the routes share with gRPC (the authorization check, admission control, rate limits, health)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag.pipeline import GeneratorUnavailableError
from retrieval import Collections
from service.admission import Admission
from service.http.auth import Authorizer, allow_all
from service.http.errors import ApiError
from service.metrics import ServerMetrics
from service.ratelimit import RateLimits

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM
    from rag.reader import Reader
    from service.health import Health


def model_name(model_dir: str | os.PathLike) -> str:
    """The default served name of a checkpoint directory: its own name (models/pqrag-small -> pqrag-small)."""
    return os.path.basename(os.path.normpath(os.fspath(model_dir)))


@dataclass
class HttpContext:
    collections: Collections
    executor: ThreadPoolExecutor  # the server's worker pool: embedding, search, SQLite, tokenizing, file parsing
    metrics: ServerMetrics
    generator: AsyncLLM | None  # None: a retrieval-only server (generation answers 503)
    served_model_name: str | None  # the generator's id in /v1/models and the `model` requests name
    max_body_bytes: int  # larger request bodies are refused with 413 (ServerConfig.max_message_bytes)
    authorize: Authorizer = allow_all
    # The gRPC side's admission control and per-key token budgets (service.gate), shared: one queue, one budget.
    admission: Admission = field(default_factory=Admission)
    limits: RateLimits = field(default_factory=RateLimits)
    health: Health | None = None  # the server's health problems (store, engine, shutdown), when it tracks them
    draining: bool = False  # set when the server stops: /health answers 503 from then on
    grounding: str | None = None  # RAG answers' default decoding (ServerConfig.grounding), as gRPC's
    reader: Reader | None = None  # the extractive reader of extract answers (ServerConfig.reader), as gRPC's

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking domain work in the worker pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def check_rag_model(self, model: str | None) -> None:
        """The `model` a RAG request names, checked as llm(model) does; on a server without a generator nothing is
        checked: the pipeline decides (extract answers need only the reader; the others are refused there, 503)."""
        if self.generator is not None:
            self.llm(model)

    def llm(self, model: str | None) -> AsyncLLM:
        """The generator a request names (`model` None: the one served). GeneratorUnavailableError (503) on a
        retrieval-only server; ApiError(404) for another name."""
        if self.generator is None:
            raise GeneratorUnavailableError(
                "this server runs without a generator (started with --no-generator): use /v1/embeddings and "
                "search, or start `pqrag serve --model DIR`"
            )
        if model is not None and model != self.served_model_name:
            raise ApiError(
                404,
                f"model {model!r} not found: this server generates with {self.served_model_name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        return self.generator
