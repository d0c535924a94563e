"""Speaker-verification metrics: EER, normalised minDCF, DET curve.

Convention: a trial is accepted when ``score >= threshold``; label 1 = target (same
speaker), 0 = non-target. The operating points are one per distinct score value (so tied
scores are never split: a threshold cannot separate them) plus ``threshold = +inf``
(reject all); the lowest score gives accept-all. Everything is one sort plus cumulative
sums, so 1 M trials take a fraction of a second.
"""

from __future__ import annotations

import numpy as np


def _validate(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.size} vs {labels.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (found NaN or inf)")
    if labels.dtype != bool:
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be 0/1 (or bool)")
        labels = labels == 1
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(f"need both target and non-target trials; got {n_pos} targets of {labels.size} trials")
    return scores, labels


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_fa, p_miss, thresholds) at every distinct score and +inf, thresholds ascending."""
    scores, labels = _validate(scores, labels)
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    # Start index (in sorted order) of each group of equal scores, plus n for threshold +inf.
    starts = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1, [s.size]))
    pos_below = np.concatenate(([0], np.cumsum(y)))[starts]  # targets with score < threshold
    neg_below = starts - pos_below
    n_pos = pos_below[-1]
    n_neg = s.size - n_pos
    p_miss = pos_below / n_pos
    p_fa = (n_neg - neg_below) / n_neg
    thresholds = np.concatenate((s[starts[:-1]], [np.inf]))
    return p_fa, p_miss, thresholds


def compute_eer(scores, labels) -> tuple[float, float]:
    """EER: the rate where P_miss = P_fa, linearly interpolated between the bracketing operating points.

    Returns (eer, threshold). P_miss - P_fa rises from -1 (accept all) to +1 (reject all);
    at the first point k where it is >= 0, the segment from point k-1 to k is intersected
    with P_miss = P_fa. The threshold is interpolated with the same weight; when point k is
    reject-all (+inf) the threshold of point k-1 is returned.
    """
    p_fa, p_miss, thr = det_curve(scores, labels)
    diff = p_miss - p_fa
    k = int(np.searchsorted(diff, 0.0, side="left"))  # diff is non-decreasing; diff[0] < 0 <= diff[-1]
    if diff[k] == 0.0:
        return float(p_miss[k]), float(thr[k])
    alpha = -diff[k - 1] / (diff[k] - diff[k - 1])  # fraction of the way from point k-1 to k
    eer = p_miss[k - 1] + alpha * (p_miss[k] - p_miss[k - 1])
    threshold = thr[k - 1] if np.isinf(thr[k]) else thr[k - 1] + alpha * (thr[k] - thr[k - 1])
    return float(eer), float(threshold)


def detection_cost(p_miss, p_fa, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0):
    """Normalised DCF = (c_miss P_miss p_target + c_fa P_fa (1 - p_target)) / min(c_miss p_target, c_fa (1 - p_target))."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    dcf = c_miss * np.asarray(p_miss) * p_target + c_fa * np.asarray(p_fa) * (1.0 - p_target)
    return dcf / min(c_miss * p_target, c_fa * (1.0 - p_target))


def compute_min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """minDCF = min over all thresholds (accept-all to reject-all) of the normalised DCF; returns (min_dcf, threshold)."""
    p_fa, p_miss, thr = det_curve(scores, labels)
    dcf = detection_cost(p_miss, p_fa, p_target, c_miss, c_fa)
    k = int(np.argmin(dcf))
    return float(dcf[k]), float(thr[k])
