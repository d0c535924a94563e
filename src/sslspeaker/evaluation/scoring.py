"""The one scoring path: trial pairs -> back-end scores -> metrics (``evaluate`` and training validation).

A back-end is any object with ``score_pairs(a, b) -> scores``: ``a`` and ``b`` are (n, d)
float arrays, row i of each being the two sides of trial i, and the result is (n,) scores
(higher = more likely the same speaker). ``CosineBackend`` is the default.
"""

from __future__ import annotations

from typing import Protocol as _Interface

import numpy as np

from ..data.manifest import Trial, resolve
from .metrics import compute_eer, compute_min_dcf

P_TARGETS = (0.01, 0.05)


class Backend(_Interface):
    """What the score stage calls: (n, d) and (n, d) -> (n,) scores."""

    name: str

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class CosineBackend:
    """Cosine scoring of utterance vectors that are unit length, or a protocol's mean vectors.

    The dot product is the cosine of two unit vectors, and of two protocols' mean embeddings
    it is the mean of their n×n cosine matrix (``protocols.utterance_vector``).
    """

    name = "cosine"

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """s_i = <a_i, b_i>."""
        return np.einsum("nd,nd->n", a, b)


def check_vectors(vectors: dict[str, np.ndarray]) -> None:
    """Every utterance vector finite; else a ``ValueError`` naming the first file whose vector is not."""
    for path, v in vectors.items():
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: its embedding holds NaN or inf (a broken model or input); refusing to score it")


def trial_sides(trials: list[Trial], vectors: dict[str, np.ndarray], audio_root) -> tuple[np.ndarray, np.ndarray]:
    """The stacked vectors [n, D] of every trial's first and second utterance (all checked finite)."""
    check_vectors(vectors)
    a = np.stack([vectors[resolve(t.a, audio_root)] for t in trials])
    b = np.stack([vectors[resolve(t.b, audio_root)] for t in trials])
    return a, b


def score_trials(trials: list[Trial], vectors: dict[str, np.ndarray], audio_root,
                 backend: Backend | None = None) -> np.ndarray:
    """Each trial's score by ``backend`` (default ``CosineBackend``) from its two utterance vectors."""
    return (backend or CosineBackend()).score_pairs(*trial_sides(trials, vectors, audio_root))


def trial_labels(trials: list[Trial]) -> np.ndarray:
    """1 for a target (same-speaker) trial, 0 for a non-target, in list order."""
    return np.array([t.label for t in trials])


def metrics_from_scores(scores, labels) -> dict:
    """EER (percent) with its threshold, minDCF at p_target 0.01 and 0.05 (C_miss = C_fa = 1)."""
    eer, thr = compute_eer(scores, labels)
    out = {"eer": 100.0 * eer, "eer_threshold": thr}
    for p in P_TARGETS:
        dcf, t = compute_min_dcf(scores, labels, p)
        out[f"min_dcf_{p:g}"] = dcf
        out[f"min_dcf_{p:g}_threshold"] = t
    return out


__all__ = ["Backend", "CosineBackend", "P_TARGETS", "check_vectors", "trial_sides", "score_trials", "trial_labels",
           "metrics_from_scores"]
