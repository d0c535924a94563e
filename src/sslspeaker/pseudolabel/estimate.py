"""The number of clusters for ``clusters="auto"``: the average-silhouette sweep.

Method (Rousseeuw 1987, "Silhouettes: a graphical aid to the interpretation and validation of
cluster analysis", J. Comput. Appl. Math. 20:53-65; choosing k by the largest average
silhouette width as in Kaufman & Rousseeuw 1990, "Finding Groups in Data", ch. 2): for each
candidate k, k-means (``cluster.kmeans_labels``) of a uniform random subsample of at most
``max_points`` embeddings, then the mean silhouette s(i) = (b(i) − a(i)) / max(a(i), b(i)) with
cosine distance (scikit-learn's ``silhouette_score``; a point alone in its cluster scores 0);
the estimate is the k with the largest mean. The candidates are a geometric grid of ``coarse``
values from ``k_min`` to ``k_max`` (default: half the subsample), then the integers between the
best one's grid neighbours, at most ``fine`` of them, evenly spaced.

Scale: the cost is one k-means and one O(n²) silhouette of the subsample per candidate,
whatever the pool size. The subsample bounds what can be seen: a speaker with fewer than two
utterances in it cannot form a cluster, so the estimate counts the speakers with several
utterances in the subsample. For pools of many speakers with few utterances each relative to
the pool (VoxCeleb2: 5,994 speakers in 1 M utterances) raise ``max_points`` well above
2 × speakers, or give the count.

Known weakness: where speakers overlap, the mean silhouette can peak at a coarse split of the
pool (k = 2: two broad voice groups) rather than at the speakers; the report lists every
candidate's score so such a peak is visible, and a given count avoids it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cluster import kmeans_labels
from .errors import PseudoLabelError

__all__ = ["ClusterCountEstimate", "candidate_grid", "estimate_clusters", "mean_silhouette"]


@dataclass(frozen=True)
class ClusterCountEstimate:
    """The estimated count, the subsample it came from and every candidate's mean silhouette."""

    k: int
    points: int
    scores: dict[int, float] = field(default_factory=dict)
    method: str = "silhouette"

    def as_dict(self) -> dict:
        return {"method": "largest mean silhouette (cosine) of k-means over a k sweep (Rousseeuw 1987)",
                "k": self.k, "subsample": self.points,
                "scores": {str(k): round(v, 6) for k, v in sorted(self.scores.items())}}


def candidate_grid(k_min: int, k_max: int, count: int) -> list[int]:
    """About ``count`` integers from ``k_min`` to ``k_max``, geometrically spaced, both ends included."""
    if k_max <= k_min:
        return [k_min]
    return sorted({int(round(v)) for v in np.geomspace(k_min, k_max, count)})


def _refinement(grid: list[int], best: int, fine: int) -> list[int]:
    i = grid.index(best)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    return sorted({int(round(v)) for v in np.linspace(lo, hi, fine)} - set(grid))


def mean_silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette width of ``labels`` on ``x`` with cosine distance; −1 for fewer than 2 clusters."""
    from sklearn.metrics import silhouette_score

    m = len(np.unique(labels))
    if not 2 <= m <= len(x) - 1:
        return -1.0
    return float(silhouette_score(x, labels, metric="cosine"))


def _subsample(x: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if len(x) <= max_points:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), max_points, replace=False))]


def estimate_clusters(x: np.ndarray, *, k_min: int = 2, k_max: int | None = None, max_points: int = 3000,
                      coarse: int = 12, fine: int = 9, seed: int = 0, backend: str = "auto",
                      device: str = "cpu") -> ClusterCountEstimate:
    """The number of clusters in the unit-norm embeddings ``x`` [N, D] by the silhouette sweep."""
    sub = _subsample(np.asarray(x, dtype=np.float32), max_points, seed)
    n = len(sub)
    if n < 4:
        raise PseudoLabelError(f"--clusters auto needs a pool of at least 4 utterances, got {n}")
    k_max = min(n // 2 if k_max is None else k_max, n - 1)
    if k_max < k_min:
        raise PseudoLabelError(f"--clusters auto: no candidate count between {k_min} and {k_max} "
                               f"for a subsample of {n} utterances")
    scores: dict[int, float] = {}

    def score_all(ks: list[int]) -> None:
        for k in ks:
            labels, _ = kmeans_labels(sub, k, seed=seed, backend=backend, device=device)
            scores[k] = mean_silhouette(sub, labels)

    grid = candidate_grid(k_min, k_max, coarse)
    score_all(grid)
    best = max(grid, key=lambda k: scores[k])
    score_all(_refinement(grid, best, fine))
    return ClusterCountEstimate(k=max(scores, key=lambda k: scores[k]), points=n, scores=scores)
