"""Batched Lloyd k-means in torch (the codebook trainer for PQ and the IVF coarse quantizer).

One call clusters B independent problems at once, x (B, n, d) -> centroids (B, k, d): a product quantizer
trains its m sub-space codebooks as a single batch, so the m small (n, dsub) problems become one batched
matmul instead of m Python-level loops. The IVF coarse quantizer is the B = 1 case.

The recipe follows faiss's `Clustering` so the codebooks are comparable with faiss's at equal settings:
random distinct training points as the initial centroids, at most `max_points_per_centroid * k` points
(a random subsample beyond that), `niter` Lloyd iterations, and empty clusters re-seeded by splitting a
large cluster with a small symmetric perturbation. On CUDA the same code runs on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# faiss's relative perturbation used when splitting a cluster to re-seed an empty one
_SPLIT_EPS = 1.0 / 1024


@dataclass
class KMeansConfig:
    niter: int = 25
    max_points_per_centroid: int = 256  # faiss's default: subsample beyond 256 * k points
    seed: int = 0
    # upper bound on the (B, chunk, k) distance block, in elements: memory stays flat for big n, and a
    # block that stays in cache until the min() reads it is 2x faster than a 64 MB one (2-core Xeon)
    max_block: int = 1 << 21


def assign(x: torch.Tensor, centroids: torch.Tensor, max_block: int = 1 << 21) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (squared L2) for every point.

    x (B, n, d), centroids (B, k, d) -> (labels (B, n) int64, squared distances (B, n) float32).
    """
    B, n, d = x.shape
    k = centroids.shape[1]
    c_norm = (centroids * centroids).sum(-1)  # (B, k)
    chunk = max(1, max_block // max(1, B * k))
    labels = torch.empty(B, n, dtype=torch.int64, device=x.device)
    dists = torch.empty(B, n, dtype=torch.float32, device=x.device)
    ct = centroids.transpose(1, 2)  # (B, d, k)
    for s in range(0, n, chunk):
        xc = x[:, s : s + chunk]  # (B, c, d)
        # ||x||^2 is constant per point, so argmin only needs ||c||^2 - 2 x.c
        part = torch.baddbmm(c_norm[:, None, :], xc, ct, alpha=-2.0)  # (B, c, k)
        val, lab = part.min(-1)
        labels[:, s : s + chunk] = lab
        dists[:, s : s + chunk] = (val + (xc * xc).sum(-1)).clamp_min_(0)
    return labels, dists


def _update(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster means. x (B, n, d), labels (B, n) -> (sums/counts (B, k, d), counts (B, k))."""
    B, n, d = x.shape
    flat = (labels + torch.arange(B, device=x.device)[:, None] * k).reshape(-1)  # (B*n,)
    sums = torch.zeros(B * k, d, dtype=x.dtype, device=x.device)
    sums.index_add_(0, flat, x.reshape(-1, d))
    counts = torch.bincount(flat, minlength=B * k).to(x.dtype)
    means = sums / counts.clamp_min(1)[:, None]
    return means.view(B, k, d), counts.view(B, k)


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> int:
    """Re-seed empty clusters in place by splitting big ones (faiss's split_clusters). Returns how many."""
    empty = (counts == 0).nonzero().tolist()
    if not empty:
        return 0
    counts = counts.clone().cpu()
    for b, ci in empty:
        row = counts[b]
        # pick a cluster to split with probability proportional to its size, like faiss
        probs = (row - 1).clamp_min(0)
        if probs.sum() <= 0:
            continue
        cj = int(torch.multinomial(probs, 1, generator=gen))
        sign = torch.ones(centroids.shape[-1])
        sign[::2] = -1  # symmetric perturbation: the two halves move apart
        pert = (sign * _SPLIT_EPS).to(centroids.device)
        src = centroids[b, cj].clone()
        centroids[b, ci] = src * (1 + pert)
        centroids[b, cj] = src * (1 - pert)
        half = row[cj] // 2
        row[ci], row[cj] = half, row[cj] - half
    return len(empty)


def kmeans(x: torch.Tensor, k: int, config: KMeansConfig | None = None) -> torch.Tensor:
    """Cluster x (n, d) or a batch of independent problems x (B, n, d) into k centroids each.

    Returns centroids with the same leading shape as x: (k, d) or (B, k, d), float32 on x's device.
    Needs n >= k; with fewer than ~39 points per centroid the codebook is poor (faiss warns likewise)
    but still valid.
    """
    cfg = config or KMeansConfig()
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"kmeans expects (n, d) or (B, n, d) input, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    B, n, d = x.shape
    if n < k:
        raise ValueError(f"kmeans needs at least k={k} points, got {n}")
    # generator on the CPU so the same seed gives the same sample on every device
    gen = torch.Generator().manual_seed(cfg.seed)
    max_n = cfg.max_points_per_centroid * k
    if n > max_n:
        # one shared subsample for the whole batch: sub-spaces of the same vectors stay aligned
        keep = torch.randperm(n, generator=gen)[:max_n].to(x.device)
        x = x.index_select(1, keep)
        n = max_n
    init = torch.randperm(n, generator=gen)[:k].to(x.device)
    centroids = x.index_select(1, init).clone()  # (B, k, d)
    for _ in range(cfg.niter):
        labels, _ = assign(x, centroids, cfg.max_block)
        means, counts = _update(x, labels, k)
        # keep the previous centroid where a cluster went empty, then re-seed it by splitting
        nonempty = (counts > 0)[..., None]
        centroids = torch.where(nonempty, means, centroids)
        _split_empty(centroids, counts, gen)
    return centroids[0] if squeeze else centroids


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Mean squared distance of x (n, d) to its nearest centroid in (k, d) (the k-means objective)."""
    _, dist = assign(x[None].to(torch.float32), centroids[None].to(torch.float32))
    return float(dist.mean())
