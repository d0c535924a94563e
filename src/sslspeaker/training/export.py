"""Training run folder, ``.pt`` checkpoint or model file -> a self-contained ``.safetensors`` model file.

A model file as the source (the packaged default included) is re-written with its weights,
back-end, threshold and prior kept, unless new ones are given.

With a fitted ``BackendChain`` the file also carries the back-end (its arrays as ``backend.*``
tensors, its config as the metadata field ``"backend"``), and the stored threshold applies to
its scores. For a calibrated chain the default decision is the Bayes threshold on the
log-likelihood ratio at a stated target prior (``prior``, default ``DEFAULT_PRIOR``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import utc_now
from ..inference.checkpoint_source import read_checkpoint
from ..inference.model_file import (DEFAULT_PRIOR, FORMAT_VERSION, backend_tensors, build_modules, embed_dim,
                                    is_model_file, read_backend, read_model_file, save_model, split_backend)


def decision(backend, threshold: float | None, threshold_source: str | None,
             prior: float | None) -> tuple[float | None, str | None, float | None]:
    """(threshold, its source, prior) to store: given, or the Bayes threshold at ``prior`` for a calibrated chain."""
    from ..evaluation.llr_metrics import bayes_threshold

    calibrated = backend is not None and backend.calibrated
    if prior is not None and not calibrated:
        raise ValueError("export: prior needs a calibrated back-end (its scores are log-likelihood ratios)")
    if prior is not None and threshold is not None:
        raise ValueError("export: give a threshold or a prior, not both")
    if threshold is not None:
        return float(threshold), threshold_source or "given at export", None
    if not calibrated:
        return None, None, None
    prior = DEFAULT_PRIOR if prior is None else prior
    if not (isinstance(prior, (int, float)) and 0.0 < prior < 1.0):
        raise ValueError(f"export: prior must be a probability in (0, 1), got {prior!r}")
    return bayes_threshold(prior), f"Bayes, p_target {prior:g}", float(prior)


def _add_backend(meta: dict, tensors: dict, backend, where: str) -> None:
    """Store ``backend`` in ``meta`` and ``tensors``, checked by reading it back as ``SpeakerEncoder.load`` will."""
    config, arrays = backend.to_state()
    meta["backend"], meta["format_version"] = config, FORMAT_VERSION
    tensors.update(backend_tensors(arrays))
    read_backend(meta, arrays, where, meta["embed_dim"])


def _read_source(src: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(encoder weights, metadata, back-end arrays) of a model file, or of a run folder / checkpoint (no back-end)."""
    if is_model_file(Path(src)):
        tensors, meta = read_model_file(src)
        state, arrays = split_backend(tensors)
        return state, meta, arrays
    state, meta, _ = read_checkpoint(src)
    return state, meta, {}


def _keep_decision(meta: dict, backend, threshold, prior) -> bool:
    """True when a model file's own threshold and prior stay: nothing new given, and it has a decision."""
    return backend is None and threshold is None and prior is None and meta.get("threshold") is not None


def export_model(checkpoint_or_run_dir: str | os.PathLike, out_path: str | os.PathLike,
                 threshold: float | None = None, threshold_source: str | None = None,
                 backend=None, prior: float | None = None) -> Path:
    """Write the source's encoder, its front end's settings, optionally a back-end and a decision threshold.

    The source: a run folder, a ``.pt`` checkpoint or a ``.safetensors`` model file (whose
    back-end, threshold and prior are kept unless ``backend``, ``threshold`` or ``prior`` is
    given). ``backend``: a fitted ``BackendChain`` on this encoder's embeddings. ``prior``
    (calibrated chains only): the target prior of the default decision, whose Bayes threshold
    is stored. Non-finite weights are refused (``ModelError``).
    """
    from .. import __version__

    state, meta, arrays = _read_source(checkpoint_or_run_dir)
    where = str(checkpoint_or_run_dir)
    encoder, _ = build_modules(meta, state, where)  # checks the metadata, finite weights that fit
    meta["embed_dim"] = embed_dim(encoder, meta)
    tensors = dict(encoder.state_dict())
    kept = read_backend(meta, arrays, where, meta["embed_dim"]) if backend is None else None
    if backend is not None:
        _add_backend(meta, tensors, backend, where)
    elif kept is not None:
        tensors.update(backend_tensors(arrays))
    if not _keep_decision(meta, backend, threshold, prior):
        meta["threshold"], meta["threshold_source"], stated_prior = decision(backend or kept, threshold,
                                                                             threshold_source, prior)
        meta.pop("prior", None)
        if stated_prior is not None:
            meta["prior"] = stated_prior
    meta.setdefault("provenance", {})
    meta["provenance"].update(exported=utc_now(), sslspeaker=__version__)
    return save_model(out_path, tensors, meta)


__all__ = ["export_model", "decision"]
