"""What a vector index may be (IndexConfig: a collection's choice, stored with it) and what it is once trained
(IndexParams: the settings the tuner picked, saved in the index's snapshot).

A value left None in IndexConfig is chosen by measurement each time the index trains (tuning.py): the tuner holds
out some of the collection's vectors as queries and picks the cheapest setting whose recall@10 after re-ranking
reaches `recall_target`. A value set in IndexConfig is pinned: the tuner searches over the others only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from common.checks import optional_positive_int, positive_int
from common.errors import InvalidArgumentError
from retrieval.backend import resolve_backend
from retrieval.pq import check_metric, check_pq_params

KINDS = ("ivfpq", "pq", "flat")


@dataclass
class IndexConfig:
    kind: str | None = None  # "pq" | "ivfpq" | "flat" (always exact) | None: pq or ivfpq, as measured
    metric: str = "ip"  # "ip" for normalised embeddings, or "l2"
    m: int | None = None  # sub-quantizers (must divide d); None: tuned among ~d/16, d/8, d/4
    nbits: int | None = None  # bits per sub-quantizer code (ksub = 2**nbits), 1..8; None: tuned among 4, 6, 8
    nlist: int | None = None  # IVF lists; None: tuned among ~2, 4, 8 sqrt(n)
    nprobe: int | None = None  # lists scanned per query; None: tuned (powers of two below nlist)
    rerank_factor: int | None = None  # candidates re-scored = rerank_factor * k; None: tuned among 1..32
    rerank: bool = True  # re-score PQ candidates exactly from the float16 vectors
    recall_target: float = 0.95  # recall@10 (after re-ranking) the chosen setting must measure against exact search
    min_train_size: int = 512  # vectors before the first training attempt (exact search until then)
    retrain_growth: float | None = 4.0  # retrain in the background when ntotal >= growth * training size; None: never
    min_points_per_centroid: int = 39  # IVF: at most n / this lists (k-means wants ~39 points per centroid)
    backend: str | None = None  # "torch" | "faiss" | None (measured default per device, backend.default_backend)
    seed: int = 0
    device: str | None = None  # torch backend device; None: CUDA when available

    def validate(self, d: int) -> None:
        """Checked once, where a configuration enters (Collections.create); ValueError saying what to fix."""
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidArgumentError(
                f"index kind must be one of {KINDS} or unset (chosen by measurement), got {self.kind!r}"
            )
        check_metric(self.metric)
        if self.m is not None or self.nbits is not None:
            check_pq_params(d, self.m if self.m is not None else 1, self.nbits if self.nbits is not None else 8)
        resolve_backend(self.backend, self.device)
        optional_positive_int(self.nlist, "nlist")
        optional_positive_int(self.nprobe, "nprobe")
        optional_positive_int(self.rerank_factor, "rerank_factor")
        positive_int(self.min_train_size, "min_train_size")
        positive_int(self.min_points_per_centroid, "min_points_per_centroid")
        if isinstance(self.recall_target, bool) or not isinstance(self.recall_target, (int, float)):
            raise InvalidArgumentError(f"recall_target must be a number in (0, 1], got {self.recall_target!r}")
        if not 0.0 < self.recall_target <= 1.0:
            raise InvalidArgumentError(f"recall_target must be in (0, 1], got {self.recall_target!r}")
        if self.retrain_growth is not None and self.retrain_growth <= 1:
            raise InvalidArgumentError(f"retrain_growth must be > 1 or None, got {self.retrain_growth!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexConfig:
        d = dict(d)
        if "recall_target" not in d:
            # A configuration stored by a release before self-tuning held every default explicitly: its defaults
            # (kind ivfpq, nbits 8, rerank_factor 8) become "chosen by measurement", as a new collection's are.
            for key, old_default in (("kind", "ivfpq"), ("nbits", 8), ("rerank_factor", 8)):
                if d.get(key) == old_default:
                    d[key] = None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class IndexParams:
    """The settings a trained index was built with and searches with by default."""

    kind: str  # "pq" | "ivfpq"
    m: int
    nbits: int
    nlist: int  # 0 for "pq"
    nprobe: int  # 0 for "pq"
    rerank_factor: int  # PQ candidates re-scored per hit wanted (when re-ranking)

    @property
    def ksub(self) -> int:
        return 1 << self.nbits

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexParams:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def label(self) -> str:
        ivf = f" nlist={self.nlist} nprobe={self.nprobe}" if self.kind == "ivfpq" else ""
        return f"{self.kind} m={self.m} nbits={self.nbits}{ivf} rerank_factor={self.rerank_factor}"
