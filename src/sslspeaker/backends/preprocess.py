"""Embedding pre-processing: centering, ZCA whitening, length normalisation (each a function and a back-end stage)."""

from __future__ import annotations

import numpy as np

from .base import Backend, take_array
from .registry import register_backend
from .stats import mean_covariance


def center(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """x' = x - m."""
    return x - mean.astype(x.dtype)


def whitening_matrix(cov: np.ndarray, floor: float = 1e-10) -> np.ndarray:
    """ZCA: W = U diag(max(λ, floor·max λ))^{-1/2} Uᵀ for C = U diag(λ) Uᵀ, so W C W = I on C's range."""
    eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2)
    eigval = np.maximum(eigval, floor * max(float(eigval.max()), np.finfo(float).tiny))
    return (eigvec / np.sqrt(eigval)) @ eigvec.T


def whiten(x: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """x' = W (x - m)  (W symmetric, so rows: (x - m) W)."""
    return center(x, mean) @ matrix.astype(x.dtype)


def length_normalise(x: np.ndarray) -> np.ndarray:
    """x' = x / ||x||  (Garcia-Romero & Espy-Wilson 2011)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(x.dtype).tiny)


@register_backend("center")
class Center(Backend):
    """Subtract the training embeddings' mean."""

    def _fit(self, x, index, n_speakers):
        self.mean = x.mean(axis=0, dtype=np.float64)
        self.output_dim = x.shape[1]

    def _transform(self, x):
        return center(x, self.mean)

    def arrays(self):
        return {"mean": self.mean}

    def load_arrays(self, arrays, input_dim):
        self.mean = take_array(arrays, "mean", (input_dim,))
        self.input_dim = self.output_dim = input_dim


@register_backend("whiten")
class Whiten(Backend):
    """Center and ZCA-whiten with the training embeddings' covariance (eigenvalues floored at ``floor`` x the largest)."""

    def __init__(self, floor: float = 1e-10):
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"whiten: floor must be in [0, 1), got {floor!r}")
        self.floor = float(floor)

    def _fit(self, x, index, n_speakers):
        self.mean, cov = mean_covariance(x)
        self.matrix = whitening_matrix(cov, self.floor)
        self.output_dim = x.shape[1]

    def _transform(self, x):
        return whiten(x, self.mean, self.matrix)

    def options(self):
        return {"floor": self.floor}

    def arrays(self):
        return {"mean": self.mean, "matrix": self.matrix}

    def load_arrays(self, arrays, input_dim):
        self.mean = take_array(arrays, "mean", (input_dim,))
        self.matrix = take_array(arrays, "matrix", (input_dim, input_dim))
        self.input_dim = self.output_dim = input_dim


@register_backend("lengthnorm")
class LengthNorm(Backend):
    """Scale every embedding to unit length."""

    def _fit(self, x, index, n_speakers):
        self.output_dim = x.shape[1]

    def _transform(self, x):
        return length_normalise(x)
