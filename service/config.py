"""ServerConfig: everything `pqrag serve` configures, with its defaults (the CLI's flags take theirs from here).

Kept free of heavy imports so that `pqrag --help` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# The extractive reader the server loads unless told otherwise (rag/reader.py: reader_config.json +
# reader.safetensors), committed in the repository next to the bundled generator (service/cli.py BUNDLED_MODEL).
BUNDLED_READER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "pqrag-reader")


def default_reader() -> str | None:
    """The bundled reader's directory, or None when it is not there (a checkout without models/)."""
    return BUNDLED_READER if os.path.exists(os.path.join(BUNDLED_READER, "reader_config.json")) else None


@dataclass
class ServerConfig:
    data_dir: str = "data"
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (tests)
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 16 * 1024 * 1024
    workers: int = 4  # threads for embedding, search and SQLite
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None disables
    # The HTTP front door on the same host (OpenAI-compatible API, REST, /health, /metrics, the console at /), in
    # this process, over the same generator and collections; None disables, 0 picks a free port.
    http_port: int | None = None
    served_model_name: str | None = None  # the generator's name in the OpenAI API; None: the model dir's name
    # The colocated generator: a checkpoint directory (config.json + safetensors + tokenizer.json), or None to
    # serve without one (Rag answers only extract, with the reader; FAILED_PRECONDITION otherwise).
    model: str | None = None
    device: str | None = None  # generator device; None: CUDA when available
    dtype: str | None = None  # generator dtype name; None / "auto": common.device.default_dtype (logged at start)
    # The extractive reader of "extract" answers (rag.reader.Reader's directory), loaded at start; None: no extract
    # answers (they are refused FAILED_PRECONDITION). Default: the bundled models/pqrag-reader, when present.
    reader: str | None = field(default_factory=default_reader)
    # RAG answers' decoding when a request (or its collection) names none: "free" | "quote" | "extract"; None: the
    # model's (generation_config.json "pqrag_grounding": extract for the bundled model, quote without a reader;
    # free for other checkpoints)
    grounding: str | None = None
    # llm.engine.EngineConfig fields to override (max_num_seqs, kv_cache_memory, ...); a field left out keeps the
    # engine's default, which lives only there.
    engine: dict[str, Any] = field(default_factory=dict)

    # --- security and reliability (issue 17; README "Security") ---
    # Serving beyond the loopback interface with no API key in the data dir refuses to start unless insecure.
    insecure: bool = False
    reflection: bool = True  # gRPC server reflection (open, like health); --no-reflection leaves it out
    # TLS for gRPC, HTTP and /metrics: PEM certificate chain and key; a client CA makes it mutual TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    admin_key_file: str | None = None  # a key (pqrag keys generate) to register as the admin key "bootstrap"
    metrics_host: str = "127.0.0.1"  # address of /metrics (no auth): loopback unless asked
    # Embedders are model names: the bundled default, or directories in these (never a client-given path).
    models_dirs: tuple[str, ...] = ()
    # Admission control for answers (RESOURCE_EXHAUSTED before anything is streamed); None: no limit.
    max_waiting_requests: int | None = None
    max_waiting_tokens: int | None = None
    # Per-key rate limits (token buckets; a key's own limits override these); None: no limit.
    rate_limit_rps: float | None = None
    rate_limit_tps: float | None = None  # generated (prompt + answer) tokens per second
    grace_period: float = 30.0  # seconds in-flight calls get to finish after SIGTERM
    bulk_workers: int = 2  # threads for ingestion, apart from `workers`: queries never queue behind a bulk ingest
    health_probe_s: float = 5.0  # how often the store is probed for health
