import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from retrieval.catalog import DB_FILE, Collections
from retrieval.chunker import ChunkerConfig
from retrieval.collection import CollectionConfig
from retrieval.types import Document, SearchResult
from retrieval.validation import MAX_TEXT_BYTES
from retrieval.vector_index import IndexConfig

REPO = Path(__file__).resolve().parents[2]

TOPICS = {
    "bread": "Knead the dough for ten minutes, let it rise, then bake the bread in a hot oven until golden.",
    "rates": "The central bank raised interest rates to slow inflation, and bond yields climbed.",
    "comet": "The comet's icy nucleus releases gas near the Sun, forming a long glowing tail.",
    "violin": "She tuned the violin, rosined the bow and played a slow sonata by Bach.",
    "python": "Python list comprehensions build a new list by applying an expression to each item.",
}
WORDS = (
    "amber basalt cedar delta ember fjord garnet harbor island jasper kelp lagoon meadow nectar orchid "
    "pumice quartz river saffron tundra umber valley willow xenon yarrow zephyr"
).split()


def unique_text(i: int, n_sentences: int = 1) -> str:
    """Distinct, deterministic text: a few rare words chosen by i."""
    rng = np.random.default_rng(i)
    return " ".join(
        f"Record {i} mentions {' and '.join(rng.choice(WORDS, 3, replace=False))}." for _ in range(n_sentences)
    )


def topic_docs():
    return [
        Document(
            id=k,
            text=v,
            metadata={"topic": k, "lang": "en" if k != "violin" else "de", "n": i, "even": i % 2 == 0},
            source=f"src/{k}.txt",
        )
        for i, (k, v) in enumerate(TOPICS.items())
    ]


# --- configuration ---------------------------------------------------------------------------------


def test_config_round_trips_its_reader_threshold_and_loads_configs_stored_before_it():
    for threshold in (None, -1.5, 0.0, 3.25):
        config = CollectionConfig(grounding="extract", reader_threshold=threshold)
        stored = json.loads(json.dumps(config.to_dict()))  # as SQLite keeps it
        assert stored["reader_threshold"] == threshold
        assert CollectionConfig.from_dict(stored) == config
    old = CollectionConfig(grounding="quote").to_dict()
    del old["reader_threshold"]  # a collection created before the setting existed
    assert CollectionConfig.from_dict(old).reader_threshold is None  # the reader's own threshold
    assert CollectionConfig.from_dict(old).grounding == "quote"


def test_config_round_trips_its_min_similarity_and_loads_configs_stored_before_it():
    for cut in (None, -4.5, 0.0, 0.35):
        config = CollectionConfig(reader_threshold=-1.0, min_similarity=cut)
        stored = json.loads(json.dumps(config.to_dict()))  # as SQLite keeps it
        assert stored["min_similarity"] == cut
        assert CollectionConfig.from_dict(stored) == config
    old = CollectionConfig(grounding="extract", reader_threshold=-1.0).to_dict()
    del old["min_similarity"]  # a collection created before the setting existed
    assert CollectionConfig.from_dict(old).min_similarity is None  # no cut
    assert CollectionConfig.from_dict(old).reader_threshold == -1.0


# --- ingest, get, delete, search -------------------------------------------------------------------


def test_ingest_and_search(colls):
    coll = colls.create("docs")
    results = coll.ingest(topic_docs() + [Document(id=None, text="A document without an id.")])
    assert [r.doc_id for r in results[:5]] == list(TOPICS)
    assert all(r.created and not r.replaced and r.chunk_count == 1 for r in results)
    generated = results[-1].doc_id
    assert len(generated) == 36 and coll.get_document(generated).text == "A document without an id."

    res = coll.search("how do I make bread at home?", k=3)
    assert isinstance(res, SearchResult) and res.hits is res and res.embed_ms > 0 and res.search_ms > 0
    assert len(res) == 3 and res[0].doc_id == "bread"
    assert [h.score for h in res] == sorted((h.score for h in res), reverse=True)
    top = res[0]
    assert top.text == TOPICS["bread"][top.start : top.end]
    assert top.metadata["topic"] == "bread" and top.source == "src/bread.txt"
    assert coll.search("interest rates and inflation", k=1)[0].doc_id == "rates"
    assert len(coll.search("anything", k=1000)) == 6  # k above the collection size

    doc = coll.get_document("comet", include_chunks=True)
    assert doc.chunk_count == len(doc.chunks) == 1 and doc.metadata["lang"] == "en"
    assert doc.chunks[0].text == doc.text[doc.chunks[0].start : doc.chunks[0].end]
    assert coll.get_document("comet").chunks is None


def test_long_documents_are_chunked_with_exact_spans(colls):
    coll = colls.create("long", CollectionConfig(chunker=ChunkerConfig(chunk_tokens=40, overlap_tokens=8)))
    text = "\n\n".join(unique_text(i, n_sentences=4) for i in range(12))
    [r] = coll.ingest([Document(id="long", text=text)])
    doc = coll.get_document("long", include_chunks=True)
    assert r.chunk_count == doc.chunk_count == len(doc.chunks) > 5
    for c in doc.chunks:
        assert c.text == text[c.start : c.end]
    # Any chunk's exact text finds that chunk first, with the right span.
    target = doc.chunks[len(doc.chunks) // 2]
    hit = coll.search(target.text, k=1, mode="dense")[0]
    assert (hit.chunk_id, hit.start, hit.end) == (target.chunk_id, target.start, target.end)
    assert hit.score > 0.99 and hit.dense_score == hit.score and hit.dense_rank == 1


def test_upsert_replaces_chunks(colls):
    coll = colls.create("up", CollectionConfig(chunker=ChunkerConfig(chunk_tokens=24, overlap_tokens=4)))
    old_text = " ".join(unique_text(i, 2) for i in range(5))
    [r1] = coll.ingest([Document(id="x", text=old_text, metadata={"v": 1})])
    old_ids = {c.chunk_id for c in coll.get_document("x", include_chunks=True).chunks}
    [r2] = coll.ingest([Document(id="x", text=TOPICS["comet"], metadata={"v": 2})])
    assert r1.chunk_count > 1 and r2.replaced and r2.chunk_count == 1
    doc = coll.get_document("x", include_chunks=True)
    assert doc.text == TOPICS["comet"] and doc.metadata == {"v": 2} and doc.chunk_count == 1
    assert not old_ids & {c.chunk_id for c in doc.chunks}
    st = coll.stats()
    assert (st["document_count"], st["chunk_count"], st["indexed_vectors"]) == (1, 1, 1)
    hits = coll.search(old_text, k=10)
    assert [h.chunk_id for h in hits] == [doc.chunks[0].chunk_id]  # the old chunks are gone from the index

    # The same id twice in one call: the last version wins, and nothing of the first stays indexed.
    res = coll.ingest([Document(id="y", text=TOPICS["bread"]), Document(id="y", text=TOPICS["rates"])])
    assert [r.replaced for r in res] == [False, True]
    assert coll.get_document("y").text == TOPICS["rates"]
    assert coll.stats()["indexed_vectors"] == coll.stats()["chunk_count"] == 2


def test_delete_document(colls):
    coll = colls.create("del")
    coll.ingest(topic_docs())
    assert coll.delete_document("bread") == 1
    with pytest.raises(NotFoundError):
        coll.get_document("bread")
    with pytest.raises(NotFoundError):
        coll.delete_document("bread")
    assert "bread" not in [h.doc_id for h in coll.search(TOPICS["bread"], k=10)]
    st = coll.stats()
    assert (st["document_count"], st["chunk_count"], st["indexed_vectors"]) == (4, 4, 4)


def test_search_by_vector(colls, embedder):
    coll = colls.create("vec")
    coll.ingest(topic_docs())
    q = embedder.embed([TOPICS["violin"]])[0]
    for v in (q, q.tolist(), q[None, :]):
        hit = coll.search(vector=v, k=1)[0]
        assert hit.doc_id == "violin" and hit.score == pytest.approx(1.0, abs=1e-2)


def test_filters(colls):
    coll = colls.create("flt")
    coll.ingest(topic_docs())
    # The nearest chunks are not allowed; the filter still yields k hits from the allowed ones.
    hits = coll.search(TOPICS["bread"], k=2, filter={"topic": {"$in": ["comet", "violin", "python"]}})
    assert len(hits) == 2 and {h.doc_id for h in hits} <= {"comet", "violin", "python"}
    assert [h.doc_id for h in coll.search(TOPICS["bread"], k=5, filter={"lang": "de"})] == ["violin"]
    assert [h.doc_id for h in coll.search("music", k=5, filter={"lang": {"$eq": "de"}})] == ["violin"]
    both = coll.search("x", k=5, filter={"lang": "en", "topic": {"$in": ["rates", "violin", "bread"]}})
    assert sorted(h.doc_id for h in both) == ["bread", "rates"]
    assert sorted(h.doc_id for h in coll.search("x", k=5, filter={"even": True})) == ["bread", "comet", "python"]
    assert [h.doc_id for h in coll.search("x", k=5, filter={"n": 1})] == ["rates"]
    assert coll.search("x", k=5, filter={"topic": "none"}) == []
    assert len(coll.search("x", k=5, filter={})) == 5
    with pytest.raises(InvalidArgumentError, match=r"unknown filter operator '\$gt'.*\$in"):
        coll.search("x", k=5, filter={"n": {"$gt": 1}})
    with pytest.raises(InvalidArgumentError, match="not supported"):
        coll.search("x", k=5, filter={"topic": ["a"]})


def test_validation_changes_nothing(colls):
    coll = colls.create("val")
    coll.ingest(topic_docs()[:2])
    before = coll.stats()
    bad_batches = [
        ([Document(id="ok", text="fine"), Document(id="e", text="   ")], InvalidArgumentError, "empty text"),
        (
            [Document(id="ok", text="fine"), Document(id="big", text="a" * (MAX_TEXT_BYTES + 1))],
            ResourceExhaustedError,
            "byte limit",
        ),
        (
            [Document(id="ok", text="fine"), Document(id="m", text="t", metadata={"x": float("nan")})],
            InvalidArgumentError,
            "metadata",
        ),
        (
            [Document(id="ok", text="fine"), Document(id="m", text="t", metadata={"x": {1, 2}})],
            InvalidArgumentError,
            "metadata",
        ),
        (
            [Document(id="ok", text="fine"), Document(id="s", text="bad \ud800 surrogate")],
            InvalidArgumentError,
            "Unicode",
        ),
        ([Document(id="ok", text="fine"), Document(id=5, text="t")], InvalidArgumentError, "id must be a string"),
        ([Document(id="ok", text="fine"), {"id": "d", "body": "t"}], InvalidArgumentError, "unknown fields"),
        ([Document(id="ok", text="fine"), Document(id="c", text="\x00\x01")], InvalidArgumentError, "tokenizer"),
    ]
    for batch, exc, msg in bad_batches:
        with pytest.raises(exc, match=msg):
            coll.ingest(batch)
    after = coll.stats()
    assert (
        (after["document_count"], after["chunk_count"], after["indexed_vectors"])
        == (before["document_count"], before["chunk_count"], before["indexed_vectors"])
        == (2, 2, 2)
    )
    with pytest.raises(NotFoundError):
        coll.get_document("ok")

    for kwargs, msg in [
        ({"query": "q", "k": 0}, "1..1000"),
        ({"query": "q", "k": 1001}, "1..1000"),
        ({"query": "q", "k": True}, "1..1000"),
        ({"query": "q", "k": 2.5}, "1..1000"),
        ({"query": "  "}, "empty"),
        ({}, "exactly one"),
        ({"query": "q", "vector": [0.0] * 384}, "exactly one"),
        ({"vector": [0.1] * 383}, "384 values"),
        ({"vector": [[0.1] * 384] * 2}, "384 values"),
        ({"vector": [float("nan")] * 384}, "NaN"),
        ({"vector": ["a"] * 384}, "list of numbers"),
        ({"query": "q", "nprobe": 0}, "nprobe"),
        ({"query": "q", "rerank": "yes"}, "rerank"),
        ({"query": "q", "filter": "lang=en"}, "must be an object"),
    ]:
        with pytest.raises(InvalidArgumentError, match=msg):
            coll.search(**kwargs)
    assert coll.ingest([]) == []


def test_l2_metric_scores_are_negative_distances(colls):
    coll = colls.create("l2", CollectionConfig(index=IndexConfig(kind="flat", metric="l2")))
    coll.ingest(topic_docs())
    hits = coll.search(TOPICS["python"], k=5, mode="dense")
    assert hits[0].doc_id == "python" and hits[0].score == pytest.approx(0.0, abs=1e-2)
    assert all(h.score <= 1e-3 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_concurrent_ingest_and_search(colls):
    coll = colls.create("conc")
    coll.ingest(topic_docs())
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for b in range(4):
                coll.ingest([Document(id=f"t{t}-{b}-{j}", text=unique_text(100 * t + 10 * b + j)) for j in range(3)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(10):
                assert coll.search("bread", k=3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = coll.stats()
    assert st["document_count"] == st["chunk_count"] == st["indexed_vectors"] == 5 + 3 * 4 * 3


# --- persistence -----------------------------------------------------------------------------------


def search_by_vectors(coll, qv, **kw):
    return [[(h.chunk_id, round(h.score, 4)) for h in coll.search(vector=v, k=4, **kw)] for v in qv]


def test_restart_restores_without_reembedding(tmp_path, embedder):
    data = tmp_path / "data"
    queries = ["baking bread", "astronomy and comets", "record mentions quartz"]
    qv = embedder.embed(queries)
    colls = Collections(data, device="cpu", snapshot_every=10**6)
    coll = colls.create("p", CollectionConfig(chunker=ChunkerConfig(chunk_tokens=32, overlap_tokens=6)))
    coll.ingest(topic_docs() + [Document(id=f"r{i}", text=unique_text(i, 3)) for i in range(20)])
    expected = search_by_vectors(coll, qv)
    colls.close()  # snapshots

    # 1. A clean restart loads the snapshot and embeds nothing.
    colls = Collections(data, device="cpu", snapshot_every=10**6)
    coll = colls.get("p")
    assert coll.restored_from == "snapshot" and not coll.embedder_loaded
    assert search_by_vectors(coll, qv) == expected
    assert not coll.embedder_loaded
    assert coll.config.chunker.chunk_tokens == 32  # the config came back from SQLite

    # 2. Changes after the snapshot, then a "crash" (no snapshot on close): replayed from SQLite.
    coll.ingest([Document(id=f"late{i}", text=unique_text(1000 + i, 2)) for i in range(4)])
    coll.ingest([Document(id="bread", text=TOPICS["comet"] + " Replaced.")])
    coll.delete_document("rates")
    coll.delete_document("r3")
    expected = search_by_vectors(coll, qv)
    n_chunks = coll.stats()["chunk_count"]
    colls.close(snapshot=False)

    colls = Collections(data, device="cpu", snapshot_every=10**6)
    coll = colls.get("p")
    assert coll.restored_from == "snapshot" and not coll.embedder_loaded
    st = coll.stats()
    assert st["chunk_count"] == st["indexed_vectors"] == n_chunks
    assert search_by_vectors(coll, qv) == expected
    assert "rates" not in {h.doc_id for h in coll.search(vector=embedder.embed([TOPICS["rates"]])[0], k=10)}

    # A text query embeds exactly that query, with the collection's (lazily loaded) embedder.
    assert coll.search("record mentions quartz", k=1)
    assert coll.embedder_loaded and coll.embedder.texts_embedded == 1
    colls.close()

    # 3. Without a usable snapshot the index is rebuilt from the stored vectors, still without embedding.
    for damage in ("delete", "corrupt"):
        snap = next((data / "indexes").glob("*/index.npz"))
        if damage == "delete":
            snap.unlink()
        else:
            snap.write_bytes(b"not an npz file")
        colls = Collections(data, device="cpu", snapshot_every=10**6)
        coll = colls.get("p")
        assert coll.restored_from == "store" and not coll.embedder_loaded
        assert search_by_vectors(coll, qv) == expected
        colls.close()


def test_the_index_trains_itself_in_the_background(tmp_path, embedder):
    """Exact until min_train_size vectors; then a background tuning picks the index's parameters from its vectors
    and installs them; a retrain on demand; the trained state and its report survive a restart."""
    data = tmp_path / "data"
    config = CollectionConfig(index=IndexConfig(min_train_size=150))
    colls = Collections(data, device="cpu")
    coll = colls.create("ad", config)
    docs = [Document(id=f"r{i}", text=unique_text(i), metadata={"odd": i % 2 == 1}) for i in range(170)]
    coll.ingest(docs[:120])
    assert coll.wait_for_training(60) and coll.stats()["index_state"] == "exact"
    assert coll.stats()["index"]["tuning"] is None  # nothing tried below min_train_size
    coll.ingest(docs[120:])  # 170 >= 150: a background training starts
    assert coll.wait_for_training(120)
    st = coll.stats()
    assert st["index_state"] == "trained" and st["indexed_vectors"] == st["chunk_count"] == 170
    tuning = st["index"]["tuning"]
    assert tuning["met"] and tuning["recall"] - tuning["recall_stderr"] >= 0.95 and tuning["vectors"] == 170
    assert st["index"]["params"] == tuning["params"] and tuning["params"]["kind"] in ("pq", "ivfpq")
    assert 0 < tuning["bytes_per_vector"] < 4 * 384  # codes, not float32 vectors
    for i in (3, 77, 150):
        assert coll.search(docs[i].text, k=1, mode="dense")[0].doc_id == f"r{i}"  # re-ranked exactly
    hits = coll.search(docs[4].text, k=10, filter={"odd": True}, mode="dense")
    assert len(hits) == 10 and all(h.metadata["odd"] for h in hits)
    assert len(coll.search(docs[4].text, k=5, rerank=False, mode="dense")) == 5
    report = coll.retrain()
    assert report["vectors"] == 170 and coll.stats()["index"]["tuning"] == report
    assert coll.search(docs[77].text, k=1, mode="dense")[0].doc_id == "r77"
    colls.close(snapshot=False)  # training snapshotted by itself

    colls = Collections(data, device="cpu")
    coll = colls.get("ad")
    assert coll.restored_from == "snapshot" and coll.stats()["index_state"] == "trained"
    assert coll.stats()["index"]["tuning"] == report and not coll.stats()["training"]
    assert coll.search(docs[150].text, k=1, mode="dense")[0].doc_id == "r150"
    colls.close()


def test_searches_and_writes_go_on_while_the_index_retrains(tmp_path, embedder, monkeypatch):
    """A (re)training tunes without the collection's lock: while it runs, searches answer and ingests commit; the
    vectors that arrived meanwhile reach the new index when it is installed."""
    import retrieval.vector_index as vector_index

    started, release = threading.Event(), threading.Event()
    real_tune = vector_index.tune

    def slow_tune(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real_tune(*args, **kwargs)

    monkeypatch.setattr(vector_index, "tune", slow_tune)
    colls = Collections(tmp_path / "data", device="cpu")
    coll = colls.create("bg", CollectionConfig(index=IndexConfig(min_train_size=100)))
    docs = [Document(id=f"r{i}", text=unique_text(i)) for i in range(160)]
    coll.ingest(docs[:100])
    assert started.wait(30) and coll.stats()["training"]
    for i in (5, 50):  # the training holds no lock: searches answer (exactly, from the old index)
        assert coll.search(docs[i].text, k=1, mode="dense")[0].doc_id == f"r{i}"
    coll.ingest(docs[100:])  # and writes commit
    coll.delete_document("r7")
    assert coll.stats()["index_state"] == "exact"
    release.set()
    assert coll.wait_for_training(120)
    st = coll.stats()
    assert st["index_state"] == "trained" and st["index"]["tuning"]["vectors"] == 100
    assert st["indexed_vectors"] == st["chunk_count"] == 159
    assert coll.search(docs[140].text, k=1, mode="dense")[0].doc_id == "r140"  # added during the training
    assert "r7" not in {h.doc_id for h in coll.search(docs[7].text, k=10, mode="dense")}
    colls.close()


def test_closing_cancels_a_training_in_progress(tmp_path, embedder, monkeypatch):
    import retrieval.tuning as tuning

    started, built = threading.Event(), []
    real_settings, real_make = tuning.settings, tuning.make_backend

    def many_settings(*args):
        return real_settings(*args) * 50  # a long tuning: nothing meets recall 1.0, so every setting is measured

    def counting_make(*args, **kwargs):
        built.append(1)
        started.set()
        return real_make(*args, **kwargs)

    monkeypatch.setattr(tuning, "settings", many_settings)
    monkeypatch.setattr(tuning, "make_backend", counting_make)
    colls = Collections(tmp_path / "data", device="cpu")
    coll = colls.create("cx", CollectionConfig(index=IndexConfig(min_train_size=100, recall_target=1.0)))
    coll.ingest([Document(id=f"r{i}", text=unique_text(i)) for i in range(100)])
    assert started.wait(30)
    colls.close()  # cancels the training and waits for it
    assert coll.wait_for_training(0) and len(built) < len(many_settings(IndexConfig(), 68, 384)) // 2
    colls = Collections(tmp_path / "data", device="cpu")
    assert colls.get("cx").stats()["index"]["tuning"] is None  # nothing was installed nor saved
    colls.close()


CHILD = r"""
import json, sys
import numpy as np
from retrieval import Collections, Document

colls = Collections(sys.argv[1], device="cpu", snapshot_every=7)
coll = colls.get("crash")
rng = np.random.default_rng(0)
words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()

def text(i, v):
    n = 1 + i % 4  # several sentences: some documents have more than one chunk
    return " ".join(f"Doc {i} version {v} says " + " ".join(rng.choice(words, 12)) + "." for _ in range(n))

def say(*args):
    print(json.dumps(args), flush=True)

i = 0
while True:
    batch = [Document(id=f"doc-{i + j}", text=text(i + j, 1), metadata={"n": i + j}) for j in range(3)]
    say("next", [d.id for d in batch])
    for r in coll.ingest(batch):
        say("ingest", r.doc_id, r.chunk_count)
    if i >= 6:
        say("next", [f"doc-{i - 6}"])
        [r] = coll.ingest([Document(id=f"doc-{i - 6}", text=text(i - 6, 2))])
        say("ingest", r.doc_id, r.chunk_count)
        say("next", [f"doc-{i - 5}"])
        coll.delete_document(f"doc-{i - 5}")
        say("delete", f"doc-{i - 5}")
    i += 3
"""


def test_acknowledged_documents_survive_sigkill(tmp_path, embedder):
    data = tmp_path / "data"
    with Collections(data, device="cpu") as colls:
        colls.create("crash", CollectionConfig(chunker=ChunkerConfig(chunk_tokens=24, overlap_tokens=4)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    acked: dict[str, int | None] = {}  # doc id -> acknowledged chunk count (None: deleted)
    in_flight: list[str] = []  # documents of the last operation announced (maybe cut off by the kill)
    n_acks = 0
    try:
        # Lines the child printed before it died are still in the pipe: read them all.
        for line in proc.stdout:
            try:
                event, *args = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut in half by the kill: its operation is the one in flight
            if event == "next":
                in_flight = args[0]
            elif event == "ingest":
                acked[args[0]] = args[1]
                n_acks += 1
            elif event == "delete":
                acked[args[0]] = None
            if n_acks >= 40 and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # mid-ingestion: the child never waits for us
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child stopped before it was killed"
    assert n_acks >= 40

    with Collections(data, device="cpu") as colls:
        coll = colls.get("crash")
        assert not coll.embedder_loaded
        # Acknowledged state, except the documents of the operation that was cut off (either state).
        for doc_id, n in acked.items():
            if doc_id in in_flight:
                continue
            if n is None:
                with pytest.raises(NotFoundError):
                    coll.get_document(doc_id)
                continue
            doc = coll.get_document(doc_id, include_chunks=True)
            assert doc.chunk_count == n == len(doc.chunks)
            vec = coll._index.get([doc.chunks[0].chunk_id])  # the stored vector, searchable in the index
            assert coll.search(vector=vec[0], k=1)[0].doc_id == doc_id
        # No document is half there: every one has all its chunks, and the index has exactly them.
        total = 0
        db = sqlite3.connect(f"file:{data / DB_FILE}?mode=ro", uri=True)
        doc_ids = [r[0] for r in db.execute("SELECT doc_id FROM documents WHERE cid = ?", (coll.cid,))]
        db.close()
        for doc_id in doc_ids:
            doc = coll.get_document(doc_id, include_chunks=True)
            assert doc.chunk_count == len(doc.chunks) > 0
            assert all(c.text == doc.text[c.start : c.end] for c in doc.chunks)
            total += doc.chunk_count
        st = coll.stats()
        assert st["chunk_count"] == total == st["indexed_vectors"]
