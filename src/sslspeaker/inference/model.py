"""The ``SpeakerEncoder`` Python API: audio -> L2-normalised speaker embeddings, scores, decisions.

``SpeakerEncoder.load`` reads a ``.safetensors`` model file (``model_file``), or a training run
folder or ``.pt`` checkpoint (``checkpoint_source``, loaded with ``torch.load(weights_only=True)``).
A model file may carry a fitted back-end (``SpeakerEncoder.backend``): scores then go through
it (log-likelihood ratios when it is calibrated); without one they are cosines.

Audio is refused, with an error naming the file, when it is missing, holds NaN or inf, or has
no speech: a peak below ``SILENCE_PEAK`` (about -80 dBFS), the rule ``prepare`` applies, or, with
speech activity on (``vad=True``, the default), no frame that the energy detector
(``data.activity``) calls speech. With it on, ``embed``/``embed_batch``/``score``/``verify`` embed
only the speech regions; ``vad=False`` (``--no-vad``) embeds every sample. ``embed_waves`` and
``embed_windows`` never trim (their inputs are positions in the recording).

Utterances of different lengths are embedded in padded batches sorted by length (``models.batched``:
the same embedding as alone), and ones longer than ``chunk_seconds`` chunk by chunk with the
utterance statistics pooled across chunks (memory flat in the length beyond the samples and
log mel frames; the same embedding as unchunked).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.activity import trim_silence
from ..data.audio import SAMPLE_RATE, AudioError, read_audio
from ..data.validate import SILENCE_PEAK
from ..models.batched import embed_chunked, embed_padded
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

    chunk_seconds = 60.0  # longer utterances are embedded chunk by chunk (``embed_chunked``)
    batch_seconds = 600.0  # padded audio per batch in ``embed_batch``

    def __init__(self, encoder: torch.nn.Module, features: torch.nn.Module, metadata: dict,
                 source: str | os.PathLike | None = None, device: str | torch.device = "cpu", backend=None,
                 vad: bool = True):
        self.vad = bool(vad)  # trim non-speech before embedding (``data.activity``)
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
             encoder: str = "inference", vad: bool = True) -> "SpeakerEncoder":
        """A ``.safetensors`` model, a run folder or a ``.pt`` checkpoint; None = the bundled default.

        ``vad``: trim non-speech before embedding (the default; see the module docstring).

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
        return cls(encoder, features, meta, source=source, device=device, backend=backend, vad=vad)

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
    def embed_waves(self, waves: np.ndarray | torch.Tensor | Sequence[Any]) -> np.ndarray:
        """16-kHz waveforms -> normalised embeddings [B, D] (float32), as given (no speech trimming):
        a batch [B, T] of one length, or a sequence of 1-D waveforms of any lengths (padded batches)."""
        if isinstance(waves, (list, tuple)):
            return self._embed_prepared([np.asarray(w, dtype=np.float32).reshape(-1) for w in waves])
        x = torch.as_tensor(np.asarray(waves, dtype=np.float32) if not isinstance(waves, torch.Tensor) else waves,
                            dtype=torch.float32).to(self.device)
        if x.dim() == 1:
            x = x[None]
        self._check_length(x.shape[-1])
        if x.shape[-1] > self.chunk_seconds * SAMPLE_RATE:
            return self._embed_prepared(list(x.cpu().numpy()))
        return F.normalize(self.encoder(self.features(x)).float(), dim=-1).cpu().numpy()

    def _check_length(self, n: int, where: str | None = None) -> None:
        min_len = self.features.n_fft // 2 + 1
        if n < min_len:
            raise ValueError(f"{where + ': ' if where else ''}audio too short: {n} samples; needs at least {min_len} "
                             f"({1000 * min_len / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz)")

    def _prepared(self, waveform_or_path: Any, sample_rate: int, vad: bool | None) -> np.ndarray:
        """The checked 16-kHz waveform to embed: its speech regions when ``vad`` (None: ``self.vad``)."""
        where = str(waveform_or_path) if isinstance(waveform_or_path, (str, os.PathLike)) else "the waveform"
        x = self._waveform(waveform_or_path, sample_rate)
        self._check_length(x.shape[-1], where if where != "the waveform" else None)
        x = check_waveform(x, where)
        if self.vad if vad is None else vad:
            x = trim_silence(x, where)
            self._check_length(x.shape[-1], f"{where} (its speech regions)")
        return x

    @torch.inference_mode()
    def _embed_prepared(self, waves: list[np.ndarray]) -> np.ndarray:
        """Normalised embeddings [N, D]: long waveforms chunked, the others in padded batches by length."""
        out = np.zeros((len(waves), self.embed_dim), dtype=np.float32)
        long = [i for i, w in enumerate(waves) if len(w) > self.chunk_seconds * SAMPLE_RATE]
        rest = sorted(set(range(len(waves))) - set(long))
        for i in long:  # (chunk_seconds may be inf: then nothing is long)
            chunk = max(1, int(self.chunk_seconds * SAMPLE_RATE) // self.features.hop_length)
            x = torch.from_numpy(np.ascontiguousarray(waves[i])).to(self.device)
            out[i] = F.normalize(embed_chunked(self.encoder, self.features, x, chunk).float(), dim=-1)[0].cpu().numpy()
        if rest:
            xs = [torch.from_numpy(np.ascontiguousarray(waves[i])).to(self.device) for i in rest]
            frames = int(self.batch_seconds * SAMPLE_RATE) // self.features.hop_length
            emb = F.normalize(embed_padded(self.encoder, self.features, xs, frames), dim=-1)
            out[rest] = emb.cpu().numpy()
        return out

    def embed(self, waveform_or_path: Any, sample_rate: int = SAMPLE_RATE, vad: bool | None = None) -> np.ndarray:
        """Embedding [D] (float32, L2 norm 1) of one utterance: a path, or a 1-D waveform at ``sample_rate``.

        Missing files, audio with NaN/inf samples and silent audio (or, with ``vad``, audio without
        speech) are refused (``AudioError``). ``vad``: None = this model's setting (``self.vad``).
        """
        where = str(waveform_or_path) if isinstance(waveform_or_path, (str, os.PathLike)) else "the waveform"
        return check_embedding(self._embed_prepared([self._prepared(waveform_or_path, sample_rate, vad)])[0], where)

    def embed_batch(self, items: Sequence[Any], sample_rate: int = SAMPLE_RATE, vad: bool | None = None) -> np.ndarray:
        """Embeddings [N, D] of several utterances, each at its own full length (its speech with
        ``vad``), in padded batches sorted by length: each the same as ``embed`` of it alone."""
        if len(items) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        emb = self._embed_prepared([self._prepared(x, sample_rate, vad) for x in items])
        for x, e in zip(items, emb):
            check_embedding(e, str(x) if isinstance(x, (str, os.PathLike)) else "the waveform")
        return emb

    def embed_windows(self, wave_or_path: Any, window: float = 1.5, hop: float = 0.75,
                      sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
        """(starts [N] in seconds, embeddings [N, D]) of ``window``-second windows every ``hop`` seconds.

        Windows start at 0, hop, 2 hop, ... while they fit; when that leaves a tail, one more window
        ends at the recording's end; a recording shorter than ``window`` is one window. No speech
        trimming: the starts are positions in the recording as given.
        """
        for name, v in (("window", window), ("hop", hop)):
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        where = str(wave_or_path) if isinstance(wave_or_path, (str, os.PathLike)) else "the waveform"
        x = check_waveform(self._waveform(wave_or_path, sample_rate), where)
        win, step = int(round(window * SAMPLE_RATE)), max(1, int(round(hop * SAMPLE_RATE)))
        self._check_length(min(win, len(x)), f"{where}: window {window} s")
        starts = list(range(0, max(len(x) - win, 0) + 1, step))
        if len(x) > win and starts[-1] + win < len(x):
            starts.append(len(x) - win)
        emb = self._embed_prepared([x[s:s + win] for s in starts])
        return np.array(starts, dtype=np.float64) / SAMPLE_RATE, emb

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

    def score(self, a: Any, b: Any, sample_rate: int = SAMPLE_RATE, vad: bool | None = None) -> float:
        """The score of two utterances' full-length embeddings (``score_embeddings``)."""
        return self.score_embeddings(self.embed(a, sample_rate, vad), self.embed(b, sample_rate, vad))

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
               prior: float | None = None, vad: bool | None = None) -> tuple[float, bool]:
        """(score, same speaker?) — same when score >= the threshold (``decision_threshold(threshold, prior)``)."""
        threshold, _ = self.decision_threshold(threshold, prior)
        s = self.score(a, b, sample_rate, vad)
        return s, bool(s >= threshold)

    def __repr__(self) -> str:
        backend = self.backend.name if self.backend is not None else None
        return (f"SpeakerEncoder({self.metadata['encoder']['name']}, dim={self.metadata.get('embed_dim')}, "
                f"backend={backend}, threshold={self.threshold}, device={self.device}, source={self.source!r})")


__all__ = ["SpeakerEncoder", "resolve_device", "check_waveform", "check_embedding", "DEVICE_HELP"]
