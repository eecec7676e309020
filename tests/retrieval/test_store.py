import numpy as np
import pytest

from retrieval.store import Store, blobs_to_vectors, vectors_to_blobs
from tests.retrieval.helpers import D, new_collection, put


def test_durability_settings(store):
    conn = store._reader()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_float16_round_trip():
    x = np.random.default_rng(0).standard_normal((5, D)).astype(np.float32)
    y = blobs_to_vectors(vectors_to_blobs(x), D)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert len(vectors_to_blobs(x)[0]) == 2 * D
    np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-3)
    assert blobs_to_vectors([], D).shape == (0, D)


def test_upsert_replaces_chunks_and_logs_tombstones(store):
    cid = new_collection(store)
    ids1, old1, replaced1 = put(store, cid, "a", 3)
    assert not replaced1 and len(old1) == 0
    assert ids1.tolist() == [1, 2, 3]
    seq_before = store.last_seq()
    ids2, old2, replaced2 = put(store, cid, "a", 2, seed=1)
    assert replaced2 and sorted(old2.tolist()) == ids1.tolist()
    assert ids2.min() > seq_before  # new chunks come after the tombstones' point in time
    assert store.counts(cid) == (1, 2)
    doc = store.get_document(cid, "a", include_chunks=True)
    assert [c["chunk_id"] for c in doc["chunks"]] == ids2.tolist() and doc["chunk_count"] == 2
    for c in doc["chunks"]:
        assert c["text"] == doc["text"][c["start"] : c["end"]]
    # A snapshot taken at seq_before holds ids1: replay removes them and adds ids2.
    assert sorted(store.tombstoned_ids(cid, seq_before).tolist()) == ids1.tolist()
    replay = [ids for ids, _ in store.iter_vectors(cid, D, after_seq=seq_before)]
    assert np.concatenate(replay).tolist() == ids2.tolist()
    # A snapshot taken after the replace needs nothing.
    assert len(store.tombstoned_ids(cid, store.last_seq())) == 0


def test_vectors_come_back_in_id_order_in_batches(store):
    cid = new_collection(store)
    for i in range(5):
        put(store, cid, f"d{i}", 3, seed=i)
    batches = list(store.iter_vectors(cid, D, batch=4))
    ids = np.concatenate([b[0] for b in batches])
    assert [len(b[0]) for b in batches] == [4, 4, 4, 3]
    assert ids.tolist() == list(range(1, 16))
    x = np.concatenate([b[1] for b in batches])
    expect = np.random.default_rng(2).standard_normal((3, D)).astype(np.float32)
    np.testing.assert_allclose(x[6:9], expect, atol=1e-2)


def test_sequence_numbers_are_never_reused(tmp_path):
    s = Store(tmp_path / "s.sqlite3")
    cid = new_collection(s)
    ids, _, _ = put(s, cid, "a", 2)
    with s.write() as conn:
        s.delete_document(conn, cid, "a")
    s.prune_tombstones(cid, s.last_seq())
    last = s.last_seq()
    s.close()
    s = Store(tmp_path / "s.sqlite3")
    ids2, _, _ = put(s, cid, "b", 1)
    assert ids2[0] > last > ids.max()
    s.close()


def test_failed_transaction_changes_nothing(store):
    cid = new_collection(store)
    put(store, cid, "a", 2)
    seq = store.last_seq()
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            store.delete_document(conn, cid, "a")
            raise RuntimeError("boom")
    assert store.counts(cid) == (1, 2) and store.last_seq() == seq
    assert store.get_document(cid, "a") is not None


def test_delete_document_and_collection(store):
    a, b = new_collection(store, "a"), new_collection(store, "b")
    put(store, a, "x", 2)
    put(store, b, "x", 3)
    with store.write() as conn:
        assert store.delete_document(conn, a, "missing") is None
        assert len(store.delete_document(conn, a, "x")) == 2
    assert store.counts(a) == (0, 0) and store.counts(b) == (1, 3)
    with store.write() as conn:
        store.delete_collection(conn, b)
    assert store.counts(b) == (0, 0)
    assert [r["name"] for r in store.collection_rows()] == ["a"]


def test_update_collection_config_replaces_one_rows_config(store):
    a, b = new_collection(store, "a"), new_collection(store, "b")
    before = {r["name"]: r for r in store.collection_rows()}
    with store.write() as conn:
        store.update_collection_config(conn, a, {**before["a"]["config"], "reader_threshold": 1.5})
    after = {r["name"]: r for r in store.collection_rows()}
    assert after["a"]["config"] == {**before["a"]["config"], "reader_threshold": 1.5}
    assert (
        after["b"] == before["b"] and after["a"]["cid"] == a and after["a"]["created_at"] == before["a"]["created_at"]
    )
    with pytest.raises(RuntimeError), store.write() as conn:  # rolled back with its transaction
        store.update_collection_config(conn, b, {"reader_threshold": 9.0})
        raise RuntimeError("boom")
    assert {r["name"]: r for r in store.collection_rows()}["b"] == before["b"]
