"""Score calibration by prior-weighted logistic regression (Brümmer's BOSARIS recipe): scores -> log-likelihood ratios.

The posterior log-odds at the target prior π are modelled as z = a·s + c, fitted by minimising
the prior-weighted cross-entropy over labelled trials; the log-likelihood ratio is then
llr = z - logit(π) = a·s + b with b = c - logit(π).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import require_extra

from .base import BackendStateError

LOG2 = math.log(2.0)


def logit(p: float) -> float:
    """logit(p) = log(p / (1 - p))."""
    return math.log(p / (1.0 - p))


def weighted_cross_entropy(params: np.ndarray, target: np.ndarray, nontarget: np.ndarray,
                           prior: float) -> tuple[float, np.ndarray]:
    """C(a, c) = [π/N_t Σ_t log(1 + e^{-(a s + c)}) + (1-π)/N_n Σ_n log(1 + e^{a s + c})] / log 2, with its gradient."""
    a, c = params
    z_t, z_n = a * target + c, a * nontarget + c
    w_t, w_n = prior / len(target), (1.0 - prior) / len(nontarget)
    value = w_t * np.logaddexp(0.0, -z_t).sum() + w_n * np.logaddexp(0.0, z_n).sum()
    g_t = -w_t * _sigmoid(-z_t)  # dC/dz per target trial
    g_n = w_n * _sigmoid(z_n)
    grad = np.array([g_t @ target + g_n @ nontarget, g_t.sum() + g_n.sum()])
    return value / LOG2, grad / LOG2


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def split_trials(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(target scores, non-target scores) from finite scores and one 0/1 (or bool) label each, both kinds present."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"calibration needs one 0/1 label per score; got {labels.size} labels "
                         f"for {scores.size} scores")
    if not np.isfinite(scores).all():
        raise ValueError("calibration scores must be finite (found NaN or inf)")
    target = labels == 1
    if target.all() or not target.any():
        raise ValueError(f"calibration needs target and non-target trials; got {int(target.sum())} targets "
                         f"of {target.size} trials")
    return scores[target], scores[~target]


def check_prior(prior: float) -> float:
    if not isinstance(prior, (int, float)) or isinstance(prior, bool) or not 0.0 < prior < 1.0:
        raise ValueError(f"calibration prior must be in (0, 1), got {prior!r}")
    return float(prior)


class LogisticCalibration:
    """llr = slope · score + offset, fitted by prior-weighted logistic regression at ``prior``."""

    def __init__(self, slope: float = 1.0, offset: float = 0.0, prior: float = 0.5):
        self.slope, self.offset, self.prior = float(slope), float(offset), check_prior(prior)

    def fit(self, scores, labels, prior: float = 0.5) -> "LogisticCalibration":
        target, nontarget = split_trials(scores, labels)
        self.prior = check_prior(prior)
        both = np.concatenate([target, nontarget])
        centre, scale = float(both.mean()), float(both.std()) or 1.0
        minimize = require_extra("scipy.optimize", "fitting a calibration").minimize
        result = minimize(weighted_cross_entropy, np.array([1.0, logit(self.prior)]), jac=True, method="BFGS",
                          args=((target - centre) / scale, (nontarget - centre) / scale, self.prior))
        a, c = result.x
        self.slope = float(a / scale)
        self.offset = float(c - a * centre / scale - logit(self.prior))
        return self

    def apply(self, scores) -> np.ndarray:
        """Log-likelihood ratios of ``scores``."""
        return self.slope * np.asarray(scores, dtype=np.float64) + self.offset

    def to_config(self) -> dict:
        return {"slope": self.slope, "offset": self.offset, "prior": self.prior}

    @classmethod
    def from_config(cls, config) -> "LogisticCalibration":
        """Read ``to_config``'s dict: exactly slope, offset, prior, all finite numbers (prior in (0, 1))."""
        if not isinstance(config, dict) or set(config) != {"slope", "offset", "prior"}:
            got = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise BackendStateError(f"back-end calibration must have keys offset, prior, slope; got {got}")
        for key, value in config.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise BackendStateError(f"back-end calibration {key!r} must be a finite number, got {value!r}")
        try:
            return cls(**config)
        except ValueError as e:
            raise BackendStateError(f"back-end calibration: {e}") from None
