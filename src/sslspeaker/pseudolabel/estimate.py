"""The number of clusters for ``clusters="auto"``: the normalised maximum eigengap (NME-SC).

Method (Park, Han, Kumar & Narayanan 2020, "Auto-Tuning Spectral Clustering for Speaker
Diarization Using Normalized Maximum Eigengap", IEEE Signal Processing Letters 27:381-385):
on a uniform random subsample of at most ``max_points`` unit-norm embeddings with cosine
similarities S, for each neighbour count p of a grid

1. the p-nearest-neighbour affinity Ā_p = ½ (B_p + B_pᵀ), B_p[i, j] = 1 where j is one of the
   p rows most similar to i (``knn_affinity``);
2. its Laplacian and eigenvalues λ_1 <= λ_2 <= ...; eigengaps e_k = λ_{k+1} − λ_k;
3. the normalised maximum eigengap g_p = max_k e_k / λ_max and the ratio r(p) = p / g_p;

the estimate is argmax_k e_k at the p with the smallest r(p). Since g_p <= 1, r(p) >= p, so the
sweep stops at the first p above the smallest ratio found. As in the paper, only graphs
that are connected count (a disconnected graph's zero eigenvalues count its components, not the
speakers). Two choices differ from the paper, which diarizes one recording with hundreds of
segments per speaker: the Laplacian is the normalised one, L = I − D^{−1/2} Ā D^{−1/2} (the
unnormalised D − Ā over-counts on real speaker embeddings), and the p grid is geometric from 1
to a quarter of the subsample (a pool has few utterances per speaker, so small p matter most);
k runs from ``k_min`` to ``k_max`` (default: half the subsample) and λ_max is the largest
eigenvalue computed (that of index ``k_max`` + 1).

Scale: one dense eigen-decomposition (float32) of the subsample per p tried (O(n³), n = ``max_points``),
whatever the pool size. The subsample bounds what can be seen: a speaker with fewer than two
utterances in it cannot form a cluster, so for pools of many speakers with few utterances each
(VoxCeleb2: 5,994 speakers in 1 M utterances) raise ``max_points`` well above 2 x speakers, or
give the count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import PseudoLabelError

__all__ = ["ClusterCountEstimate", "eigengaps", "estimate_clusters", "knn_affinity", "neighbour_grid",
           "normalized_laplacian", "normalized_max_eigengap"]


@dataclass(frozen=True)
class ClusterCountEstimate:
    """The estimated count, the subsample it came from and each connected p's (count, ratio r(p))."""

    k: int
    points: int
    neighbours: int
    tried: dict[int, tuple[int, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"method": "normalised maximum eigengap of a p-NN cosine graph (NME-SC, Park et al. 2020)",
                "k": self.k, "subsample": self.points, "neighbours": self.neighbours,
                "tried": {str(p): {"k": k, "ratio": round(r, 6)} for p, (k, r) in sorted(self.tried.items())}}


def knn_affinity(sim: np.ndarray, p: int) -> np.ndarray:
    """Ā_p = ½ (B_p + B_pᵀ), B_p[i, j] = 1 where j ≠ i is one of the p columns of row i with the largest sim."""
    n = len(sim)
    s = sim.astype(np.float64, copy=True)
    np.fill_diagonal(s, -np.inf)
    nearest = np.argpartition(-s, p - 1, axis=1)[:, :p]
    b = np.zeros((n, n))
    b[np.arange(n)[:, None], nearest] = 1.0
    return 0.5 * (b + b.T)


def normalized_laplacian(a: np.ndarray) -> np.ndarray:
    """L = I − D^{−1/2} A D^{−1/2} with D = diag(Σ_j A_ij)."""
    d = 1.0 / np.sqrt(np.maximum(a.sum(axis=1), 1e-12))
    return np.eye(len(a)) - d[:, None] * a * d[None, :]


def eigengaps(lam: np.ndarray) -> np.ndarray:
    """e_k = λ_{k+1} − λ_k for ascending eigenvalues λ_1 .. λ_m (k = 1 .. m − 1)."""
    return np.diff(lam)


def normalized_max_eigengap(lam: np.ndarray, k_min: int) -> tuple[float, int]:
    """(g = max_{k >= k_min} e_k / λ_max, the k attaining it) for ascending eigenvalues λ."""
    gaps = eigengaps(lam)[k_min - 1:]
    i = int(np.argmax(gaps))
    return float(gaps[i] / max(float(lam[-1]), 1e-12)), i + k_min


def neighbour_grid(n: int, count: int = 20) -> list[int]:
    """About ``count`` neighbour counts p from 1 to n / 4, geometrically spaced."""
    return sorted({int(round(v)) for v in np.geomspace(1, max(2, n // 4), count)})


def _subsample(x: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if len(x) <= max_points:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), max_points, replace=False))]


def _count_at(sim: np.ndarray, p: int, k_min: int, k_max: int) -> tuple[int, float] | None:
    """(argmax_k e_k, r(p) = p / g_p) of the p-NN graph, or None when that graph is not connected."""
    from scipy.linalg import eigvalsh
    from scipy.sparse.csgraph import connected_components

    a = knn_affinity(sim, p)
    if connected_components(a > 0, directed=False)[0] > 1:
        return None
    lam = eigvalsh(normalized_laplacian(a).astype(np.float32), subset_by_index=[0, k_max])
    g, k = normalized_max_eigengap(lam, k_min)
    return k, (p / g if g > 0 else float("inf"))


def _sweep(sim: np.ndarray, k_min: int, k_max: int) -> dict[int, tuple[int, float]]:
    """(count, r(p)) for each connected p of the grid, ascending; stops once p exceeds the smallest r so far,
    since g_p <= 1 (a gap is at most λ_max) makes r(p) >= p."""
    tried: dict[int, tuple[int, float]] = {}
    for p in neighbour_grid(len(sim)):
        if tried and p >= min(r for _, r in tried.values()):
            break
        result = _count_at(sim, p, k_min, k_max)
        if result is not None:
            tried[p] = result
    return tried


def estimate_clusters(x: np.ndarray, *, k_min: int = 2, k_max: int | None = None, max_points: int = 3000,
                      seed: int = 0) -> ClusterCountEstimate:
    """The number of clusters in the unit-norm embeddings ``x`` [N, D] by NME-SC (see the module)."""
    sub = _subsample(np.asarray(x, dtype=np.float32), max_points, seed).astype(np.float64)
    n = len(sub)
    if n < 4:
        raise PseudoLabelError(f"--clusters auto needs a pool of at least 4 utterances, got {n}")
    k_max = min(n // 2 if k_max is None else k_max, n - 2)
    if k_max < k_min:
        raise PseudoLabelError(f"--clusters auto: no candidate count between {k_min} and {k_max} "
                               f"for a subsample of {n} utterances")
    tried = _sweep(sub @ sub.T, k_min, k_max)
    if not tried:
        raise PseudoLabelError(f"--clusters auto: no neighbour graph of the {n} utterances is connected")
    best = min(tried, key=lambda p: tried[p][1])
    return ClusterCountEstimate(k=tried[best][0], points=n, neighbours=best, tried=tried)
