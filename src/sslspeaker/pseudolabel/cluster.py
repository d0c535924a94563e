"""Clustering of L2-normalised embeddings [N, D] into pseudo-speakers, and the checks on the result.

``kmeans_labels`` runs k-means at any scale (1 M x 256 included) on the CPU or a GPU: faiss
when it is installed and asked for (``backend="faiss"``, or ``"auto"``), else the torch k-means
of ``methods.clustering`` (Lloyd on a subsample of at most 256 points per centroid, then one
assignment of every point; chunked distances, seeded). That k-means starts from k-means++ over a
pool of ``init_points_per_centroid · k`` points, which costs O(pool · k · D · log k) sequential
work: quadratic in k. Above ``LARGE_K`` clusters the wrapper starts from k random training points
instead (``init="random"``, faiss's start): O(k · D), so the start of a 1 M x 256, k = 6,000
clustering costs nothing next to its Lloyd iterations.

``ahc_labels`` is agglomerative clustering (scipy) on cosine distances with average linkage, or
Ward linkage on the Euclidean distances of the unit vectors (‖a − b‖² = 2 − 2 cos(a, b)), for
small pools: its condensed distance matrix holds N(N − 1)/2 float64 values, so pools above
``MAX_AHC_POINTS`` are refused.

``check_collapse`` refuses a clustering that cannot serve as labels: one cluster holding most of
the pool, or most utterances alone in their cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..methods.clustering import kmeans
from .errors import PseudoLabelError

__all__ = ["ALGORITHMS", "KMEANS_BACKENDS", "LINKAGES", "LARGE_K", "MAX_AHC_POINTS", "Clustering",
           "ahc_labels", "check_collapse", "cluster", "faiss_available", "kmeans_labels"]

ALGORITHMS = ("kmeans", "ahc")
KMEANS_BACKENDS = ("auto", "torch", "faiss")
LINKAGES = ("average", "ward")
LARGE_K = 1024
MAX_AHC_POINTS = 20_000


@dataclass(frozen=True)
class Clustering:
    """Cluster index per utterance (0 .. n_clusters − 1, every index used) and how it was made."""

    labels: np.ndarray
    algorithm: str
    backend: str
    requested_k: int

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_clusters)


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in KMEANS_BACKENDS:
        raise PseudoLabelError(f"k-means backend must be one of {', '.join(KMEANS_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise PseudoLabelError("k-means backend 'faiss' asked for, but faiss is not installed "
                               "(pip install faiss-cpu or faiss-gpu), use backend 'torch'")
    return backend


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0 .. m − 1 in the order of their values (unused values vanish)."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _torch_kmeans(x: np.ndarray, k: int, seed: int, device: str, n_iter: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    _, labels = kmeans(t, k, seed=seed, n_iter=n_iter, init="kmeans++" if k <= LARGE_K else "random")
    return labels.cpu().numpy()


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, device: str, n_iter: int) -> np.ndarray:
    import faiss

    data = np.ascontiguousarray(x, dtype=np.float32)
    gpu = str(device).startswith("cuda") and hasattr(faiss, "StandardGpuResources")
    km = faiss.Kmeans(data.shape[1], k, niter=n_iter, seed=int(seed) % 2**31, gpu=gpu,
                      max_points_per_centroid=256, verbose=False)
    km.train(data)
    _, idx = km.index.search(data, 1)
    return idx[:, 0].astype(np.int64)


def kmeans_labels(x: np.ndarray, k: int, *, seed: int = 0, backend: str = "auto", device: str = "cpu",
                  n_iter: int = 20) -> tuple[np.ndarray, str]:
    """k-means cluster index of each row of ``x`` [N, D] (0 .. m − 1, m <= k) and the backend used."""
    used = _resolve_backend(backend)
    run = _faiss_kmeans if used == "faiss" else _torch_kmeans
    return _consecutive(run(x, k, seed, device, n_iter)), used


def ahc_labels(x: np.ndarray, k: int, *, linkage: str = "average") -> np.ndarray:
    """Agglomerative clustering of ``x`` [N, D] cut at ``k`` clusters: cosine/average or Ward."""
    from scipy.cluster import hierarchy

    n = len(x)
    if n > MAX_AHC_POINTS:
        gib = n * (n - 1) / 2 * 8 / 2**30
        raise PseudoLabelError(f"--algorithm ahc: a pool of {n} utterances is above the {MAX_AHC_POINTS} AHC "
                               f"takes (its distance matrix alone needs {gib:.1f} GiB); use --algorithm kmeans")
    if linkage not in LINKAGES:
        raise PseudoLabelError(f"--linkage must be one of {', '.join(LINKAGES)}, got {linkage!r}")
    data = np.asarray(x, dtype=np.float64)
    tree = hierarchy.linkage(data, method="average", metric="cosine") if linkage == "average" \
        else hierarchy.linkage(data, method="ward")
    return _consecutive(hierarchy.fcluster(tree, t=k, criterion="maxclust"))


def cluster(x: np.ndarray, k: int, *, algorithm: str = "kmeans", linkage: str = "average",
            backend: str = "auto", seed: int = 0, device: str = "cpu") -> Clustering:
    """Cluster the unit-norm embeddings ``x`` [N, D] into (at most) ``k`` clusters."""
    n = len(x)
    if not 2 <= k <= n:
        raise PseudoLabelError(f"cannot make {k} clusters of a pool of {n} utterances (need 2 <= clusters <= pool)")
    if algorithm == "kmeans":
        labels, used = kmeans_labels(x, k, seed=seed, backend=backend, device=device)
        return Clustering(labels, "kmeans", used, k)
    if algorithm == "ahc":
        return Clustering(ahc_labels(x, k, linkage=linkage), "ahc", f"scipy-{linkage}", k)
    raise PseudoLabelError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


def check_collapse(sizes: np.ndarray, *, max_cluster_share: float = 0.5, max_singleton_share: float = 0.5) -> None:
    """Refuse cluster sizes that cannot serve as speaker labels.

    Collapsed: with 4 or more clusters, the largest holds more than ``max_cluster_share`` of the
    pool (the embeddings do not separate speakers), or more than ``max_singleton_share`` of the
    utterances are alone in their cluster (far too many clusters for the pool).
    """
    sizes = np.asarray(sizes)
    n = int(sizes.sum())
    if len(sizes) >= 4 and sizes.max() > max_cluster_share * n:
        raise PseudoLabelError(
            f"collapsed clustering: one cluster holds {int(sizes.max())} of {n} utterances "
            f"({100 * sizes.max() / n:.0f} % > --max-cluster-share {max_cluster_share:g}); the embeddings do not "
            "separate speakers (an untrained model?)")
    singles = int((sizes == 1).sum())
    if singles > max_singleton_share * n:
        raise PseudoLabelError(
            f"collapsed clustering: {singles} of {n} utterances are alone in their cluster "
            f"({100 * singles / n:.0f} % > --max-singleton-share {max_singleton_share:g}); too many clusters "
            f"({len(sizes)}) for this pool: lower --clusters")
