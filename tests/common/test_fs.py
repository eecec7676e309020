import os

import pytest

from common.fs import atomic_write


def test_atomic_write_replaces_the_whole_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old contents")
    with atomic_write(p) as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_text_mode_and_new_file(tmp_path):
    p = tmp_path / "new.json"
    with atomic_write(p, "w") as f:
        f.write("{}")
    assert p.read_text() == "{}"
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(p, "ab"):
            pass
