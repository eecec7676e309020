"""Acknowledged documents survive a SIGKILL of the server in the middle of an ingestion: once, and in a loop of
rounds killed at random moments (some of them inside the window between a batch's commit and its acknowledgements)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import grpc

from service.client import Client
from service.launcher import start_server_process
from tests.service.conftest import ServerThread

N_DOCS = 400
# The servers here only ingest: no generator, and no extractive reader to load at each start (`pqrag serve` loads
# the bundled one by default).
SERVE_ARGS = ("--no-generator", "--reader", "none")


def make_docs():
    for i in range(N_DOCS):
        # Several sentences so that some documents have more than one chunk.
        yield {
            "id": f"doc-{i:04d}",
            "text": " ".join(f"Document {i} sentence {j} about topic {i % 17}." for j in range(1 + i % 60)),
        }


def test_acknowledged_documents_survive_sigkill(tmp_path):
    data = tmp_path / "data"
    proc, target = start_server_process(data, extra_args=SERVE_ARGS)
    acked: dict[str, int] = {}
    try:
        with Client(target, timeout=120) as c:
            c.wait_ready()
            c.create_collection("crash")
            killed = threading.Event()
            try:
                for ack in c.ingest("crash", make_docs()):
                    acked[ack.document_id] = ack.chunk_count
                    if len(acked) == 60 and not killed.is_set():
                        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: more documents are in flight
                        killed.set()
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    finally:
        proc.kill()
        proc.wait()
    assert 60 <= len(acked) < N_DOCS

    srv = ServerThread(data).start()
    try:
        with srv.client(timeout=120) as c:
            stats = c.get_collection("crash")
            # Every acknowledged document is complete; unacknowledged ones are complete or absent.
            for doc_id, n_chunks in acked.items():
                d = c.get_document("crash", doc_id, include_chunks=True)
                assert d.chunk_count == n_chunks == len(d.chunks)
            assert stats.document_count >= len(acked)
            assert stats.chunk_count >= sum(acked.values())
            # ... and searchable without re-ingesting.
            some = sorted(acked)[len(acked) // 2]
            text = c.get_document("crash", some).text
            hits = c.search("crash", text, k=5)
            assert some in [h["doc_id"] for h in hits]
    finally:
        srv.stop()


ROUNDS = 10


def round_docs(r: int, n: int = 150):
    for i in range(n):
        yield {
            "id": f"r{r:02d}-{i:03d}",
            # mostly one chunk, every tenth a few: batches embed fast and acknowledgements flow
            "text": " ".join(
                f"Round {r} document {i} part {j} on topic {(r * 31 + i) % 23}." for j in range(1 + (i % 10 == 0) * 60)
            ),
            "metadata": {"round": r},
        }


def test_kill_9_loop_during_ingest_streams(tmp_path):
    """ROUNDS servers, each SIGKILLed at a random moment of an IngestStream (every third one with a pause between the
    commit and the acknowledgement, the kill landing in it). Then: every acknowledged document is there, complete
    and searchable, no document is half-written, and the index holds exactly the store's chunks."""
    rng = random.Random(17)
    data = tmp_path / "data"
    acked: dict[str, int] = {}
    started = time.monotonic()
    for r in range(ROUNDS):
        in_window = r % 3 == 2
        env = {**os.environ, "PQRAG_TEST_ACK_DELAY_S": "0.4" if in_window else "0"}
        proc, target = start_server_process(data, extra_args=SERVE_ARGS, env=env)
        try:
            with Client(target, timeout=60) as c:
                c.wait_ready()
                if r == 0:
                    c.create_collection("loop")
                killer = threading.Timer(rng.uniform(0.2, 3.0), os.kill, (proc.pid, signal.SIGKILL))
                try:
                    for ack in c.ingest("loop", round_docs(r)):
                        acked[ack.document_id] = ack.chunk_count
                        if not killer.is_alive() and not killer.finished.is_set():
                            killer.start()  # the clock starts once the embedder is loaded and acks flow
                except grpc.RpcError as exc:
                    assert exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.UNKNOWN,
                    )
                killer.cancel()
        finally:
            proc.kill()
            proc.wait()
    assert len({d.split("-")[0] for d in acked}) >= ROUNDS // 2, "most rounds acknowledged something before the kill"

    srv = ServerThread(data).start()
    try:
        coll = srv.server.collections.get("loop")
        stats = coll.stats()
        assert stats["indexed_vectors"] == stats["chunk_count"]  # store and index agree
        with srv.client(timeout=120) as c:
            for doc_id, n_chunks in acked.items():
                d = c.get_document("loop", doc_id, include_chunks=True)
                assert d.chunk_count == n_chunks == len(d.chunks), doc_id
            # No half-written document among the unacknowledged ones either: each one present is complete.
            total = 0
            for r in range(ROUNDS):
                for doc in round_docs(r):
                    try:
                        d = c.get_document("loop", doc["id"], include_chunks=True)
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.NOT_FOUND and doc["id"] not in acked
                        continue
                    assert d.text == doc["text"] and d.chunk_count == len(d.chunks) > 0
                    total += d.chunk_count
            assert total == stats["chunk_count"]
            for doc_id in rng.sample(sorted(acked), 5):
                text = c.get_document("loop", doc_id).text
                # k=20: the rounds' first documents are near-duplicates ("Round r document 0 ..."), ten of them
                assert doc_id in [h["doc_id"] for h in c.search("loop", text, k=20)]
    finally:
        srv.stop()
    print(f"kill -9 loop: {ROUNDS} rounds, {len(acked)} documents acknowledged, {time.monotonic() - started:.0f} s")
    assert len(acked) < ROUNDS * 150, "every round was killed before its stream ended"
