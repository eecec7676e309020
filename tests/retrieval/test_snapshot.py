"""The index directory's on-disk layout: atomic snapshot records, the format check, vector-file generations."""

import json
import os

import numpy as np
import pytest

from retrieval import snapshot


def test_write_read_roundtrip_is_atomic(tmp_path):
    assert not snapshot.exists(tmp_path)
    snapshot.write(tmp_path, {"gen": 2, "last_seq": 7}, {"row_ids": np.arange(3)})
    assert snapshot.exists(tmp_path) and os.listdir(tmp_path) == [snapshot.SNAPSHOT]  # no temp file left
    meta, arrays = snapshot.read(tmp_path)
    assert meta == {"gen": 2, "last_seq": 7, "format": snapshot.FORMAT_VERSION}
    assert list(arrays) == ["row_ids"]
    np.testing.assert_array_equal(arrays["row_ids"], np.arange(3))
    snapshot.write(tmp_path, {"gen": 3}, {})  # replaces the previous one
    assert snapshot.read(tmp_path)[0]["gen"] == 3


def test_missing_or_foreign_snapshots_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no index snapshot"):
        snapshot.read(tmp_path)
    other = np.frombuffer(json.dumps({"format": snapshot.FORMAT_VERSION + 1}).encode(), np.uint8)
    np.savez(tmp_path / snapshot.SNAPSHOT, meta=other)
    with pytest.raises(ValueError, match="unsupported index snapshot format"):
        snapshot.read(tmp_path)


def test_generations(tmp_path):
    for gen in (0, 1, 4):
        open(snapshot.vectors_file(tmp_path, gen), "wb").close()
    assert sorted(snapshot.generations(tmp_path)) == [0, 1, 4]
    snapshot.remove_other_generations(tmp_path, 1)
    assert snapshot.generations(tmp_path) == [1] and os.path.exists(tmp_path / "vectors.1.f16")
