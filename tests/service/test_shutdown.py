"""Graceful shutdown: health NOT_SERVING and new calls refused while in-flight ones finish; SIGTERM during an
ingestion acknowledges what it stored and fails the rest of the stream (never a false acknowledgement), writes the
index snapshots and exits 0; a second signal exits at once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import grpc
import pytest

from service.client import Client
from service.launcher import start_server_process
from tests.service.conftest import RAG_DOCS, ServerThread

# The `pqrag serve` processes here only ingest: no generator, and no extractive reader to load (the default loads the
# bundled one).
SERVE_ARGS = ("--no-generator", "--reader", "none")


def test_stop_drains_refuses_new_calls_and_lets_in_flight_ones_finish(tmp_path, tiny_model_dir, monkeypatch):
    srv = ServerThread(tmp_path / "data", model=str(tiny_model_dir)).start()
    with srv.client(timeout=120) as c:
        c.create_collection("kb")
        list(c.ingest("kb", RAG_DOCS))
    engine = srv.server.generator.engine
    step = engine.step

    def slow_step():  # 60 tokens take about 3 s
        time.sleep(0.05)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    answer: dict = {}

    def ask() -> None:
        with srv.client(timeout=120) as c:
            answer.update(c.ask("kb", "Why do volcanoes erupt?", max_tokens=60, ignore_eos=True))

    asker = threading.Thread(target=ask)
    asker.start()
    with srv.client(timeout=10) as c:
        while engine.stats()["num_running"] == 0:
            time.sleep(0.02)
        stopping = asyncio.run_coroutine_threadsafe(srv.server.stop(grace=30), srv.loop)
        deadline = time.monotonic() + 5
        while c.health() != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.health() == "NOT_SERVING" and asker.is_alive()
        with pytest.raises(grpc.RpcError) as e:
            c.search("kb", "bread")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.value.details()
    asker.join(60)
    stopping.result(60)
    assert answer["final"]["finish_reason"] == "length" and answer["final"]["completion_tokens"] == 60
    srv.stop()  # the thread's own stop() finds everything stopped already


def big_text(n_words: int) -> str:
    words = ["river", "mountain", "violin", "galaxy", "protein", "harbour", "glacier", "algebra", "tulip", "engine"]
    return " ".join(f"{words[i % 10]}{i % 97}" + ("." if i % 17 == 16 else "") for i in range(n_words))


def test_sigterm_during_an_ingestion_acknowledges_only_what_is_stored(tmp_path):
    data = tmp_path / "data"
    proc, target = start_server_process(data, extra_args=(*SERVE_ARGS, "--grace-period", "300"))
    acked: list[str] = []
    try:
        with Client(target, timeout=120) as c:
            c.wait_ready()
            c.create_collection("docs")
            sent = threading.Event()

            def documents():
                yield {"id": "big", "text": big_text(4_000)}  # ~70 chunks: seconds of embedding
                sent.set()
                for i in range(100):
                    time.sleep(0.2)
                    yield {"id": f"small-{i}", "text": f"small document {i}"}

            def signal_soon() -> None:
                sent.wait(30)
                time.sleep(0.5)  # the big document is being embedded
                proc.send_signal(signal.SIGTERM)

            threading.Thread(target=signal_soon, daemon=True).start()
            with pytest.raises(grpc.RpcError) as e:
                for ack in c.ingest("docs", documents()):
                    acked.append(ack.document_id)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
            assert "resend" in e.value.details()
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert acked and acked[0] == "big" and len(acked) < 101  # the in-flight document finished and was acknowledged

    srv = ServerThread(data).start()
    try:
        assert srv.server.collections.get("docs").restored_from == "snapshot"  # written at shutdown
        with srv.client(timeout=120) as c:
            for doc_id in acked:
                c.get_document("docs", doc_id)
            assert c.get_collection("docs").document_count == len(acked)  # nothing unacknowledged was stored
    finally:
        srv.stop()


def test_a_second_signal_exits_at_once(tmp_path):
    proc, target = start_server_process(tmp_path / "data", extra_args=(*SERVE_ARGS, "--grace-period", "600"))
    try:
        with Client(target, timeout=120) as c:
            c.wait_ready()
            c.create_collection("docs")
            stream = c.ingest("docs", iter([{"id": "big", "text": big_text(200_000)}]))  # a minute of embedding
            time.sleep(3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert proc.poll() is None  # draining: the ingestion is still in flight
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == -signal.SIGTERM  # ended by the signal itself, not a clean exit
            assert time.monotonic() - t0 < 10
            stream.cancel()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
