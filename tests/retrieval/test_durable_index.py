"""DurableIndex against a real SQLite store: replay after a snapshot, rebuild when the snapshot or an update
is bad, tombstones pruned once a snapshot reflects them. Vectors are random (no embedder needed)."""

import numpy as np

from retrieval.adaptive import SNAPSHOT, IndexConfig
from retrieval.durable_index import DurableIndex
from retrieval.store import vectors_to_blobs

D = 16


def _cid(store):
    with store.write() as conn:
        return store.insert_collection(conn, "c", {}, D, 0.0)


def _put(store, cid, doc_id, n, seed):
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    with store.write() as conn:
        ids, old, _ = store.put_document(
            conn, cid, doc_id, "t" * n, "{}", "", [(i, i + 1) for i in range(n)], ["t"] * n, vectors_to_blobs(x), 0.0
        )
    return ids, old, x.astype(np.float16).astype(np.float32)


def _delete(store, cid, doc_id):
    with store.write() as conn:
        return store.delete_document(conn, cid, doc_id)


def _open(store, cid, path, every=1000):
    return DurableIndex(store, cid, "c", D, IndexConfig(kind="flat"), path, every)


def _ids(dix):
    return np.sort(dix.index.ids())


def _indexed(store, cid, dix, doc_id, n, seed):
    """A document committed to the store and applied to the index, as an ingestion does."""
    ids, _, x = _put(store, cid, doc_id, n, seed)
    dix.apply(np.zeros(0, np.int64), x, ids)
    return ids, x


def test_reopen_replays_changes_newer_than_the_snapshot(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    dix = _open(store, cid, path)
    a, _ = _indexed(store, cid, dix, "a", 5, 0)
    dix.snapshot()
    snap_seq = store.last_seq()
    # after the snapshot: b added, a deleted, both committed to the store but never applied (a crash)
    b, _, _ = _put(store, cid, "b", 3, 1)
    _delete(store, cid, "a")
    again = _open(store, cid, path)
    assert again.restored_from == "snapshot" and again.dirty == 5 + 3
    np.testing.assert_array_equal(_ids(again), np.sort(b))
    # a's tombstones, needed by the replay above, are forgotten once a snapshot reflects them
    np.testing.assert_array_equal(np.sort(store.tombstoned_ids(cid, snap_seq)), np.sort(a))
    again.snapshot()
    assert len(store.tombstoned_ids(cid, snap_seq)) == 0


def test_a_damaged_snapshot_is_rebuilt_from_the_store(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    dix = _open(store, cid, path)
    a, xa = _indexed(store, cid, dix, "a", 4, 0)
    dix.close()
    (path / SNAPSHOT).write_bytes(b"not a snapshot")
    again = _open(store, cid, path)
    assert again.restored_from == "store"
    np.testing.assert_array_equal(_ids(again), np.sort(a))
    D_, I = again.index.search(xa[:1], 1)
    assert I[0, 0] == a[0]


def test_a_failed_update_rebuilds_from_the_store(store, tmp_path, monkeypatch):
    cid = _cid(store)
    dix = _open(store, cid, tmp_path / "ix")
    a, _, xa = _put(store, cid, "a", 4, 0)

    def broken_add(x, ids):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dix.index, "add", broken_add)
    dix.apply(np.zeros(0, np.int64), xa, a)  # logged, not raised: the store already has the document
    np.testing.assert_array_equal(_ids(dix), np.sort(a))


def test_snapshots_every_n_changes(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    dix = _open(store, cid, path, every=6)
    dix.snapshot()
    _indexed(store, cid, dix, "a", 4, 0)
    assert dix.dirty == 4
    _indexed(store, cid, dix, "b", 4, 1)
    assert dix.dirty == 0  # 8 >= 6: saved
    assert _open(store, cid, path).dirty == 0  # and nothing to replay
