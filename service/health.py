"""Health that tells the truth: grpc.health.v1 (service "" and every pqrag service) and the HTTP /health read what
is actually wrong, not just "the process is up".

    health = Health(health_servicer, ["", "pqrag.v1.Rag", ...])
    await health.report("engine", "the generator engine died: ...")    # NOT_SERVING, with the reason
    await health.report("engine", None)                                # that problem is gone
    health.problems                                                    # {"engine": "..."}: what /health shows

Problems: "store" (a periodic probe reads and writes the SQLite store: watch_store), "engine" (the generator's
engine thread died), "shutdown" (SIGTERM: draining). Any problem makes every name NOT_SERVING; the probe clears its
own when the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("pqrag.server")

STORE_PROBE_INTERVAL_S = 5.0


class Health:
    def __init__(self, servicer: health.aio.HealthServicer, names: Sequence[str], gauge=None):
        self.servicer = servicer
        self.gauge = gauge  # a prometheus Gauge set to 1 / 0 (pqrag_serving), or None
        self.names = tuple(names)
        self.problems: dict[str, str] = {}
        self._probe_pool: ThreadPoolExecutor | None = None
        self._probe_task: asyncio.Task | None = None

    @property
    def serving(self) -> bool:
        return not self.problems

    async def publish(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if self.gauge is not None:
            self.gauge.set(1 if self.serving else 0)
        for name in self.names:
            await self.servicer.set(name, status)

    async def report(self, source: str, problem: str | None) -> None:
        """Set (a message) or clear (None) one source's problem, and publish the resulting status."""
        before = self.serving
        if problem is None:
            self.problems.pop(source, None)
        else:
            if self.problems.get(source) != problem:
                level = logging.INFO if source == "shutdown" else logging.ERROR
                log.log(level, "health: NOT_SERVING: %s: %s", source, problem)
            self.problems[source] = problem
        if before != self.serving and source != "shutdown":
            log.warning("health: %s", "SERVING" if self.serving else "NOT_SERVING")
        await self.publish()

    def watch_store(self, check: Callable[[], None], interval: float = STORE_PROBE_INTERVAL_S) -> None:
        """Probe the store every `interval` seconds with check() (in a thread of its own, so a busy worker pool
        cannot delay it): an exception reports the "store" problem, a success clears it."""
        self._probe_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pqrag-health")
        loop = asyncio.get_running_loop()

        async def probe() -> None:
            while True:
                try:
                    await loop.run_in_executor(self._probe_pool, check)
                except Exception as exc:
                    await self.report("store", f"the document store failed: {type(exc).__name__}: {exc}"[:300])
                else:
                    if "store" in self.problems:
                        await self.report("store", None)
                await asyncio.sleep(interval)

        self._probe_task = asyncio.ensure_future(probe())

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            try:
                await self._probe_task
            except asyncio.CancelledError:
                pass
            self._probe_task = None
        if self._probe_pool is not None:
            self._probe_pool.shutdown(wait=True)
            self._probe_pool = None
