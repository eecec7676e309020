"""Health that tells the truth, with faults injected: a failing store and a dead generator engine turn every health
name NOT_SERVING; open answer streams end with UNAVAILABLE (never hang); serve() then exits EXIT_ENGINE_DIED."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import grpc
import pytest

from service.server import EXIT_ENGINE_DIED, SERVICE_NAMES, ServerConfig, serve
from tests.service.conftest import RAG_DOCS, ServerThread


def wait_for(pred, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def statuses(client) -> set[str]:
    return {client.health(name) for name in ("", *SERVICE_NAMES)}


def test_a_failing_store_turns_health_not_serving_until_it_recovers(tmp_path, monkeypatch):
    srv = ServerThread(tmp_path / "data", health_probe_s=0.1).start()
    try:
        with srv.client(timeout=10) as c:
            assert statuses(c) == {"SERVING"}
            store = srv.server.collections._store

            def broken_write():
                raise sqlite3.OperationalError("disk I/O error")

            monkeypatch.setattr(store, "write", broken_write)  # the store fails (as a full or dying disk does)
            assert wait_for(lambda: statuses(c) == {"NOT_SERVING"})
            assert "disk I/O error" in srv.server.health.problems["store"]
            metrics = srv.server.metrics.render().decode()
            assert "pqrag_serving 0.0" in metrics
            monkeypatch.undo()
            assert wait_for(lambda: statuses(c) == {"SERVING"})
    finally:
        srv.stop()


@pytest.fixture
def rag(tmp_path, tiny_model_dir):
    srv = ServerThread(tmp_path / "data", model=str(tiny_model_dir)).start()
    with srv.client(timeout=120) as c:
        c.create_collection("kb")
        list(c.ingest("kb", RAG_DOCS))
    yield srv
    srv.stop()


def test_engine_death_ends_open_streams_with_unavailable_and_health_not_serving(rag, monkeypatch):
    engine = rag.server.generator.engine
    step = engine.step

    def slow_step():
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    with rag.client(timeout=60) as c:
        stream = c.ask_stream("kb", "Why do volcanoes erupt?", max_tokens=200, ignore_eos=True)
        got = [next(stream)]  # the answer has started

        def broken_stats():
            raise OSError("injected: the engine's state is gone")

        monkeypatch.setattr(engine, "stats", broken_stats)  # outside a step: the engine thread dies
        with pytest.raises(grpc.RpcError) as e:
            for event in stream:
                got.append(event)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "engine stopped" in e.value.details()
        assert got[0].WhichOneof("event") == "context"
        assert wait_for(lambda: statuses(c) == {"NOT_SERVING"})
        assert "engine" in rag.server.health.problems and rag.server.fatal.is_set()
        with pytest.raises(grpc.RpcError) as e:  # new answers are refused at once
            list(c.ask_stream("kb", "Why?", max_tokens=4))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert c.search("kb", "bread", k=1)  # retrieval still answers while the server drains


def test_serve_exits_non_zero_when_the_engine_dies(tmp_path, tiny_model_dir):
    """serve() in this (main) thread, as `pqrag serve` runs it: the engine dies, the server stops and returns
    EXIT_ENGINE_DIED for its supervisor."""
    # reader=None: the engine's death is the point, and loading the default reader would take a second
    config = ServerConfig(
        data_dir=str(tmp_path / "data"), port=0, model=str(tiny_model_dir), grace_period=5, reader=None
    )
    outcome: dict = {}

    def ready(server) -> None:
        def broken_stats():
            raise OSError("injected")

        server.generator.engine.stats = broken_stats

        def ask() -> None:
            from service.client import Client

            with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
                c.create_collection("kb")
                list(c.ingest("kb", RAG_DOCS[:1]))
                try:
                    list(c.ask_stream("kb", "Why?", max_tokens=8))
                except grpc.RpcError as exc:
                    outcome["code"] = exc.code()

        threading.Thread(target=ask, daemon=True).start()

    status = asyncio.run(asyncio.wait_for(serve(config, ready=ready), 120))
    assert status == EXIT_ENGINE_DIED and outcome["code"] == grpc.StatusCode.UNAVAILABLE
