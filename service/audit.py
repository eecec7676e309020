"""The audit log: every write and admin operation, one JSON object per line, in a rotating file in the data dir.

    audit = AuditLog("data")            # data/audit.log, rotated at 10 MB, 5 old files kept (audit.log.1 ...)
    audit.record(key="ingest-bot", method="IngestStream", collection="docs", ids=["a", "b"], outcome="OK")
    append_audit("data", key="cli", method="keys.create", outcome="OK", detail={"name": "bot"})   # from the CLI

Fields: time (UTC, ISO 8601), key (the key's name; "anonymous" without auth), method, collection, ids (at most
MAX_IDS, with ids_count the total), outcome (the status code's name), peer, and detail where a call has more to say.
Reads are not logged (the metrics count them); refused calls are, with their code, when they asked to write.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.log"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
MAX_IDS = 1000  # ids written per entry (an ingestion of a million documents is one entry, not a 50 MB line)

_instances = 0
_instances_lock = threading.Lock()


def entry(
    *,
    key: str,
    method: str,
    outcome: str,
    collection: str | None = None,
    ids: Iterable[str] = (),
    peer: str | None = None,
    detail: dict[str, Any] | None = None,
) -> str:
    ids = list(ids)
    now = time.time()
    out: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
        "key": key,
        "method": method,
        "collection": collection,
        "ids": ids[:MAX_IDS],
        "ids_count": len(ids),
        "outcome": outcome,
    }
    if peer:
        out["peer"] = peer
    if detail:
        out["detail"] = detail
    return json.dumps(out, ensure_ascii=False)


class AuditLog:
    """The server's audit log (module docstring). record() is thread-safe and cheap (a buffered append)."""

    def __init__(self, data_dir: str | os.PathLike, max_bytes: int = MAX_BYTES, backups: int = BACKUPS):
        global _instances
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(data_dir) / AUDIT_FILE
        with _instances_lock:
            _instances += 1
            n = _instances
        self._logger = logging.getLogger(f"pqrag.audit.{n}")  # one per server: tests run several in a process
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler = RotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

    def record(self, **fields: Any) -> None:
        self._logger.info(entry(**fields))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()


def append_audit(data_dir: str | os.PathLike, **fields: Any) -> None:
    """One entry from another process (the keys CLI): appended whole (O_APPEND), never rotating the file."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / AUDIT_FILE, "a", encoding="utf-8") as f:
        f.write(entry(**fields) + "\n")
