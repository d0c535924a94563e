"""Metrics of log-likelihood-ratio scores: Cllr, min Cllr (after PAV) and the actual detection cost.

Label 1 = target, 0 = non-target; a trial is accepted when ``llr >= threshold`` (as in ``metrics``).
"""

from __future__ import annotations

import math

import numpy as np

from sslspeaker.evaluation.metrics import _validate, detection_cost


def cllr(llr, labels) -> float:
    """Cllr = [mean_t log2(1 + e^{-llr}) + mean_n log2(1 + e^{llr})] / 2."""
    return _cllr(*_validate(llr, labels))


def _cllr(llr: np.ndarray, target: np.ndarray) -> float:
    cost_t = np.logaddexp(0.0, -llr[target]).mean()
    cost_n = np.logaddexp(0.0, llr[~target]).mean()
    return float((cost_t + cost_n) / (2.0 * math.log(2.0)))


def pav(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing least-squares fit of ``target`` on ``scores``, equal scores pooled."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1))
    sizes = np.diff(np.append(starts, s.size))
    sums, counts, groups = [], [], []  # the pooled blocks: sum of targets, trials, tie groups
    for y, n in zip(np.add.reduceat(target[order].astype(np.float64), starts), sizes.astype(np.float64)):
        k = 1
        while sums and sums[-1] * n >= y * counts[-1]:  # the previous block's mean >= this one's: pool them
            y, n, k = y + sums.pop(), n + counts.pop(), k + groups.pop()
        sums.append(y), counts.append(n), groups.append(k)
    fitted = np.empty(scores.size, dtype=np.float64)
    fitted[order] = np.repeat(np.repeat(np.divide(sums, counts), groups), sizes)
    return fitted


def pav_llr(scores, labels) -> np.ndarray:
    """The optimal monotone map of scores to LLRs: PAV posteriors p (ties pooled), llr = logit(p) - log(N_t / N_n)."""
    scores, target = _validate(scores, labels)
    posterior = pav(scores, target)
    with np.errstate(divide="ignore"):
        log_odds = np.log(posterior) - np.log1p(-posterior)
    return log_odds - math.log(target.sum() / (~target).sum())


def min_cllr(llr, labels) -> float:
    """min Cllr = Cllr of ``pav_llr(llr, labels)``: the cost left after the best monotone recalibration."""
    llr, target = _validate(llr, labels)
    return _cllr(pav_llr(llr, target), target)  # PAV gives no target -inf and no non-target +inf


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """θ = log(c_fa (1 - p) / (c_miss p)) = -logit(p) for unit costs."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def actual_dcf(llr, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised DCF of the decisions llr >= θ (the Bayes threshold): the cost the LLRs pay as they are."""
    llr, target = _validate(llr, labels)
    threshold = bayes_threshold(p_target, c_miss, c_fa)
    p_miss = float(np.mean(llr[target] < threshold))
    p_fa = float(np.mean(llr[~target] >= threshold))
    return float(detection_cost(p_miss, p_fa, p_target, c_miss, c_fa))

