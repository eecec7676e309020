"""The on-disk layout of an index directory (data_dir/indexes/<cid>-<name>/):

    index.npz          the snapshot: a JSON "meta" record (format, config, last_seq, the trained parameters and their
                       tuning report, ...), the row -> id table ("row_ids") and the trained backend's arrays
                       ("index.*"); replaced atomically
    vectors.<gen>.f16  the float16 rows (vectors.HalfStore), append-only; compaction starts a new generation

The snapshot names the generation and the rows it covers, so whatever a crash leaves behind (a half-written
generation, rows appended after the snapshot) is either ignored or removed on the next load. A snapshot whose
format is not FORMAT_VERSION is refused; the owner then rebuilds the index from the store (recovery.py).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from common.fs import atomic_write

SNAPSHOT = "index.npz"
# Bump when what a snapshot holds changes meaning: older snapshots are then rebuilt from the store.
# 2: the trained parameters come from tuning (meta "params", "tuning", "attempted_size"), not from the config.
FORMAT_VERSION = 2


def exists(directory: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(directory, SNAPSHOT))


def vectors_file(directory: str | os.PathLike, gen: int) -> str:
    return os.path.join(directory, f"vectors.{gen}.f16")


def generations(directory: str | os.PathLike) -> list[int]:
    """The vector-file generations present in `directory`."""
    return [int(os.path.basename(f).split(".")[1]) for f in glob.glob(os.path.join(directory, "vectors.*.f16"))]


def remove_other_generations(directory: str | os.PathLike, keep: int) -> None:
    """Delete the vector files no snapshot refers to any more (a finished or crashed compaction's leftovers)."""
    for gen in generations(directory):
        if gen != keep:
            os.remove(vectors_file(directory, gen))


def write(directory: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Replace the snapshot atomically: meta (JSON-able, "format" added) and arrays (names without "meta")."""
    record = np.frombuffer(json.dumps({**meta, "format": FORMAT_VERSION}).encode(), dtype=np.uint8)
    with atomic_write(os.path.join(directory, SNAPSHOT)) as f:
        np.savez(f, meta=record, **arrays)


def read(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of the snapshot in `directory`; ValueError when there is none or its format is not ours."""
    path = os.path.join(directory, SNAPSHOT)
    if not os.path.exists(path):
        raise ValueError(f"no index snapshot in {os.fspath(directory)} (expected {SNAPSHOT})")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported index snapshot format {meta.get('format')!r} in {os.fspath(directory)}")
    return meta, arrays
