"""Acknowledged documents survive a SIGKILL of the server in the middle of an ingestion."""

from __future__ import annotations

import os
import signal
import threading

import grpc

from service.client import Client
from service.launcher import start_server_process
from tests.service.conftest import ServerThread

N_DOCS = 400


def make_docs():
    for i in range(N_DOCS):
        # Several sentences so that some documents have more than one chunk.
        yield {
            "id": f"doc-{i:04d}",
            "text": " ".join(f"Document {i} sentence {j} about topic {i % 17}." for j in range(1 + i % 60)),
        }


def test_acknowledged_documents_survive_sigkill(tmp_path):
    data = tmp_path / "data"
    proc, target = start_server_process(data, extra_args=("--no-generator",))
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
