"""What every servicer holds: the collections it serves, the worker pool for blocking domain work, the metrics."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from retrieval import Collections
from service.metrics import ServerMetrics


class Servicer:
    def __init__(self, collections: Collections, executor: ThreadPoolExecutor, metrics: ServerMetrics):
        self.collections = collections
        self.executor = executor
        self.metrics = metrics

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking domain work (embedding, index search, SQLite) in the worker pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
