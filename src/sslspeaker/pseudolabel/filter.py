"""Which cluster members to keep as pseudo-labelled training data, and why the others go.

The rule, applied in this order to unit-norm embeddings x_i with cluster index a_i:

1. **far_from_centroid**: with μ_c the unit-length mean of cluster c and s_i = cos(x_i, μ_{a_i}),
   a member goes when s_i < median_c(s) − ``outlier_mads`` · σ_c, where σ_c = max(1.4826 ·
   MAD_c(s), ``min_spread``) is the robust (median absolute deviation) spread of its cluster's
   cosines; the 1.4826 makes σ_c the standard deviation for Gaussian cosines (Hampel's outlier
   rule, Hampel 1974; Iglewicz & Hoaglin 1993). Clusters of fewer than 3 members skip it.
2. **ambiguous** (off unless ``min_margin`` is set): the margin s_i − max_{c ≠ a_i} cos(x_i, μ_c)
   to the nearest other centroid is below ``min_margin``.
3. **small_cluster**: every member of a cluster with fewer than ``min_cluster_size`` members
   left after 1-2 goes.

Centroids are those of the clustering as given (before any member is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PseudoLabelError

__all__ = ["REASONS", "FilterResult", "FilterRule", "centroid_cosines", "filter_members", "robust_floor"]

REASONS = ("far_from_centroid", "ambiguous", "small_cluster")
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class FilterRule:
    """The parameters of the rule above; ``None`` turns a test off."""

    min_cluster_size: int = 2
    outlier_mads: float | None = 3.0
    min_margin: float | None = None
    min_spread: float = 0.01

    def __post_init__(self) -> None:
        if self.min_cluster_size < 1:
            raise PseudoLabelError(f"--min-cluster-size must be >= 1, got {self.min_cluster_size}")
        if self.outlier_mads is not None and not self.outlier_mads > 0:
            raise PseudoLabelError(f"--drop-mads must be > 0, got {self.outlier_mads}")
        if self.min_margin is not None and not -2.0 <= self.min_margin <= 2.0:
            raise PseudoLabelError(f"--min-margin must be a cosine difference in [-2, 2], got {self.min_margin}")
        if not self.min_spread >= 0:
            raise PseudoLabelError(f"min_spread must be >= 0, got {self.min_spread}")


@dataclass(frozen=True)
class FilterResult:
    """Per member: kept?, the reason it was dropped ('' when kept), its cosine and margin."""

    keep: np.ndarray
    reasons: np.ndarray
    cosine: np.ndarray
    margin: np.ndarray

    def counts(self) -> dict[str, int]:
        return {r: int((self.reasons == r).sum()) for r in REASONS}


def centroid_cosines(x: np.ndarray, labels: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(cos(x_i, μ_{a_i}), cos(x_i, μ_{a_i}) − max_{c ≠ a_i} cos(x_i, μ_c)) with μ_c the unit mean of cluster c."""
    from scipy import sparse

    k = int(labels.max()) + 1
    members = sparse.csr_matrix((np.ones(len(x), dtype=np.float32), (labels, np.arange(len(x)))), shape=(k, len(x)))
    sums = np.asarray(members @ x, dtype=np.float64)
    mu = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    own = np.empty(len(x), dtype=np.float64)
    other = np.full(len(x), -np.inf, dtype=np.float64)
    for s in range(0, len(x), chunk):
        cos = x[s:s + chunk] @ mu.T
        rows = np.arange(len(cos))
        own[s:s + chunk] = cos[rows, labels[s:s + chunk]]
        if k > 1:
            cos[rows, labels[s:s + chunk]] = -np.inf
            other[s:s + chunk] = cos.max(axis=1)
    return own, own - other


def robust_floor(values: np.ndarray, mads: float, min_spread: float) -> float:
    """median(v) − mads · max(1.4826 · median(|v − median(v)|), min_spread)."""
    med = float(np.median(values))
    sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(values - med))), min_spread)
    return med - mads * sigma


def _far_from_centroid(cos: np.ndarray, labels: np.ndarray, rule: FilterRule) -> np.ndarray:
    far = np.zeros(len(cos), dtype=bool)
    if rule.outlier_mads is None:
        return far
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) >= 3:
            far[members] = cos[members] < robust_floor(cos[members], rule.outlier_mads, rule.min_spread)
    return far


def filter_members(x: np.ndarray, labels: np.ndarray, rule: FilterRule = FilterRule()) -> FilterResult:
    """Apply the rule to unit-norm embeddings ``x`` [N, D] clustered as ``labels`` [N]."""
    x = np.asarray(x, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    cos, margin = centroid_cosines(x, labels)
    reasons = np.full(len(x), "", dtype=object)
    reasons[_far_from_centroid(cos, labels, rule)] = "far_from_centroid"
    if rule.min_margin is not None:
        reasons[(reasons == "") & (margin < rule.min_margin)] = "ambiguous"
    left = np.bincount(labels[reasons == ""], minlength=int(labels.max()) + 1)
    reasons[(reasons == "") & (left[labels] < rule.min_cluster_size)] = "small_cluster"
    return FilterResult(keep=reasons == "", reasons=reasons, cosine=cos, margin=margin)
