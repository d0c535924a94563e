"""k-means and PCL's prototype concentration, for epoch-end clustering of training-set embeddings.

``kmeans`` runs Lloyd iterations in torch on whatever device the embeddings are on (the
trainer's: a GPU during real training), with distances computed chunk by chunk as matrix
products, so memory stays bounded (about ``chunk_elements`` floats at a time);
``bench/clustering.py`` times it at 1 M × 256 against the epoch it follows. As in PCL (which
used faiss), the centroids are trained on a random subsample of at most
``max_points_per_centroid · k`` points and then every point is assigned. Initialisation is
k-means++ (D² sampling) on a subsample, or (``init="random"``, for large k) k random training
points; empty clusters are re-seeded with the points farthest from their centroids. Everything is seeded: the same inputs and seed give the same result.
``backend="sklearn"`` uses scikit-learn's ``MiniBatchKMeans`` on the CPU instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["LARGE_K", "assign", "concentration", "kmeans"]

LARGE_K = 1024  # init="auto": k-means++ up to this many clusters, k random training points above


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"kmeans: embeddings must be [N, D], got {tuple(t.shape)}")
    return t.float()


def _rows_per_chunk(k: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, k))


@torch.no_grad()
def assign(x: Tensor, centroids: Tensor, chunk_elements: int = 1 << 25) -> tuple[Tensor, Tensor]:
    """Nearest centroid of each row of x (Euclidean) and the squared distance to it: ([N] long, [N] float)."""
    c_sq = (centroids * centroids).sum(dim=1)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    d2 = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = _rows_per_chunk(centroids.shape[0], chunk_elements)
    with torch.autocast(device_type=x.device.type, enabled=False):
        for s in range(0, x.shape[0], step):
            xc = x[s:s + step]
            # ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²; argmin over c needs only −2 x·c + ‖c‖²
            score = torch.addmm(c_sq, xc, centroids.t(), beta=1.0, alpha=-2.0)
            best, idx = score.min(dim=1)
            labels[s:s + step] = idx
            d2[s:s + step] = (best + (xc * xc).sum(dim=1)).clamp_min_(0.0)
    return labels, d2


def _kmeans_pp(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; as scikit-learn): 2 + ⌊ln k⌋ candidates
    drawn with probability ∝ D², keeping the one that most lowers the potential Σ D²."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = x[int(torch.randint(n, (1,), generator=g))]
    x_sq = (x * x).sum(dim=1)

    def dist2(c: Tensor) -> Tensor:  # ‖x − c‖² [n, m] by a matrix product (no [n, m, D] temporary)
        return (x_sq[:, None] - 2.0 * (x @ c.t()) + (c * c).sum(dim=1)[None]).clamp_min_(0.0)

    d2 = dist2(centres[:1])[:, 0]
    # the draws come from a CPU generator (reproducible across devices)
    u = torch.rand(k, trials, generator=g, dtype=torch.float64).to(x.device)
    for i in range(1, k):
        cdf = torch.cumsum(d2.double(), dim=0)
        total = cdf[-1]
        if float(total) <= 0.0:  # fewer distinct points than k: repeat (re-seeded later as empty clusters)
            centres[i:] = x[torch.randint(n, (k - i,), generator=g).to(x.device)]
            break
        cand = torch.searchsorted(cdf, u[i] * total).clamp_max_(n - 1)
        d_cand = torch.minimum(d2[:, None], dist2(x[cand]))
        best = int(d_cand.double().sum(dim=0).argmin())
        centres[i] = x[cand[best]]
        d2 = d_cand[:, best]
    return centres


def _update(x: Tensor, labels: Tensor, d2: Tensor, centroids: Tensor) -> Tensor:
    """Means of the assigned points; an empty cluster takes the farthest not-yet-used point."""
    k, dim = centroids.shape
    sums = torch.zeros(k, dim, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    new = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        far = torch.argsort(d2, descending=True)[: empty.numel()]
        new[empty[: far.numel()]] = x[far]
        if far.numel() < empty.numel():  # more empty clusters than points: keep the old centres
            rest = empty[far.numel():]
            new[rest] = centroids[rest]
    return new


@torch.no_grad()
def kmeans(
    embeddings: Tensor | np.ndarray,
    k: int,
    seed: int = 0,
    *,
    n_iter: int = 20,
    max_points_per_centroid: int = 256,
    init_points_per_centroid: int = 8,
    backend: str = "torch",
    chunk_elements: int = 1 << 25,
    init: str = "auto",
) -> tuple[Tensor, Tensor]:
    """k-means of [N, D] embeddings into k clusters → (centroids [k, D] float32, assignments [N] long).

    Minimises Σ_i ‖x_i − c_{a_i}‖² (Lloyd). Results are on the embeddings' device (tensors) or
    the CPU (numpy input). Centroids are the cluster means, not re-normalised. ``init``:
    ``kmeans++`` (D² sampling on a pool of ``init_points_per_centroid · k`` points: k sequential
    steps over the pool, O(pool · k · D) work, quadratic in k) or ``random`` (k distinct training
    points, faiss's start: O(k · D), for large k where k-means++ would cost more than the Lloyd
    iterations); ``auto``: k-means++ up to ``LARGE_K`` clusters, random above.
    """
    x = _as_tensor(embeddings)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: need 1 <= k <= N, got k={k} for N={n}")
    if backend == "sklearn":
        return _sklearn_kmeans(x, k, seed, n_iter, max_points_per_centroid)
    if backend != "torch":
        raise ValueError(f"kmeans: backend must be 'torch' or 'sklearn', got {backend!r}")
    g = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
    n_train = min(n, max(k, max_points_per_centroid * k))
    train = x if n_train == n else x[torch.randperm(n, generator=g)[:n_train].to(x.device)]
    centroids = _initial_centroids(train, k, g, init, init_points_per_centroid)
    labels = None
    for _ in range(n_iter):
        new_labels, d2 = assign(train, centroids, chunk_elements)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        centroids = _update(train, labels, d2, centroids)
    final, _ = assign(x, centroids, chunk_elements)
    return centroids, final


def _initial_centroids(train: Tensor, k: int, g: torch.Generator, init: str, points_per_centroid: int) -> Tensor:
    """The k starting centres: k-means++ on a random pool, or k random training points (also what k-means++
    amounts to on a pool of exactly k points, where it would take every one of them)."""
    if init not in ("auto", "kmeans++", "random"):
        raise ValueError(f"kmeans: init must be 'auto', 'kmeans++' or 'random', got {init!r}")
    init = ("kmeans++" if k <= LARGE_K else "random") if init == "auto" else init
    n = train.shape[0]
    n_init = k if init == "random" else min(n, max(k, points_per_centroid * k, 4096))
    pool = train if n_init == n else train[torch.randperm(n, generator=g)[:n_init].to(train.device)]
    return pool.clone() if n_init == k else _kmeans_pp(pool, k, g)


def _sklearn_kmeans(x: Tensor, k: int, seed: int, n_iter: int, max_points_per_centroid: int) -> tuple[Tensor, Tensor]:
    from sklearn.cluster import MiniBatchKMeans

    data = x.detach().cpu().numpy()
    km = MiniBatchKMeans(n_clusters=k, random_state=int(seed) % 2**32, batch_size=max(4096, 3 * k),
                         max_iter=n_iter, n_init=1, init="k-means++", init_size=min(len(data), max(3 * k, 8192)))
    sub = data
    if len(data) > max_points_per_centroid * k:
        rng = np.random.default_rng(int(seed) % 2**32)
        sub = data[rng.choice(len(data), max_points_per_centroid * k, replace=False)]
    km.fit(sub)
    centroids = torch.from_numpy(km.cluster_centers_.astype(np.float32)).to(x.device)
    labels, _ = assign(x, centroids)
    return centroids, labels


@torch.no_grad()
def concentration(
    embeddings: Tensor,
    centroids: Tensor,
    assignments: Tensor,
    *,
    alpha: float = 10.0,
    temperature: float | None = None,
    clip_percentiles: tuple[float, float] | None = (10.0, 90.0),
) -> Tensor:
    """PCL concentration per cluster: φ_c = Σ_{v∈c} ‖v − c‖ / (Z_c · log(Z_c + α))   (Li et al. 2021, eq. 12).

    As in PCL's code: a cluster with Z ≤ 1 point gets the largest φ of the others; φ is clipped
    to its [10th, 90th] percentiles; then scaled so that mean(φ) = ``temperature`` (if given).
    Distances are to the centroids as passed (PCL: the unnormalised k-means means).
    """
    x = embeddings.float()
    c = centroids.float().to(x.device)
    a = assignments.to(x.device).long()
    k = c.shape[0]
    dist_sum = torch.zeros(k, dtype=torch.float64, device=x.device)
    step = 1 << 16
    for s in range(0, x.shape[0], step):
        d = (x[s:s + step] - c[a[s:s + step]]).norm(dim=1)
        dist_sum.index_add_(0, a[s:s + step], d.double())
    z = torch.bincount(a, minlength=k).double()
    phi = torch.zeros(k, dtype=torch.float64, device=x.device)
    big = z > 1
    phi[big] = dist_sum[big] / (z[big] * torch.log(z[big] + alpha))
    phi[~big] = phi[big].max() if bool(big.any()) else 0.0
    if clip_percentiles is not None and k > 1:
        lo, hi = (torch.quantile(phi, p / 100.0) for p in clip_percentiles)  # linear, as numpy.percentile
        phi = phi.clamp(lo, hi)
    if temperature is not None:
        mean = float(phi.mean())
        phi = temperature * phi / mean if mean > 0 and math.isfinite(mean) else torch.full_like(phi, temperature)
    return phi.float()
