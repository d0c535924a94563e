"""Embedding and score normalisation: the equations (``evaluate`` applies them as stages).

Score normalisation: adaptive s-norm (AS-norm, Matějka et al. 2017; Cumani et al. 2011) with
a cohort of other speakers' utterances: for a trial (a, b) with raw score s,

    s' = ½ · [ (s − μ_a) / σ_a  +  (s − μ_b) / σ_b ]

where μ_x, σ_x are the mean and (population) standard deviation of the top-K highest scores
of utterance x against the cohort (the same protocol scores it against each cohort utterance).

Embedding normalisation (before scoring, and before AS-norm): label-free adaptation to the
evaluated domain. Each utterance vector v becomes (v − μ)/σ, scored by cosine, where μ is the
mean of a set of unlabelled in-domain utterances' vectors (the trial list's own utterances,
or a manifest) and σ their per-dimension standard deviation ("zscore") or 1 ("mean"). A model
trained on one domain gives every recording of another (say, 8-kHz telephone speech) a shared
offset that compresses all cosines; removing it is what z-scoring does for MFCC statistics.
"""

from __future__ import annotations

import numpy as np


def cohort_statistics(vectors: np.ndarray, cohort: np.ndarray, top_k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``vectors`` [U, D]: mean and population std of its top-``top_k`` scores against ``cohort`` [M, D]."""
    vectors, cohort = np.asarray(vectors, np.float64), np.asarray(cohort, np.float64)
    m = cohort.shape[0]
    k = max(1, min(int(top_k), m))
    mu, sd = np.empty(len(vectors)), np.empty(len(vectors))
    for i in range(0, len(vectors), chunk):
        s = vectors[i:i + chunk] @ cohort.T
        top = np.partition(s, m - k, axis=1)[:, m - k:]
        mu[i:i + chunk], sd[i:i + chunk] = top.mean(1), top.std(1)
    return mu, sd


def as_norm(scores: np.ndarray, mu_a: np.ndarray, sd_a: np.ndarray, mu_b: np.ndarray, sd_b: np.ndarray,
            eps: float = 1e-8) -> np.ndarray:
    """Adaptive s-norm: ½·((s − μ_a)/σ_a + (s − μ_b)/σ_b)."""
    s = np.asarray(scores, np.float64)
    return 0.5 * ((s - mu_a) / np.maximum(sd_a, eps) + (s - mu_b) / np.maximum(sd_b, eps))


EMBEDDING_NORMS = ("mean", "zscore")


def set_statistics(vectors: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """μ = mean of the rows of ``vectors`` [N, D]; σ = their per-dimension population std ("zscore") or 1 ("mean")."""
    v = np.asarray(vectors, np.float64)
    return v.mean(0), (v.std(0) if kind == "zscore" else np.ones(v.shape[1]))


def adapt_embeddings(vectors: np.ndarray, mu: np.ndarray, sd: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """v' = (v − μ)/σ scaled to unit length, so a dot product of two is the cosine of the adapted embeddings."""
    v = (np.asarray(vectors, np.float64) - mu) / np.maximum(sd, eps)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


__all__ = ["cohort_statistics", "as_norm", "EMBEDDING_NORMS", "set_statistics", "adapt_embeddings"]
