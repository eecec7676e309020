"""A real pqrag server on a free port, in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from service.client import Client
from service.server import ServerConfig, create_server


class ServerThread:
    def __init__(self, data_dir: Path, **config):
        self.config = ServerConfig(data_dir=str(data_dir), port=0, **config)
        self.port: int | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.server, self.port, self.collections = await create_server(self.config)
        self._stop = asyncio.Event()
        await self.server.start()
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(grace=1)
        self.server.pqrag_executor.shutdown(wait=True)
        self.collections.close()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kw) -> Client:
        return Client(self.target, **kw)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(60)


@pytest.fixture
def server(tmp_path):
    srv = ServerThread(tmp_path / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with server.client(timeout=120) as c:
        yield c


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
