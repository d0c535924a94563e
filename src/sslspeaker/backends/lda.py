"""LDA back-end: scikit-learn's LinearDiscriminantAnalysis projection, then length normalisation and cosine scoring."""

from __future__ import annotations

import numpy as np

from ..errors import require_extra
from .base import Backend, BackendStateError, take_array
from .preprocess import center, length_normalise
from .registry import register_backend

DEFAULT_DIM = 200
SOLVERS = ("svd", "eigen")


def lda_dim(requested: int | None, dim: int, n_speakers: int) -> int:
    """Output dimension: ``requested``, else min(200, d, S - 1); never above min(d, S - 1)."""
    limit = min(dim, n_speakers - 1)
    if limit < 1:
        raise ValueError(f"lda needs at least 2 speakers, got {n_speakers}")
    return min(requested if requested is not None else DEFAULT_DIM, limit)


def lda_projection(x: np.ndarray, index: np.ndarray, dim: int, solver: str) -> np.ndarray:
    """P (d x k): the first k discriminant directions of scikit-learn's LDA fitted on (x, speaker index)."""
    lda = require_extra("sklearn.discriminant_analysis", "the lda back-end").LinearDiscriminantAnalysis(
        n_components=dim, solver=solver)
    lda.fit(x.astype(np.float64, copy=False), index)
    return lda.scalings_[:, :dim]


@register_backend("lda")
class LDA(Backend):
    """Project (x - m) onto ``dim`` LDA directions (default min(200, d, speakers - 1)); length-normalise; cosine."""

    def __init__(self, dim: int | None = None, solver: str = "svd", length_norm: bool = True):
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f"lda: dim must be a positive integer or null, got {dim!r}")
        if solver not in SOLVERS:
            raise ValueError(f"lda: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if not isinstance(length_norm, bool):
            raise ValueError(f"lda: length_norm must be true or false, got {length_norm!r}")
        self.dim, self.solver, self.length_norm = dim, solver, length_norm

    def _fit(self, x, index, n_speakers):
        self.mean = x.mean(axis=0, dtype=np.float64)
        self.projection = lda_projection(x, index, lda_dim(self.dim, x.shape[1], n_speakers), self.solver)
        self.output_dim = self.projection.shape[1]

    def _transform(self, x):
        y = center(x, self.mean) @ self.projection.astype(x.dtype)
        return length_normalise(y) if self.length_norm else y

    def options(self):
        return {"dim": self.dim, "solver": self.solver, "length_norm": self.length_norm}

    def arrays(self):
        return {"mean": self.mean, "projection": self.projection}

    def load_arrays(self, arrays, input_dim):
        self.mean = take_array(arrays, "mean", (input_dim,))
        self.projection = take_array(arrays, "projection", (input_dim, None))
        if not 1 <= self.projection.shape[1] <= input_dim:
            raise BackendStateError(f"back-end array 'projection' has {self.projection.shape[1]} columns "
                                    f"for {input_dim} input dimensions")
        self.input_dim, self.output_dim = input_dim, self.projection.shape[1]
