"""Prometheus metrics for the server: one histogram and one counter per RPC, plus collection gauges.

Served over HTTP (`pqrag serve --metrics-port 9464`) in the usual text exposition format so that any
Prometheus scrapes it; `registry` is private to the server so tests can start several in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

if TYPE_CHECKING:
    from rag.pipeline import AnswerEnd


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    http_server: Any = field(default=None, init=False)  # the /metrics endpoint, when served

    def __post_init__(self) -> None:
        self.requests = Counter(
            "pqrag_rpc_requests",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pqrag_rpc_latency_seconds",
            "RPC latency by method",
            ["method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.ingested_documents = Counter(
            "pqrag_ingested_documents",
            "Documents stored",
            ["collection"],
            registry=self.registry,
        )
        self.ingested_chunks = Counter(
            "pqrag_ingested_chunks",
            "Chunks stored",
            ["collection"],
            registry=self.registry,
        )
        self.embed_seconds = Histogram(
            "pqrag_search_embed_seconds",
            "Query embedding time",
            registry=self.registry,
        )
        self.search_seconds = Histogram(
            "pqrag_search_index_seconds",
            "Index search time (after embedding)",
            registry=self.registry,
        )

        self.rag_retrieval_seconds = Histogram(
            "pqrag_rag_retrieval_seconds",
            "Rag: embedding + search before generation",
            registry=self.registry,
        )
        self.rag_ttft_seconds = Histogram(
            "pqrag_rag_time_to_first_token_seconds",
            "Rag: request start to the first answer text",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.rag_total_seconds = Histogram(
            "pqrag_rag_total_seconds",
            "Rag: whole answer",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.generated_tokens = Counter("pqrag_generated_tokens", "Answer tokens generated", registry=self.registry)
        # By grounding (free, quote, extract: the reader's answers generate no tokens) and outcome (answered,
        # declined: the no-answer sentence), so that the share of declines a collection's reader_threshold or the
        # quote mode's refusal causes can be watched.
        self.rag_answers = Counter(
            "pqrag_rag_answers",
            "Rag answers finished, by grounding and outcome",
            ["grounding", "outcome"],
            registry=self.registry,
        )
        self.engine_gauges: dict[str, Gauge] = {}
        self.serving = Gauge(
            "pqrag_serving",
            "1 while health says SERVING, 0 while NOT_SERVING (a reason is set)",
            registry=self.registry,
        )
        self.serving.set(1)
        self.waiting_requests = Gauge(
            "pqrag_waiting_requests",
            "Answers admitted, not yet started (--max-waiting-requests)",
            registry=self.registry,
        )
        self.waiting_tokens = Gauge(
            "pqrag_waiting_tokens",
            "Tokens of the answers waiting to start (--max-waiting-tokens)",
            registry=self.registry,
        )

    def observe_answer(self, end: AnswerEnd) -> None:
        """A finished Rag answer (its AnswerEnd): timings, tokens, and its count by grounding and outcome."""
        self.rag_retrieval_seconds.observe(end.retrieval_ms / 1e3)
        self.rag_ttft_seconds.observe(end.time_to_first_token_ms / 1e3)
        self.rag_total_seconds.observe(end.total_ms / 1e3)
        self.generated_tokens.inc(end.completion_tokens)
        self.rag_answers.labels(grounding=end.grounding, outcome="declined" if end.declined else "answered").inc()

    def watch_engine(self, stats) -> None:
        """Export the engine's numeric stats (running, waiting, kv_usage, prefix-cache hit rate, preemptions,
        speculative decoding's acceptance rate and accepted tokens per step, ...) as gauges read at scrape time;
        stats() -> dict."""
        for key, value in stats().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in self.engine_gauges:
                g = Gauge(f"pqrag_engine_{key}", f"generator engine: {key}", registry=self.registry)
                g.set_function(lambda key=key: float(stats().get(key, 0) or 0))
                self.engine_gauges[key] = g

    def watch_admission(self, admission) -> None:
        """Export service.admission.Admission's waiting requests and tokens, read at scrape time."""
        self.waiting_requests.set_function(lambda: float(admission.waiting_requests))
        self.waiting_tokens.set_function(lambda: float(admission.waiting_tokens))

    @contextmanager
    def observe(self, method: str) -> Iterator[dict]:
        """Times one RPC; the handler sets outcome["code"] when it fails."""
        outcome = {"code": "OK"}
        start = time.perf_counter()
        try:
            yield outcome
        finally:
            self.latency.labels(method).observe(time.perf_counter() - start)
            self.requests.labels(method, outcome["code"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve_http(
        self, port: int, addr: str = "127.0.0.1", certfile: str | None = None, keyfile: str | None = None
    ) -> int:
        """Start the /metrics endpoint (a prometheus_client HTTP server thread; close() stops it), over TLS when given
        a certificate and key; returns the bound port (port 0 picks one)."""
        tls = {"certfile": certfile, "keyfile": keyfile} if certfile else {}
        self.http_server, _ = start_http_server(port, addr=addr, registry=self.registry, **tls)
        return int(self.http_server.server_port)

    def close(self) -> None:
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
            self.http_server = None
