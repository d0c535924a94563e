"""Enrolment: one speaker model from several utterances.

An enrolled speaker is the length-normalised mean of its utterances' vectors,

    m = sum_i e_i / ||sum_i e_i||,

the x-vector convention of Kaldi and WeSpeaker (average, then length-normalise). Its score
against a test utterance is the back-end's (cosine without one) of ``m`` and the test vector.
This is the one implementation: ``SpeakerEncoder.enroll`` and the ONNX encoder's ``enroll``,
``sslspeaker verify --enroll``, and the enrolment lists of ``evaluate`` (``enrolled_vectors``)
all go through ``enrolment_vector``. Numpy only (no torch), so the torch-free encoder uses it too.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .scoring import check_vectors


def enrolment_vector(vectors: np.ndarray | Sequence[np.ndarray], where: str = "enrolment") -> np.ndarray:
    """m = sum_i e_i / ||sum_i e_i|| of utterance vectors [n, D] (float32); ``ValueError`` naming ``where``
    when there are none, they hold NaN/inf, or they cancel out."""
    e = np.asarray(vectors, dtype=np.float64)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or len(e) == 0:
        raise ValueError(f"{where}: needs at least one utterance embedding [n, D], got shape {e.shape}")
    check_vectors({where: e})
    total = e.sum(axis=0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-12:
        raise ValueError(f"{where}: the utterance embeddings sum to zero; no direction to enrol")
    return (total / norm).astype(np.float32)


def enroll(model: Any, files: Sequence[Any], sample_rate: int | None = None) -> np.ndarray:
    """The enrolled speaker model [D] of ``files`` (paths or waveforms) under ``model`` (anything with
    ``embed``): ``enrolment_vector`` of their embeddings. Errors name the file that failed."""
    if isinstance(files, (str, os.PathLike)) or len(files) == 0:
        raise ValueError("enroll: give a list of one or more audio files (or waveforms)")
    kwargs = {} if sample_rate is None else {"sample_rate": sample_rate}
    return enrolment_vector(np.stack([model.embed(f, **kwargs) for f in files]),
                            f"enrolment of {len(files)} file(s)")


def enrolled_vectors(models: dict[str, list[str]], vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{model key: enrolment_vector of its utterances' vectors}``; ``vectors`` holds every utterance."""
    return {key: enrolment_vector(np.stack([vectors[u] for u in utts]), f"enrolment model {key}")
            for key, utts in models.items()}


__all__ = ["enrolment_vector", "enroll", "enrolled_vectors"]
