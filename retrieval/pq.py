"""Product quantizer: m sub-space k-means codebooks, uint8 codes, and ADC lookup tables.

A d-dimensional vector is cut into m sub-vectors of dsub = d / m dimensions; each sub-vector is replaced by
the index of its nearest centroid among ksub = 2**nbits in that sub-space's codebook, so a vector costs m
bytes (nbits <= 8). Distances to a query are then approximated without decoding: a lookup table
lut[j, c] = <q_j, C_jc> (or ||q_j - C_jc||^2) is built once per query and summed over a code's m entries
(asymmetric distance computation, ADC).

The input helpers at the bottom (`as_matrix`, `as_ids`) are shared by vector_index.py and the backends so that
every array entry point checks shapes and dtypes the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from common.device import default_device
from retrieval.kmeans import KMeansConfig, assign, kmeans

METRICS = ("ip", "l2")


class ProductQuantizer:
    """m codebooks of ksub = 2**nbits centroids each over dsub = d / m dimensions.

    centroids: (m, ksub, dsub) float32 tensor on `device` (CUDA when available unless given).
    """

    def __init__(
        self,
        d: int,
        m: int,
        nbits: int = 8,
        device: str | torch.device | None = None,
        seed: int = 0,
        niter: int = 25,
        max_points_per_centroid: int = 256,
    ):
        check_pq_params(d, m, nbits)
        self.d, self.m, self.nbits = d, m, nbits
        self.dsub = d // m
        self.ksub = 1 << nbits
        self.device = torch.device(device) if device is not None else default_device()
        self.kmeans_config = KMeansConfig(niter=niter, max_points_per_centroid=max_points_per_centroid, seed=seed)
        self.centroids: torch.Tensor | None = None  # (m, ksub, dsub)

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    def _require_trained(self) -> torch.Tensor:
        if self.centroids is None:
            raise ValueError("the product quantizer is not trained yet; call train(x) first")
        return self.centroids

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (m, n, dsub): one batch entry per sub-space."""
        return x.view(x.shape[0], self.m, self.dsub).transpose(0, 1)

    def train(self, x) -> ProductQuantizer:
        """Train the m codebooks on x (n, d); needs n >= ksub (>= 39 * ksub for good codebooks)."""
        xt = as_matrix(x, self.d, "training data", device=self.device)
        if xt.shape[0] < self.ksub:
            raise ValueError(
                f"training a PQ with nbits={self.nbits} needs at least {self.ksub} vectors, "
                f"got {xt.shape[0]} (use a smaller nbits or more data)"
            )
        self.centroids = kmeans(self._split(xt).contiguous(), self.ksub, self.kmeans_config).contiguous()
        return self

    def encode(self, x, batch: int = 65536) -> np.ndarray:
        """x (n, d) -> codes (n, m) uint8 numpy."""
        return self.encode_tensor(as_matrix(x, self.d, "vectors", device=self.device), batch).cpu().numpy()

    def encode_tensor(self, x: torch.Tensor, batch: int = 65536) -> torch.Tensor:
        """x (n, d) float32 tensor on self.device -> codes (n, m) uint8 tensor on self.device."""
        c = self._require_trained()
        codes = torch.empty(x.shape[0], self.m, dtype=torch.uint8, device=x.device)
        for s in range(0, x.shape[0], batch):
            labels, _ = assign(self._split(x[s : s + batch]).contiguous(), c)  # (m, b)
            codes[s : s + batch] = labels.t().to(torch.uint8)
        return codes

    def decode(self, codes) -> np.ndarray:
        """codes (n, m) uint8 -> reconstructions (n, d) float32 numpy."""
        return self.decode_tensor(as_codes(codes, self.m, self.device)).cpu().numpy()

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n, m) uint8 tensor -> (n, d) float32 tensor."""
        c = self._require_trained()
        idx = codes.long()  # (n, m)
        # centroids[j, idx[:, j]] for every j in one gather
        parts = c[torch.arange(self.m, device=c.device)[None, :], idx]  # (n, m, dsub)
        return parts.reshape(codes.shape[0], self.d)

    def compute_lut(self, xq, metric: str = "ip") -> torch.Tensor:
        """Per-query ADC tables (nq, m, ksub) float32 on self.device.

        "ip": lut[q, j, c] = <xq_j, C_jc> (sum over j = <xq, decode(code)>);
        "l2": lut[q, j, c] = ||xq_j - C_jc||^2 (sum over j = ||xq - decode(code)||^2).
        """
        check_metric(metric)
        c = self._require_trained()
        q = as_matrix(xq, self.d, "query", device=c.device).view(-1, self.m, self.dsub)
        ip = torch.einsum("qjd,jkd->qjk", q, c)  # (nq, m, ksub)
        if metric == "ip":
            return ip
        return ((q * q).sum(-1)[..., None] - 2 * ip + (c * c).sum(-1)[None]).clamp_min_(0)

    def reconstruction_error(self, x) -> float:
        """Mean squared L2 error ||x - decode(encode(x))||^2 per vector."""
        xt = as_matrix(x, self.d, "vectors", device=self.device)
        rec = self.decode_tensor(self.encode_tensor(xt))
        return float(((xt - rec) ** 2).sum(-1).mean())

    # -- persistence: plain numpy so the owner can put it in one snapshot file
    def state_dict(self) -> dict[str, np.ndarray]:
        return {"centroids": self._require_trained().cpu().numpy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        c = np.asarray(state["centroids"], dtype=np.float32)
        if c.shape != (self.m, self.ksub, self.dsub):
            raise ValueError(f"PQ centroids have shape {c.shape}, expected {(self.m, self.ksub, self.dsub)}")
        self.centroids = torch.from_numpy(c.copy()).to(self.device)


# ---------------------------------------------------------------------------------------------------------------
# shared validation helpers


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def divisors(d: int) -> list[int]:
    return [i for i in range(1, d + 1) if d % i == 0]


def check_pq_params(d: int, m: int, nbits: int) -> None:
    if not isinstance(d, (int, np.integer)) or d <= 0:
        raise ValueError(f"dimension d must be a positive integer, got {d!r}")
    if not isinstance(m, (int, np.integer)) or m <= 0 or d % m != 0:
        raise ValueError(
            f"m (number of sub-quantizers) must divide d={d}, got m={m!r}; "
            f"valid choices include {[v for v in divisors(d) if d // v >= 2][-6:]}"
        )
    if not isinstance(nbits, (int, np.integer)) or not 1 <= nbits <= 8:
        raise ValueError(f"nbits must be an integer in [1, 8] (codes are uint8), got {nbits!r}")


def as_matrix(x, d: int, what: str = "vectors", device: torch.device | str | None = None) -> torch.Tensor:
    """Validate numpy/torch vectors and return a contiguous float32 tensor (n, d) on `device`.

    A single vector (d,) is accepted as (1, d). Integer, boolean or complex data, the wrong width and
    non-finite values raise ValueError naming `what`.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        if a.dtype == object:
            raise ValueError(f"{what} must be a numeric array, got dtype object")
        t = torch.from_numpy(np.ascontiguousarray(a)) if a.dtype.kind == "f" else None
        if t is None:
            raise ValueError(f"{what} must be floating point (float32 preferred), got dtype {a.dtype}")
    if not t.is_floating_point():
        raise ValueError(f"{what} must be floating point (float32 preferred), got dtype {t.dtype}")
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"{what} must be a 2-D array (n, {d}), got shape {tuple(t.shape)}")
    if t.shape[1] != d:
        raise ValueError(f"{what} has dimension {t.shape[1]} but the index has {d}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32).contiguous()
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return t


def as_codes(codes, m: int, device: torch.device | str | None = None) -> torch.Tensor:
    t = codes if isinstance(codes, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(codes))
    if t.dtype != torch.uint8 or t.dim() != 2 or t.shape[1] != m:
        raise ValueError(f"codes must be a uint8 array of shape (n, {m}), got {t.dtype} {tuple(t.shape)}")
    return t.to(device) if device is not None else t


def as_ids(ids, n: int | None = None, what: str = "ids") -> np.ndarray:
    """Validate ids: integer array, 1-D, non-negative (-1 means "missing" in results); returns int64 numpy."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers (int64), got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {a.shape}")
    a = a.astype(np.int64, copy=False)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"got {a.shape[0]} {what} for {n} vectors")
    if a.size and a.min() < 0:
        raise ValueError(f"{what} must be non-negative (-1 marks missing results), got {int(a.min())}")
    return a
