"""What every servicer holds: the collections it serves, the worker pools for blocking domain work (queries, and a
separate one for bulk ingestion so that queries never queue behind it), the metrics."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from retrieval import Collections
from service.metrics import ServerMetrics


class Servicer:
    def __init__(
        self,
        collections: Collections,
        executor: ThreadPoolExecutor,
        metrics: ServerMetrics,
        bulk_executor: ThreadPoolExecutor | None = None,
    ):
        self.collections = collections
        self.executor = executor
        self.metrics = metrics
        self.bulk_executor = bulk_executor or executor

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking domain work (embedding, index search, SQLite) in the worker pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def run_bulk(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run bulk work (an ingestion's embedding and write) in the bulk pool: however long it takes, the query
        pool's threads stay free for searches, lookups and answers."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.bulk_executor, functools.partial(fn, *args, **kwargs))
