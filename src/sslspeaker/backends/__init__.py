"""Scoring back-ends fitted on (pseudo-)labelled embeddings: pre-processing, LDA, PLDA, calibration, chains.

Importing this package registers every back-end. Each one follows ``base.Backend``:
``fit(embeddings (n, d), labels (n,)) -> self``, ``transform(x)``, ``score_pairs(a, b) -> (n,)``.
"""

from .base import Backend, BackendStateError
from .registry import backend_class, build_backend, list_backends, register_backend
from . import lda, plda, preprocess  # noqa: F401,E402  (each registers itself)
from .calibration import LogisticCalibration
from .chain import PRESETS, BackendChain

__all__ = ["PRESETS", "Backend", "BackendChain", "BackendStateError", "LogisticCalibration", "backend_class",
           "build_backend", "list_backends", "register_backend"]
