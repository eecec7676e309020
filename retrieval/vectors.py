"""Raw-vector side of the index: float16 vector storage, its id map, exact search and exact re-ranking.

`HalfStore` keeps a float16 copy of every vector (half the bytes of float32, and enough precision for
re-ranking normalised sentence embeddings) either in memory or in a memory-mapped file, addressed by
int64 ids through its `IdLookup`: the index's one vector store and one id map. Rows are append-only: a
removal only tombstones its row (id -1) until `compact()`, so a snapshot that records "rows [0, n) with
these ids" stays valid while the file keeps growing (this is what makes vector_index.py's crash-safe
snapshots cheap).

Distances here follow the internal convention shared with the backends: smaller is better ("ip" is
negated), +inf / -1 padding; `to_public` turns them into faiss's conventions as results leave the index.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from common.fs import atomic_write, fsync_path

FLT_MAX = float(np.finfo(np.float32).max)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


class IdLookup:
    """int64 id -> int64 value (a row or position) with vectorised lookups.

    Keys live in a big sorted array plus a small sorted pending one; inserts only re-sort the pending
    part, which is merged in once it exceeds 1/8 of the main part, so many small add() calls do not each
    pay an O(n log n) sort.
    """

    def __init__(self):
        self._keys, self._vals = _EMPTY_I64, _EMPTY_I64  # main, sorted by key
        self._pk, self._pv = _EMPTY_I64, _EMPTY_I64  # pending, sorted by key

    def __len__(self) -> int:
        return len(self._keys) + len(self._pk)

    @staticmethod
    def _sorted(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(k, kind="stable")  # timsort: two sorted runs merge in linear time
        return k[order], v[order]

    def _merge(self) -> None:
        if len(self._pk):
            self._keys, self._vals = self._sorted(
                np.concatenate([self._keys, self._pk]), np.concatenate([self._vals, self._pv])
            )
            self._pk, self._pv = _EMPTY_I64, _EMPTY_I64

    def insert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Keys must not be present yet (callers check with lookup first)."""
        self._pk, self._pv = self._sorted(
            np.concatenate([self._pk, np.asarray(keys, np.int64)]),
            np.concatenate([self._pv, np.asarray(vals, np.int64)]),
        )
        if len(self._pk) > max(4096, len(self._keys) // 8):
            self._merge()

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Values for keys (same shape), -1 where a key is absent."""
        keys = np.asarray(keys, np.int64)
        out = np.full(keys.shape, -1, dtype=np.int64)
        for kk, vv in ((self._keys, self._vals), (self._pk, self._pv)):
            if len(kk):
                pos = np.searchsorted(kk, keys).clip(max=len(kk) - 1)
                hit = kk[pos] == keys
                out[hit] = vv[pos[hit]]
        return out

    def delete(self, keys: np.ndarray) -> np.ndarray:
        """Remove keys; returns their old values (-1 for absent keys)."""
        self._merge()
        vals = self.lookup(keys)
        if (vals >= 0).any():
            keep = ~np.isin(self._keys, np.asarray(keys, np.int64))
            self._keys, self._vals = self._keys[keep], self._vals[keep]
        return vals

    def keys(self) -> np.ndarray:
        self._merge()
        return self._keys.copy()


class HalfStore:
    """float16 vectors (rows) addressed by int64 ids; a memory-mapped file when `path` is given.

    rows [0, n_rows) are written once; remove() sets the row's id to -1 (a tombstone). `layout` changes whenever
    rows are renumbered (compact, restore), so (layout, n_rows) names what view() holds: a copy of the rows taken
    under the same pair is still exact. Growing or compacting switches to a new array and leaves the old one as it
    was, so an array view() returned can be read later, without the owner's lock (a background training does).
    """

    def __init__(self, d: int, path: str | os.PathLike | None = None):
        self.d = d
        self.path = os.fspath(path) if path is not None else None
        self._data: np.ndarray | None = None  # (capacity, d) float16
        self._row_ids = _EMPTY_I64.copy()  # (capacity,) id of each row, -1 = free or removed
        self.n_rows = 0
        self.layout = 0
        self._lookup = IdLookup()

    # -- file management
    def _open(self, capacity: int) -> None:
        if self.path is None:
            data = np.zeros((capacity, self.d), dtype=np.float16)
            if self._data is not None:
                data[: self.n_rows] = self._data[: self.n_rows]
            self._data = data
        else:
            if self._data is not None and isinstance(self._data, np.memmap):
                self._data.flush()
            self._data = None
            if capacity > 0:
                with open(self.path, "ab") as f:  # grow (or create) the file; existing rows untouched
                    if os.path.getsize(self.path) < capacity * self.d * 2:
                        f.truncate(capacity * self.d * 2)
                self._data = np.memmap(self.path, dtype=np.float16, mode="r+", shape=(capacity, self.d))
        ids = np.full(capacity, -1, dtype=np.int64)
        ids[: self.n_rows] = self._row_ids[: self.n_rows]
        self._row_ids = ids

    @property
    def capacity(self) -> int:
        return 0 if self._data is None else self._data.shape[0]

    @property
    def ntotal(self) -> int:
        return len(self._lookup)

    def flush(self) -> None:
        """Make rows [0, n_rows) durable (msync + fsync for a memory-mapped store)."""
        if isinstance(self._data, np.memmap):
            self._data.flush()
            fsync_path(self.path)

    # -- contents
    def add(self, ids: np.ndarray, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Append vectors (n, d) under new ids (n,); returns their rows. Callers check ids are new."""
        n = len(ids)
        if n == 0:
            return _EMPTY_I64.copy()
        if self.n_rows + n > self.capacity:
            self._open(max(1024, 2 * self.capacity, self.n_rows + n))
        rows = np.arange(self.n_rows, self.n_rows + n, dtype=np.int64)
        xh = x.detach().to("cpu", torch.float16).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float16)
        self._data[self.n_rows : self.n_rows + n] = xh
        self._row_ids[self.n_rows : self.n_rows + n] = ids
        self.n_rows += n
        self._lookup.insert(ids, rows)
        return rows

    def remove(self, ids: np.ndarray) -> int:
        rows = self._lookup.delete(ids)
        rows = rows[rows >= 0]
        self._row_ids[rows] = -1
        return len(rows)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ids (any shape), -1 where absent (ids of -1 map to -1)."""
        return self._lookup.lookup(ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.rows_of(ids) >= 0

    def ids(self) -> np.ndarray:
        """Live ids in row order."""
        r = self._row_ids[: self.n_rows]
        return r[r >= 0].copy()

    def row_ids(self) -> np.ndarray:
        """(n_rows,) id per row with -1 tombstones (a view: copy before mutating the store)."""
        return self._row_ids[: self.n_rows]

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._row_ids[: self.n_rows] >= 0)

    def get_rows(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """rows (n,) -> float32 tensor (n, d)."""
        if len(rows) == 0:
            return torch.zeros(0, self.d, device=device)
        return torch.from_numpy(np.asarray(self._data[rows], dtype=np.float32)).to(device)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors (n, d) for ids; raises KeyError when an id is absent."""
        rows = self.rows_of(np.asarray(ids, np.int64))
        if (rows < 0).any():
            raise KeyError(f"ids not in the store: {np.asarray(ids)[rows < 0][:10].tolist()}")
        return np.asarray(self._data[rows], dtype=np.float32)

    def view(self) -> np.ndarray:
        """(n_rows, d) float16 rows including tombstoned ones."""
        if self._data is None:
            return np.zeros((0, self.d), np.float16)
        return self._data[: self.n_rows]

    @property
    def tombstones(self) -> int:
        return self.n_rows - self.ntotal

    def compact(self, path: str | os.PathLike | None = None) -> None:
        """Drop tombstoned rows, writing the live rows to `path` (a new file) or in memory.

        For a file-backed store the new file is written atomically (and durably) before the store switches to
        it; the old file is left for the caller to delete once it no longer references it.
        """
        live = self.live_rows()
        ids = self._row_ids[live]
        vecs = np.asarray(self.view()[live]) if len(live) else np.zeros((0, self.d), np.float16)
        self.layout += 1
        new_path = os.fspath(path) if path is not None else None
        if new_path is not None:
            with atomic_write(new_path) as f:
                f.write(np.ascontiguousarray(vecs, dtype=np.float16).tobytes())
        if isinstance(self._data, np.memmap):
            self._data.flush()
        self._data, self.path, self.n_rows = None, new_path, 0
        self._row_ids = _EMPTY_I64.copy()
        self._lookup = IdLookup()
        if new_path is not None:
            self._open(len(live))
            self._row_ids[: len(live)] = ids
            self.n_rows = len(live)
            self._lookup.insert(ids, np.arange(len(live), dtype=np.int64))
        else:
            self.add(ids, vecs)

    def restore(self, row_ids: np.ndarray) -> None:
        """Adopt an existing file's first len(row_ids) rows with these ids (-1 = tombstone): load path."""
        n = len(row_ids)
        need = n * self.d * 2
        if self.path is None or (n and os.path.getsize(self.path) < need):
            raise ValueError(f"vector file {self.path} is shorter than the {n} rows its snapshot lists")
        self.n_rows = 0
        self.layout += 1
        self._open(max(n, os.path.getsize(self.path) // (2 * self.d)))
        self.n_rows = n
        self._row_ids[:n] = row_ids
        live = np.flatnonzero(row_ids >= 0)
        self._lookup = IdLookup()
        self._lookup.insert(row_ids[live], live.astype(np.int64))


# -----------------------------------------------------------------------------------------------------------
# exact search and re-ranking (distances: smaller is better)


def to_public(dist: np.ndarray, ids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Internal (smaller is better, +inf pads) -> faiss conventions: D float32 (nq, k) inner products, descending, for
    "ip" and squared distances, ascending, for "l2"; I int64 (nq, k); missing results are id -1 with D = -FLT_MAX
    ("ip") or +FLT_MAX ("l2"), as faiss pads them."""
    missing = (ids < 0) | ~np.isfinite(dist)
    D = (-dist if metric == "ip" else dist).astype(np.float32)
    D[missing] = -FLT_MAX if metric == "ip" else FLT_MAX
    I = np.where(missing, -1, ids).astype(np.int64)
    return D, I


def pairwise_dist(xq: torch.Tensor, xb: torch.Tensor, metric: str) -> torch.Tensor:
    """xq (nq, d), xb (n, d) -> (nq, n): -<q, x> for "ip", ||q - x||^2 for "l2"."""
    ip = xq @ xb.t()
    if metric == "ip":
        return -ip
    return ((xq * xq).sum(1)[:, None] - 2 * ip + (xb * xb).sum(1)[None]).clamp_min_(0)


def merge_topk(best_d: torch.Tensor, best_i: torch.Tensor, d: torch.Tensor, i: torch.Tensor, k: int):
    """Keep the k smallest of two (nq, *) candidate sets. Returns (dist (nq, k), idx (nq, k))."""
    cd = torch.cat([best_d, d], 1)
    ci = torch.cat([best_i, i], 1)
    kk = min(k, cd.shape[1])
    v, p = cd.topk(kk, dim=1, largest=False)
    return v, ci.gather(1, p)


def exact_search(
    xq: torch.Tensor, xb, k: int, metric: str, rows: np.ndarray | None = None, block: int = 1 << 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest rows of xb (numpy float16/float32 or tensor (n, d)) for xq (nq, d), in blocks.

    rows: restrict the search to these rows of xb. Returns (dist (nq, k) ascending, rows (nq, k) int64)
    with +inf / -1 padding when fewer than k rows exist. The full (nq, n) matrix is never built.
    """
    nq = xq.shape[0]
    dev = xq.device
    best_d = torch.full((nq, k), float("inf"), device=dev)
    best_i = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    n = xb.shape[0] if rows is None else len(rows)
    block = max(1, min(block, (1 << 24) // max(1, nq)))
    for s in range(0, n, block):
        r = np.arange(s, min(n, s + block)) if rows is None else rows[s : s + block]
        if rows is None:
            chunk = xb[s : s + block]
        else:
            chunk = xb[torch.from_numpy(r).to(xb.device)] if isinstance(xb, torch.Tensor) else xb[r]
        if isinstance(chunk, torch.Tensor):
            xc = chunk.to(dev, torch.float32)
        else:
            xc = torch.from_numpy(np.asarray(chunk, dtype=np.float32)).to(dev)
        dist = pairwise_dist(xq, xc, metric)  # (nq, b)
        v, j = dist.topk(min(k, dist.shape[1]), dim=1, largest=False)  # partial top-k of the block
        ri = torch.from_numpy(np.asarray(r, np.int64)).to(dev)[j]
        best_d, best_i = merge_topk(best_d, best_i, v, ri, k)
    return best_d, best_i


def rerank(
    store: HalfStore, xq: torch.Tensor, cand_ids: np.ndarray, k: int, metric: str, qblock: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances from the float16 store for candidate ids (nq, k') -> the best k (dist, ids) numpy.

    Candidates of -1 or ids missing from the store are dropped (padded with +inf / -1).
    """
    nq, kc = cand_ids.shape
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    rows = store.rows_of(cand_ids)  # (nq, k')
    for s in range(0, nq, qblock):
        r = rows[s : s + qblock]
        valid = r >= 0
        vec = store.get_rows(np.where(valid, r, 0).ravel(), xq.device).view(r.shape[0], kc, store.d)
        q = xq[s : s + qblock]
        ip = torch.einsum("qkd,qd->qk", vec, q)
        dist = -ip if metric == "ip" else ((vec * vec).sum(-1) - 2 * ip + (q * q).sum(-1)[:, None]).clamp_min_(0)
        dist = dist.masked_fill(torch.from_numpy(~valid).to(dist.device), float("inf"))
        kk = min(k, kc)
        v, p = dist.topk(kk, dim=1, largest=False)
        ids = np.take_along_axis(cand_ids[s : s + qblock], p.cpu().numpy(), 1)
        v = v.cpu().numpy()
        ids[~np.isfinite(v)] = -1
        out_d[s : s + qblock, :kk] = v
        out_i[s : s + qblock, :kk] = ids
    return out_d, out_i
