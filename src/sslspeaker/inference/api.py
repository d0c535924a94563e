"""What every speaker encoder offers on top of its embeddings, without torch: scores, decisions, enrolment.

``EncoderAPI`` is the shared base of ``model.SpeakerEncoder`` (torch) and
``onnx_model.OnnxSpeakerEncoder`` (onnxruntime). A subclass provides ``metadata`` (the model
file's), ``backend`` (None or a ``BackendChain``), ``source``,
``embed_waves`` and ``min_samples``; the rest follows: embedding of files and waveforms (checked),
the stored threshold and prior, back-end or cosine scores, decisions, enrolment. Numpy only.

Speech activity (``vad``, on by default; ``vad=False`` / ``--no-vad`` off): ``embed``,
``embed_batch``, ``score``, ``verify`` and ``enroll`` embed only the speech regions that the energy
detector (``data.activity``) finds, in Python before the encoder (torch or the ONNX graph alike);
audio with no speech is refused. ``embed_waves`` and ``embed_windows`` never trim.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..data.activity import trim_silence
from ..data.audio import SAMPLE_RATE, AudioError, read_audio
from ..data.validate import SILENCE_PEAK
from ..evaluation.scoring import check_vectors


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


def _where(x: Any) -> str:
    return str(x) if isinstance(x, (str, os.PathLike)) else "the waveform"


def waveform_of(x: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A path (read at 16 kHz) or a mono waveform at ``sample_rate`` (array, or tensor via ``.detach()``)
    as float32 samples at 16 kHz; ``AudioError`` for a missing file, ``ValueError`` for a bad shape."""
    if isinstance(x, (str, os.PathLike)):
        if not os.path.isfile(x):
            raise AudioError(x, "no such file")
        return read_audio(x)
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
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


class EncoderAPI:
    """Scores, decisions and enrolment over a subclass's ``embed`` and ``metadata``/``backend``/``source``."""

    metadata: dict
    backend: Any = None
    source: str | None = None
    vad: bool = True  # trim non-speech before embedding (``data.activity``)

    min_samples: int  # the shortest waveform the front end takes

    def embed_waves(self, waves: np.ndarray) -> np.ndarray:
        """A batch of equal-length 16-kHz waveforms [B, T] -> normalised embeddings [B, D] (float32)."""
        raise NotImplementedError

    # ---- embedding ----
    def _check_length(self, n: int, where: str | None = None) -> None:
        if n < self.min_samples:
            raise ValueError(f"{where + ': ' if where else ''}audio too short: {n} samples; needs at least "
                             f"{self.min_samples} ({1000 * self.min_samples / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz)")

    def _prepared(self, waveform_or_path: Any, sample_rate: int, vad: bool | None) -> np.ndarray:
        """The checked 16-kHz waveform to embed: its speech regions when ``vad`` (None: ``self.vad``)."""
        where = _where(waveform_or_path)
        x = waveform_of(waveform_or_path, sample_rate)
        self._check_length(x.shape[-1], where if where != "the waveform" else None)
        x = check_waveform(x, where)
        if self.vad if vad is None else vad:
            x = trim_silence(x, where)
            self._check_length(x.shape[-1], f"{where} (its speech regions)")
        return x

    def _embed_prepared(self, waves: list[np.ndarray]) -> np.ndarray:
        """Normalised embeddings [N, D] of checked waveforms of any lengths (one by one; subclasses batch)."""
        return np.stack([self.embed_waves(w[None])[0] for w in waves])

    def embed(self, waveform_or_path: Any, sample_rate: int = SAMPLE_RATE, vad: bool | None = None) -> np.ndarray:
        """Embedding [D] (float32, L2 norm 1) of one utterance: a path, or a 1-D waveform at ``sample_rate``.

        Missing files, audio with NaN/inf samples and silent audio (or, with ``vad``, audio without
        speech) are refused (``AudioError``). ``vad``: None = this encoder's setting (``self.vad``).
        """
        x = self._prepared(waveform_or_path, sample_rate, vad)
        return check_embedding(self._embed_prepared([x])[0], _where(waveform_or_path))

    def embed_batch(self, items: Sequence[Any], sample_rate: int = SAMPLE_RATE, vad: bool | None = None) -> np.ndarray:
        """Embeddings [N, D] of several utterances, each at its own full length (its speech with ``vad``);
        each the same as ``embed`` of it alone."""
        if len(items) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        emb = self._embed_prepared([self._prepared(x, sample_rate, vad) for x in items])
        for x, e in zip(items, emb):
            check_embedding(e, _where(x))
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
        where = _where(wave_or_path)
        x = check_waveform(waveform_of(wave_or_path, sample_rate), where)
        win, step = int(round(window * SAMPLE_RATE)), max(1, int(round(hop * SAMPLE_RATE)))
        self._check_length(min(win, len(x)), f"{where}: window {window} s")
        starts = list(range(0, max(len(x) - win, 0) + 1, step))
        if len(x) > win and starts[-1] + win < len(x):
            starts.append(len(x) - win)
        emb = self._embed_prepared([x[s:s + win] for s in starts])
        return np.array(starts, dtype=np.float64) / SAMPLE_RATE, emb

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

    def enroll(self, files: Sequence[Any], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The speaker model [D] of several utterances: their embeddings' mean, length-normalised
        (``evaluation.enrolment``); score it against a test embedding with ``score_embeddings``."""
        from ..evaluation.enrolment import enroll

        return enroll(self, files, sample_rate)


__all__ = ["EncoderAPI", "check_waveform", "check_embedding", "waveform_of"]
