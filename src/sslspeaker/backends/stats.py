"""Sufficient statistics of a large embedding matrix, in float64 and in bounded memory."""

from __future__ import annotations

import numpy as np

from ..errors import require_extra

CHUNK_ROWS = 65536


def scatter(x: np.ndarray) -> np.ndarray:
    """S = sum_i x_i x_iᵀ (float64, accumulated over row chunks)."""
    out = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start:start + CHUNK_ROWS].astype(np.float64)
        out += chunk.T @ chunk
    return out


def mean_covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, C): m = (1/N) sum_i x_i,  C = (1/N) sum_i x_i x_iᵀ - m mᵀ."""
    mean = x.sum(axis=0, dtype=np.float64) / len(x)
    return mean, scatter(x) / len(x) - np.outer(mean, mean)


def speaker_sums(x: np.ndarray, index: np.ndarray, n_speakers: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_s, f_s): each speaker's utterance count and f_s = sum_{i in s} x_i (float64)."""
    sparse = require_extra("scipy.sparse", "fitting a back-end")
    members = sparse.csc_matrix((np.ones(len(x)), (index, np.arange(len(x)))), shape=(n_speakers, len(x)))
    sums = np.zeros((n_speakers, x.shape[1]))
    for start in range(0, len(x), CHUNK_ROWS):
        part = slice(start, start + CHUNK_ROWS)
        sums += members[:, part] @ x[part].astype(np.float64)
    return np.bincount(index, minlength=n_speakers), sums
