"""No head-of-line blocking: while a large ingestion is embedding (held mid-way on purpose), searches that embed their
query, lookups and listings all answer, even with a single query worker; the ingestion then completes."""

from __future__ import annotations

import threading
import time

from retrieval import embedder as embedder_module
from retrieval.embedder import Embedder
from tests.service.conftest import DOCS, ServerThread, ingest_all


def test_queries_answer_while_a_large_document_is_embedding(tmp_path, monkeypatch):
    srv = ServerThread(tmp_path / "data", workers=1).start()
    try:
        with srv.client(timeout=120) as c:
            c.create_collection("kb")
            ingest_all(c, "kb", DOCS)
            blocked, release = threading.Event(), threading.Event()
            real = Embedder._encode

            def held_encode(self, texts):
                if len(texts) == embedder_module.BULK_BATCH_SIZE:  # a bulk batch of the large document
                    blocked.set()
                    release.wait(60)
                return real(self, texts)

            monkeypatch.setattr(Embedder, "_encode", held_encode)
            # ~28 chunks, 4 bulk batches: the first is held below, so a larger document would only add embedding
            # after the release (a tenth of a second or more per chunk on 2 cores).
            large = {"id": "large", "text": " ".join(f"Sentence {i} about rivers and mountains." for i in range(600))}
            acks: list = []
            ingesting = threading.Thread(target=lambda: acks.extend(ingest_all(c, "kb", [large])))
            ingesting.start()
            assert blocked.wait(60)
            t0 = time.monotonic()
            with srv.client(timeout=30) as q:
                assert q.search("kb", "sourdough bread", k=1)[0]["doc_id"] == "bread"
                assert q.get_document("kb", "chess").id == "chess"
                assert [x.name for x in q.list_collections()] == ["kb"]
            assert time.monotonic() - t0 < 30 and ingesting.is_alive()  # answered while the ingestion waits
            release.set()
            ingesting.join(120)
            assert [a.document_id for a in acks] == ["large"] and acks[0].chunk_count > embedder_module.BULK_BATCH_SIZE
    finally:
        srv.stop()
