"""The interface every scoring back-end implements, and the checks its inputs and stored state go through.

A back-end is fitted on training embeddings with speaker labels, maps embeddings to its own
space (``transform``) and scores trials: ``score_pairs(a, b)`` gives one score per row pair,
higher = more likely the same speaker. A back-end that only transforms scores by the cosine of
its outputs. Its state is its constructor options (JSON-able) plus named float arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BackendStateError(ValueError):
    """A stored back-end (config or arrays) is malformed: the message names the field."""


def as_embeddings(x, what: str = "embeddings", dim: int | None = None) -> np.ndarray:
    """``x`` as a finite 2-D float array (float32 kept, anything else float64) with ``dim`` columns if given."""
    x = np.asarray(x)
    x = x if x.dtype == np.float32 else x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have {x.shape[1]} dimensions, the back-end expects {dim}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} must be finite (found NaN or inf)")
    return x


def speaker_index(labels, n: int) -> tuple[np.ndarray, int]:
    """(index of each row's speaker in 0..S-1, S) for ``n`` labels (ints or strings)."""
    labels = np.asarray(labels).ravel()
    if labels.size != n:
        raise ValueError(f"{labels.size} labels for {n} embeddings")
    _, index = np.unique(labels, return_inverse=True)
    return index.ravel(), int(index.max()) + 1 if n else 0


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s_i = a_i . b_i / (||a_i|| ||b_i||)."""
    num = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    den = np.linalg.norm(a, axis=1).astype(np.float64) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, np.finfo(np.float64).tiny)


def take_array(arrays: dict, key: str, shape: tuple) -> np.ndarray:
    """``arrays[key]`` as float64, checked present, of ``shape`` (None = any length) and finite."""
    if key not in arrays:
        raise BackendStateError(f"back-end array {key!r} is missing")
    value = np.asarray(arrays[key], dtype=np.float64)
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise BackendStateError(f"back-end array {key!r} has shape {value.shape}, expected {want}")
    if not np.all(np.isfinite(value)):
        raise BackendStateError(f"back-end array {key!r} holds NaN or inf")
    return value


class Backend:
    """Base class: fit on labelled embeddings, transform, score row pairs (cosine of the transforms by default)."""

    name = "backend"  # set by ``register_backend``
    input_dim: int | None = None
    output_dim: int | None = None

    def fit(self, embeddings, labels) -> "Backend":
        x = as_embeddings(embeddings)
        index, n_speakers = speaker_index(labels, len(x))
        self.input_dim = x.shape[1]
        self._fit(x, index, n_speakers)
        return self

    def _fit(self, x: np.ndarray, index: np.ndarray, n_speakers: int) -> None:
        raise NotImplementedError

    def transform(self, x) -> np.ndarray:
        return self._transform(as_embeddings(x, dim=self._fitted_dim()))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_pairs(self, a, b) -> np.ndarray:
        a, b = self._pair(a, b)
        return cosine_scores(self._transform(a), self._transform(b))

    def score_enrolled(self, enroll_mean, n_enroll, test) -> np.ndarray:
        """Score each test row against an enrolment model: the mean of ``n_enroll`` of its inputs."""
        return self.score_pairs(enroll_mean, test)

    def options(self) -> dict[str, Any]:
        """The constructor options, JSON-able."""
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters by name."""
        return {}

    def load_arrays(self, arrays: dict[str, np.ndarray], input_dim: int) -> None:
        """Set the fitted parameters from ``arrays`` (checked) for inputs of ``input_dim`` dimensions."""
        self.input_dim = self.output_dim = input_dim

    def _fitted_dim(self) -> int:
        if self.input_dim is None:
            raise ValueError(f"back-end {self.name!r} is not fitted")
        return self.input_dim

    def _pair(self, a, b) -> tuple[np.ndarray, np.ndarray]:
        dim = self._fitted_dim()
        a, b = as_embeddings(a, "first embeddings", dim), as_embeddings(b, "second embeddings", dim)
        if len(a) != len(b):
            raise ValueError(f"score_pairs needs as many rows in a as in b: {len(a)} vs {len(b)}")
        return a, b
