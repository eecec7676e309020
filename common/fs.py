"""Crash-safe file writes: a file is either its old contents or its complete new contents, never a torn mix.

    with atomic_write(path) as f:      # f: a binary file in path's directory
        np.savez(f, ...)               # or torch.save(obj, f), f.write(...)

The data goes to a temporary file next to `path`, is flushed and fsynced, then os.replace()s the old file, and the
directory is fsynced so the rename itself survives a power loss. If the block raises, the temporary file is removed
and `path` is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


def fsync_path(path: str | os.PathLike) -> None:
    """Make a file's contents (written through any handle, e.g. a memory map) or a directory's entries (a rename, a
    new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace(src, dst) for a file already fsynced, then fsync dst's directory."""
    os.replace(src, dst)
    fsync_path(os.path.dirname(os.path.abspath(dst)))


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write `path` atomically (module docstring). mode: "wb" or "w" (text, UTF-8)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    f = open(tmp, mode, encoding=None if "b" in mode else "utf-8")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        os.unlink(tmp)
        raise
    f.close()
    replace_durably(tmp, path)
