"""The ``SpeakerEncoder`` Python API: audio -> L2-normalised speaker embeddings, scores, decisions.

``SpeakerEncoder.load`` reads a ``.safetensors`` model file (``model_file``), or a training run
folder or ``.pt`` checkpoint (``checkpoint_source``, loaded with ``torch.load(weights_only=True)``).
A model file may carry a fitted back-end (``SpeakerEncoder.backend``): scores then go through
it (log-likelihood ratios when it is calibrated); without one they are cosines.

Audio is refused, with an error naming the file, when it is missing, holds NaN or inf, or has
no speech: a peak below ``SILENCE_PEAK`` (about -80 dBFS), the rule ``prepare`` applies.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.audio import SAMPLE_RATE, AudioError, read_audio
from ..data.validate import SILENCE_PEAK
from ..evaluation.scoring import check_vectors
from .checkpoint_source import read_checkpoint
from .model_file import (ModelError, build_modules, embed_dim, is_model_file, read_backend, read_model_file,
                         resolve_model_path, split_backend)

DEVICE_HELP = "expected auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a usable ``torch.device`` ("auto": CUDA when available, else CPU); ValueError naming it otherwise."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a device ({DEVICE_HELP})") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: not supported ({DEVICE_HELP})")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available (this torch build or machine has none); "
                         "use --device cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_waveform(x: np.ndarray, where: str) -> np.ndarray:
    """``x`` when it is finite and not silent; ``AudioError`` naming ``where`` otherwise."""
    if not np.isfinite(x).all():
        raise AudioError(where, f"{int((~np.isfinite(x)).sum())} samples are NaN or inf; refusing to score it")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(where, f"no speech (silent: peak {peak:.1e} < {SILENCE_PEAK:.0e}); refusing to score it")
    return x


def check_embedding(e: np.ndarray, where: str) -> np.ndarray:
    """``e`` when every value is finite; ``ValueError`` naming ``where`` otherwise."""
    check_vectors({where: e})
    return e


class SpeakerEncoder:
    """Waveforms or audio files -> L2-normalised speaker embeddings; scores (back-end or cosine) and decisions.

    >>> model = SpeakerEncoder.load("model.safetensors")
    >>> score, same = model.verify("a.wav", "b.wav")
    """

    def __init__(self, encoder: torch.nn.Module, features: torch.nn.Module, metadata: dict,
                 source: str | os.PathLike | None = None, device: str | torch.device = "cpu", backend=None):
        self.encoder = encoder.eval()
        self.features = features.eval()
        self.metadata = metadata
        self.source = str(source) if source is not None else None  # the file the weights came from
        self.backend = backend  # None or the model file's fitted ``BackendChain``
        self._fingerprint: str | None = None
        self.device = torch.device("cpu")
        self.to(device)

    # ---- loading ----
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             encoder: str = "inference") -> "SpeakerEncoder":
        """A ``.safetensors`` model, a run folder or a ``.pt`` checkpoint; None = the bundled default.

        ``encoder`` (run folders and checkpoints): which of its encoders, ``inference`` (the one its
        method declares), ``online``, ``momentum`` or ``auto`` (see ``checkpoint_source``).
        """
        path = resolve_model_path(path)
        device = resolve_device(device)
        arrays: dict = {}
        if is_model_file(path):
            if encoder not in ("inference", "auto"):
                raise ModelError(f"{path}: a model file holds one encoder; encoder {encoder!r} needs a "
                                 "training run folder or checkpoint")
            state, meta = read_model_file(path)
            state, arrays = split_backend(state)
            source = path
        else:
            state, meta, source = read_checkpoint(path, encoder)
        encoder, features = build_modules(meta, state, str(path))
        if meta.get("embed_dim") is None:
            meta["embed_dim"] = embed_dim(encoder, meta)
        backend = read_backend(meta, arrays, str(path), meta["embed_dim"])
        return cls(encoder, features, meta, source=source, device=device, backend=backend)

    def to(self, device: str | torch.device) -> "SpeakerEncoder":
        """Move the modules to ``device`` (see ``resolve_device``)."""
        self.device = resolve_device(device)
        self.encoder.to(self.device)
        self.features.to(self.device)
        return self

    # ---- properties ----
    @property
    def threshold(self) -> float | None:
        t = self.metadata.get("threshold")
        return None if t is None else float(t)

    @property
    def threshold_source(self) -> str | None:
        return self.metadata.get("threshold_source")

    @property
    def prior(self) -> float | None:
        """The target prior whose Bayes threshold is the stored threshold (calibrated models), else None."""
        p = self.metadata.get("prior")
        return None if p is None else float(p)

    @property
    def calibrated(self) -> bool:
        """True when scores are log-likelihood ratios (the model carries a calibrated back-end)."""
        return self.backend is not None and self.backend.calibrated

    @property
    def embed_dim(self) -> int:
        return int(self.metadata["embed_dim"])

    @property
    def config(self) -> dict:
        """The resolved model and feature configuration (what the embeddings depend on)."""
        m = self.metadata
        return {"encoder": m["encoder"]["name"], "options": dict(m["encoder"].get("options") or {}),
                "features": dict(m["features"]), "embed_dim": m.get("embed_dim"), "sample_rate": SAMPLE_RATE}

    @property
    def fingerprint(self) -> str:
        """sha256 over the weights and the embedding-relevant metadata (not the threshold).

        Two models with this same fingerprint give the same embeddings; caches key on it.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps({k: self.metadata.get(k) for k in ("encoder", "features")}, sort_keys=True).encode())
            for name, t in sorted(self.encoder.state_dict().items()):
                t = t.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ---- embedding ----
    def _waveform(self, x: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        if isinstance(x, (str, os.PathLike)):
            if not os.path.isfile(x):
                raise AudioError(x, "no such file")
            return read_audio(x)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D (mono) waveform, got shape {x.shape}")
        if sample_rate != SAMPLE_RATE:
            import soxr

            x = soxr.resample(x, sample_rate, SAMPLE_RATE).astype(np.float32, copy=False)
        return x

    @torch.inference_mode()
    def embed_waves(self, waves: np.ndarray | torch.Tensor) -> np.ndarray:
        """A batch of equal-length 16-kHz waveforms [B, T] -> normalised embeddings [B, D] (float32)."""
        x = torch.as_tensor(np.asarray(waves, dtype=np.float32) if not isinstance(waves, torch.Tensor) else waves,
                            dtype=torch.float32).to(self.device)
        if x.dim() == 1:
            x = x[None]
        self._check_length(x.shape[-1])
        return F.normalize(self.encoder(self.features(x)).float(), dim=-1).cpu().numpy()

    def _check_length(self, n: int, where: str | None = None) -> None:
        min_len = self.features.n_fft // 2 + 1
        if n < min_len:
            raise ValueError(f"{where + ': ' if where else ''}audio too short: {n} samples; needs at least {min_len} "
                             f"({1000 * min_len / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz)")

    def embed(self, waveform_or_path: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embedding [D] (float32, L2 norm 1) of one utterance: a path, or a 1-D waveform at ``sample_rate``.

        Missing files, audio with NaN/inf samples and silent audio are refused (``AudioError``).
        """
        where = str(waveform_or_path) if isinstance(waveform_or_path, (str, os.PathLike)) else "the waveform"
        x = self._waveform(waveform_or_path, sample_rate)
        self._check_length(x.shape[-1], where if where != "the waveform" else None)
        return check_embedding(self.embed_waves(check_waveform(x, where)[None])[0], where)

    def embed_batch(self, items: Sequence[Any], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embeddings [N, D] of several utterances (each embedded at its own full length)."""
        if len(items) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.stack([self.embed(x, sample_rate) for x in items])

    # ---- scoring ----
    @staticmethod
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

    def score_embeddings(self, emb_a, emb_b) -> np.ndarray | float:
        """Scores of embeddings [D] or [N, D] pair by pair: the back-end's (an LLR when calibrated), else cosine."""
        a, b = np.asarray(emb_a), np.asarray(emb_b)
        single = a.ndim == 1
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        if self.backend is not None:
            scores = np.asarray(self.backend.score_pairs(a, b), dtype=np.float64)
        else:
            scores = np.array([self.cosine(x, y) for x, y in zip(a, b)])
        return float(scores[0]) if single else scores

    def score(self, a: Any, b: Any, sample_rate: int = SAMPLE_RATE) -> float:
        """The score of two utterances' full-length embeddings (``score_embeddings``)."""
        return self.score_embeddings(self.embed(a, sample_rate), self.embed(b, sample_rate))

    def decision_threshold(self, threshold: float | None = None, prior: float | None = None) -> tuple[float, str]:
        """(threshold, where it comes from): ``threshold``, else the Bayes threshold at ``prior``
        (calibrated models only), else the model's stored threshold."""
        if threshold is not None and prior is not None:
            raise ValueError("give a threshold or a prior, not both")
        if threshold is not None:
            if not np.isfinite(threshold):
                raise ValueError(f"threshold must be a finite number, got {threshold!r}")
            return float(threshold), "given"
        if prior is not None:
            return self._bayes_threshold(prior)
        if self.threshold is None:
            raise ValueError(f"{self.source or 'this model'} stores no decision threshold: pass threshold=... "
                             "(or export the model with --trials to store its dev EER threshold)")
        return self.threshold, self.threshold_source or "model threshold"

    def _bayes_threshold(self, prior: float) -> tuple[float, str]:
        from ..evaluation.llr_metrics import bayes_threshold

        if not self.calibrated:
            raise ValueError(f"a prior needs a calibrated model (scores that are log-likelihood ratios); "
                             f"{self.source or 'this model'} has {'an uncalibrated' if self.backend else 'no'} back-end")
        if not (isinstance(prior, (int, float)) and 0.0 < prior < 1.0):
            raise ValueError(f"prior must be a probability in (0, 1), got {prior!r}")
        return bayes_threshold(prior), f"Bayes, p_target {prior:g}"

    def verify(self, a: Any, b: Any, threshold: float | None = None, sample_rate: int = SAMPLE_RATE,
               prior: float | None = None) -> tuple[float, bool]:
        """(score, same speaker?) — same when score >= the threshold (``decision_threshold(threshold, prior)``)."""
        threshold, _ = self.decision_threshold(threshold, prior)
        s = self.score(a, b, sample_rate)
        return s, bool(s >= threshold)

    def __repr__(self) -> str:
        backend = self.backend.name if self.backend is not None else None
        return (f"SpeakerEncoder({self.metadata['encoder']['name']}, dim={self.metadata.get('embed_dim')}, "
                f"backend={backend}, threshold={self.threshold}, device={self.device}, source={self.source!r})")

    def enroll(self, files: Sequence[Any], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The speaker model [D] of several utterances: their embeddings' mean, length-normalised
        (``evaluation.enrolment``); score it against a test embedding with ``score_embeddings``."""
        from ..evaluation.enrolment import enroll

        return enroll(self, files, sample_rate)


__all__ = ["SpeakerEncoder", "resolve_device", "check_waveform", "check_embedding", "DEVICE_HELP"]
