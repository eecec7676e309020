"""Choosing an index's parameters from the collection's own vectors, each time it (re)trains.

    tuned = tune(x, ids, config)          # x (n, d) float32, ids (n,) int64
    tuned.backend                         # trained and holding all of x under ids; None when no setting qualified
    tuned.params, tuned.report            # the chosen IndexParams; what was measured (recall, bytes, cost, ...)

Like faiss's autotuning (`ParameterSpace.explore`), but over the training parameters too, automatic, and against the
collection's recall target:

1. Hold out nq = n / 5 (32..256) of the vectors as queries; the others are the database. Ground truth: each
   query's exact top 10 in the database.
2. Training settings: kind (pq, ivfpq) x m (~d/16, d/8, d/4) x nbits (4, 6, 8) x nlist (~2, 4, 8 sqrt(n)), keeping
   the values IndexConfig pins and what the data can train (4 ksub database vectors; IVF lists of
   min_points_per_centroid vectors).
3. Each is trained on the database (codebooks on CODEBOOK_POINTS points per centroid; one coarse quantizer per
   nlist, shared by the settings that use it), then the held-out queries are searched at each nprobe (powers of
   two below nlist), and prefixes of rerank_factor * 10 candidates (1..32) are re-ranked with the exact vectors:
   recall@10 for every search setting. A hit counts as found when its exact distance is within the 10th true neighbour's, so
   ties (duplicate chunks) are not misses. A setting meets the target when its recall minus one standard error (over
   the queries) does: a sample of a few dozen queries must not pass a setting by luck.
4. A setting's cost is a model of one query's work (`query_cost`: coarse quantizer, lookup tables, code scan,
   re-ranking). The cheapest setting that meets the recall target and is at least MIN_SPEEDUP x cheaper than
   exact search wins; ties go to fewer bytes per vector. Settings are visited by their lowest possible cost and
   the visit stops when none left can beat the best found, so a large collection trains few candidates.
5. The winner also gets the held-out vectors, and is returned ready to serve.

A `force`d tuning (an explicit retrain) takes the best recall measured when no setting meets the target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch

from retrieval.backend import Backend, make_backend, resolve_backend
from retrieval.index_config import IndexConfig, IndexParams
from retrieval.kmeans import KMeansConfig, kmeans
from retrieval.pq import divisors
from retrieval.vectors import exact_search

K = 10  # recall@K is what the target is about
MIN_QUERIES, MAX_QUERIES = 32, 256
MIN_POINTS_PER_CODE = 4  # database vectors per PQ centroid at least (k-means needs >= 1; 4 keeps codebooks sane)
NBITS = (4, 6, 8)
RERANK_FACTORS = (1, 2, 4, 8, 16, 32)
MIN_SPEEDUP = 2.0  # an approximate index must be this much cheaper than exact search to be worth its training
CODEBOOK_POINTS = 64  # training points per PQ centroid while tuning (faiss takes 256: 4x the k-means time)
COARSE_NITER = 10  # Lloyd iterations of the IVF coarse quantizer (TorchIVFPQ's and faiss's IVF default)


class TrainingCancelled(Exception):
    """The owner stopped a tuning in progress (the collection was closed or deleted)."""


@dataclass
class Tuned:
    backend: Backend | None  # trained, holding every vector; None when no setting qualified
    params: IndexParams | None
    report: dict = field(default_factory=dict)  # see tune()


@dataclass(frozen=True)
class Setting:
    kind: str
    m: int
    nbits: int
    nlist: int  # 0 for pq


@dataclass
class Measured:
    """One search setting of a trained candidate, measured."""

    setting: Setting
    nprobe: int
    rf: int
    cost: float  # query_cost
    recall: float  # recall@K over the held-out queries
    stderr: float  # its standard error
    backend: Backend

    def meets(self, target: float) -> bool:
        return self.recall - self.stderr >= target


def query_cost(s: Setting, nprobe: int, rerank_factor: int, rerank: bool, n: int, d: int) -> float:
    """Operations one query costs (multiply-adds and table lookups), by the shape of the search."""
    cost = d * (1 << s.nbits)  # lookup tables: each sub-vector against its ksub centroids
    if s.kind == "ivfpq":
        cost += s.nlist * d + s.m * n * min(nprobe, s.nlist) / s.nlist  # coarse quantizer + probed lists
    else:
        cost += s.m * n
    return cost + (rerank_factor * K * d if rerank else 0)


def estimated_bytes(s: Setting, backend: str, n: int, d: int) -> float:
    """Bytes per vector of the trained state: code + id, plus codebooks and coarse centroids shared by n vectors."""
    code = math.ceil(s.m * s.nbits / 8) if backend == "faiss" else s.m  # faiss packs bits; torch keeps a byte each
    shared = 4 * d * ((1 << s.nbits) + s.nlist)
    return code + 8 + shared / max(n, 1)


def settings(config: IndexConfig, n_db: int, d: int) -> list[Setting]:
    """The training settings worth measuring on n_db database vectors (module docstring, step 2)."""
    kinds = [config.kind] if config.kind is not None else ["pq", "ivfpq"]
    if config.m is not None:
        ms = [config.m]
    else:
        ms = sorted({min(divisors(d), key=lambda v: (abs(v - d / f), -v)) for f in (16, 8, 4)})
    nbits = [config.nbits] if config.nbits is not None else list(NBITS)
    if config.nlist is not None:
        nlists = [config.nlist] if config.nlist <= n_db else []
    else:
        most = n_db // config.min_points_per_centroid
        nlists = sorted({nl for f in (2, 4, 8) if 4 <= (nl := round(f * math.sqrt(n_db))) <= most})
    out = []
    for kind, m, b in product(kinds, ms, nbits):
        if n_db < MIN_POINTS_PER_CODE * (1 << b):
            continue
        out.extend(Setting(kind, m, b, nl) for nl in (nlists if kind == "ivfpq" else [0]))
    return out


def search_grid(s: Setting, config: IndexConfig) -> tuple[list[int], list[int]]:
    """(nprobes, rerank factors) to measure for a trained setting, ascending."""
    if s.kind != "ivfpq":
        nprobes = [0]
    elif config.nprobe is not None:
        nprobes = [min(config.nprobe, s.nlist)]
    else:
        nprobes = [1 << i for i in range(max(1, s.nlist.bit_length() - 1))]  # up to nlist / 2
    if not config.rerank:
        return nprobes, [1]
    return nprobes, [config.rerank_factor] if config.rerank_factor is not None else list(RERANK_FACTORS)


def exact_distances(xq: torch.Tensor, xdb: torch.Tensor, pos: np.ndarray, metric: str, qblock: int = 32) -> np.ndarray:
    """Internal (smaller is better) exact distances of queries (nq, d) to database rows pos (nq, c); +inf at -1."""
    out = np.full(pos.shape, np.inf, dtype=np.float32)
    for s in range(0, len(pos), qblock):
        p = pos[s : s + qblock]
        v = xdb[torch.from_numpy(np.where(p >= 0, p, 0))]  # (b, c, d)
        q = xq[s : s + qblock]
        ip = torch.einsum("bcd,bd->bc", v, q)
        dist = -ip if metric == "ip" else ((v * v).sum(-1) - 2 * ip + (q * q).sum(-1)[:, None]).clamp_min(0)
        out[s : s + qblock] = np.where(p >= 0, dist.numpy(), np.inf)
    return out


def tune(
    x: np.ndarray,
    ids: np.ndarray,
    config: IndexConfig,
    force: bool = False,
    cancelled: Callable[[], bool] = lambda: False,
) -> Tuned:
    """Measure candidate settings on x (n, d) float32 under ids (n,) and train the chosen one (module docstring).

    force: when no setting meets the target, take the best recall measured (an explicit retrain) instead of None.
    cancelled: polled between steps; TrainingCancelled when it returns True.
    """
    t0 = time.perf_counter()
    n, d = x.shape
    metric, rerank, target = config.metric, config.rerank, float(config.recall_target)
    backend_name = resolve_backend(config.backend, config.device)
    rng = np.random.default_rng(config.seed)
    nq = min(MAX_QUERIES, max(MIN_QUERIES, n // 5), n // 2)
    perm = rng.permutation(n)
    q_rows, db_rows = perm[:nq], np.sort(perm[nq:])
    xq, xdb = torch.from_numpy(x[q_rows]), torch.from_numpy(x[db_rows])
    db_ids = ids[db_rows]
    sorter = np.argsort(db_ids)
    report = {"vectors": n, "queries": nq, "recall_target": target, "exact_cost": float(n * d), "backend": backend_name}
    todo = settings(config, len(db_rows), d)
    if not todo or nq == 0:
        need = MIN_POINTS_PER_CODE * (1 << (config.nbits or min(NBITS)))
        report.update(met=False, reason=f"too few vectors to train: {n} (needs about {need + MIN_QUERIES})")
        return Tuned(None, None, report)
    gt_d, _ = exact_search(xq, xdb, min(K, len(db_rows)), metric)  # (nq, K) ascending
    kth = gt_d[:, -1].numpy()
    tol = 1e-5 * (1.0 + np.abs(kth))

    def recall(dist: np.ndarray) -> tuple[float, float]:
        """(recall@K, its standard error over the queries) of each query's K results' exact distances."""
        per_query = (dist <= (kth + tol)[:, None]).sum(1) / K
        return float(per_query.mean()), float(per_query.std() / math.sqrt(len(per_query)))

    def lowest(s: Setting) -> float:
        nprobes, rfs = search_grid(s, config)
        return query_cost(s, nprobes[0], rfs[0], rerank, n, d)

    todo.sort(key=lambda s: (lowest(s), estimated_bytes(s, backend_name, n, d)))

    def cost_key(m: Measured) -> tuple[float, float]:
        return m.cost, estimated_bytes(m.setting, backend_name, n, d)

    coarse: dict[int, torch.Tensor] = {}
    best: Measured | None = None  # the cheapest qualifying setting so far
    best_any: Measured | None = None  # the best recall measured (what force takes when nothing qualifies)
    trained = measured = 0
    for s in todo:
        if best is not None and lowest(s) >= best.cost:
            break
        if cancelled():
            raise TrainingCancelled()
        backend = make_backend(s.kind, d, metric, s.m, s.nbits, s.nlist, config.seed, backend_name, config.device)
        if s.nlist and s.nlist not in coarse and sum(t.nlist == s.nlist for t in todo) > 1:
            # one coarse quantizer per nlist, shared by every (m, nbits) that uses it
            coarse[s.nlist] = kmeans(xdb, s.nlist, KMeansConfig(niter=COARSE_NITER, seed=config.seed))
        # a setting measured alone (everything pinned) trains like faiss: up to 256 points per centroid
        per_centroid = CODEBOOK_POINTS if len(todo) > 1 else 256
        points = per_centroid * (1 << s.nbits if s.nlist in coarse else max(1 << s.nbits, s.nlist))
        sample = np.arange(len(db_rows))
        if len(sample) > points:
            sample = np.sort(rng.choice(sample, points, replace=False))
        backend.train(xdb[torch.from_numpy(sample)].to(backend.device), coarse.get(s.nlist))
        backend.add(xdb.to(backend.device), db_ids)
        trained += 1
        nprobes, rfs = search_grid(s, config)
        for nprobe in nprobes:
            if best is not None and query_cost(s, nprobe, rfs[0], rerank, n, d) >= best.cost:
                break
            if cancelled():
                raise TrainingCancelled()
            _, cand = backend.search(xq.to(backend.device), K * rfs[-1], max(nprobe, 1), None)
            pos = np.where(
                cand >= 0, sorter[np.searchsorted(db_ids, cand, sorter=sorter).clip(max=len(sorter) - 1)], -1
            )
            exact = exact_distances(xq, xdb, pos, metric)  # (nq, K * max rf)
            for rf in rfs:
                top = np.sort(exact[:, : K * rf], axis=1)[:, :K] if rerank else exact[:, :K]
                r, se = recall(top)
                m = Measured(s, nprobe, rf, query_cost(s, nprobe, rf, rerank, n, d), r, se, backend)
                measured += 1
                if best_any is None or (r, -m.cost) > (best_any.recall, -best_any.cost):
                    best_any = m
                if m.meets(target):
                    if (force or m.cost * MIN_SPEEDUP <= n * d) and (best is None or cost_key(m) < cost_key(best)):
                        best = m
                    break  # a larger re-rank factor at this nprobe only costs more
        del backend  # freed unless best or best_any holds it
        if best is not None and not force:
            best_any = None
    chosen = best if best is not None else (best_any if force else None)
    report.update(settings_trained=trained, settings_measured=measured)
    if chosen is None:
        r = best_any.recall if best_any is not None else 0.0
        report.update(
            met=False,
            recall=r,
            reason=f"no setting met recall@{K} {target} at least {MIN_SPEEDUP:g}x cheaper than exact search "
            f"(best measured {r:.3f})",
            seconds=time.perf_counter() - t0,
        )
        return Tuned(None, None, report)
    backend = chosen.backend
    backend.add(xq.to(backend.device), ids[q_rows])  # the held-out queries are collection vectors too
    s = chosen.setting
    params = IndexParams(s.kind, s.m, s.nbits, s.nlist, chosen.nprobe if s.kind == "ivfpq" else 0, chosen.rf)
    nbytes = sum(np.asarray(v).nbytes for v in backend.state_dict().values())
    report.update(
        met=chosen.meets(target),
        recall=chosen.recall,
        recall_stderr=chosen.stderr,
        cost=float(chosen.cost),
        bytes_per_vector=nbytes / n,
        seconds=time.perf_counter() - t0,
        params=params.to_dict(),
    )
    return Tuned(backend, params, report)
