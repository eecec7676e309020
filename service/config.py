"""ServerConfig: everything `pqrag serve` configures, with its defaults (the CLI's flags take theirs from here).

Kept free of heavy imports so that `pqrag --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # llm.engine.EngineConfig fields to override (max_num_seqs, kv_cache_memory, ...); a field left out keeps the
    # engine's default, which lives only there.
    engine: dict[str, Any] = field(default_factory=dict)
