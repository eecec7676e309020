"""recovery against a real SQLite store: replay after a snapshot, rebuild when the snapshot or an update is bad,
tombstones pruned once a snapshot reflects them, snapshots every n changes. Vectors are random (no embedder)."""

import numpy as np

from retrieval import recovery
from retrieval.snapshot import SNAPSHOT
from retrieval.store import vectors_to_blobs
from retrieval.vector_index import IndexConfig, VectorIndex

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


def _open(store, cid, path):
    return recovery.restore(store, cid, D, IndexConfig(kind="flat"), path)


def _ids(index):
    return np.sort(index.ids())


def _indexed(store, cid, index, doc_id, n, seed, every=1000):
    """A document committed to the store and applied to the index, as an ingestion does."""
    ids, _, x = _put(store, cid, doc_id, n, seed)
    return recovery.apply(store, cid, index, np.zeros(0, np.int64), x, ids, every), ids, x


def test_reopen_replays_changes_newer_than_the_snapshot(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    index, how = _open(store, cid, path)
    assert how == "store" and index.unsaved > 0  # a fresh index is worth a snapshot
    index, a, _ = _indexed(store, cid, index, "a", 5, 0)
    recovery.save(store, cid, index)
    snap_seq = store.last_seq()
    # after the snapshot: b added, a deleted, both committed to the store but never applied (a crash)
    b, _, _ = _put(store, cid, "b", 3, 1)
    _delete(store, cid, "a")
    again, how = _open(store, cid, path)
    assert how == "snapshot" and again.unsaved == 5 + 3
    np.testing.assert_array_equal(_ids(again), np.sort(b))
    # a's tombstones, needed by the replay above, are forgotten once a snapshot reflects them
    np.testing.assert_array_equal(np.sort(store.tombstoned_ids(cid, snap_seq)), np.sort(a))
    recovery.save(store, cid, again)
    assert len(store.tombstoned_ids(cid, snap_seq)) == 0


def test_a_damaged_snapshot_is_rebuilt_from_the_store(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    index, _ = _open(store, cid, path)
    index, a, xa = _indexed(store, cid, index, "a", 4, 0)
    recovery.save(store, cid, index)
    (path / SNAPSHOT).write_bytes(b"not a snapshot")
    again, how = _open(store, cid, path)
    assert how == "store"
    np.testing.assert_array_equal(_ids(again), np.sort(a))
    D_, I = again.search(xa[:1], 1)
    assert I[0, 0] == a[0]


def test_a_snapshot_out_of_step_with_the_store_is_rebuilt(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    index, _ = _open(store, cid, path)
    index, a, _ = _indexed(store, cid, index, "a", 4, 0)
    index.add(np.zeros((1, D), np.float32), [10**6])  # a vector the store never had
    recovery.save(store, cid, index)
    again, how = _open(store, cid, path)
    assert how == "store"
    np.testing.assert_array_equal(_ids(again), np.sort(a))


def test_a_failed_update_rebuilds_from_the_store(store, tmp_path, monkeypatch):
    cid = _cid(store)
    index, _ = _open(store, cid, tmp_path / "ix")
    a, _, xa = _put(store, cid, "a", 4, 0)

    def broken_add(x, ids):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index, "add", broken_add)
    index = recovery.apply(store, cid, index, np.zeros(0, np.int64), xa, a, 1000)  # logged, not raised
    assert isinstance(index, VectorIndex)
    np.testing.assert_array_equal(_ids(index), np.sort(a))


def test_snapshots_every_n_changes(store, tmp_path):
    cid, path = _cid(store), tmp_path / "ix"
    index, _ = _open(store, cid, path)
    recovery.save(store, cid, index)
    index, _, _ = _indexed(store, cid, index, "a", 4, 0, every=6)
    assert index.unsaved == 4
    index, _, _ = _indexed(store, cid, index, "b", 4, 1, every=6)
    assert index.unsaved == 0  # 8 >= 6: saved
    assert _open(store, cid, path)[0].unsaved == 0  # and nothing to replay


def test_a_trained_index_comes_back_trained(store, tmp_path):
    """The owner snapshots an index once it installed a trained backend (Collection._train); restoring gives back the
    same parameters and tuning report, and replays what changed since."""
    cid, path = _cid(store), tmp_path / "ix"
    config = IndexConfig(kind="pq", m=4, nbits=2, backend="torch", recall_target=0.5)
    index, _ = recovery.restore(store, cid, D, config, path)
    index, _, _ = _indexed(store, cid, index, "a", 40, 0)
    assert not index.is_trained
    index.retrain()
    recovery.save(store, cid, index)
    assert index.unsaved == 0
    index, _, _ = _indexed(store, cid, index, "b", 5, 1)
    again, how = recovery.restore(store, cid, D, config, path)
    assert how == "snapshot" and again.is_trained and again.ntotal == 45
    assert again.params == index.params and again.tuning == index.tuning
