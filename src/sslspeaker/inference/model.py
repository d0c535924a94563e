"""The ``SpeakerEncoder`` Python API: audio -> L2-normalised speaker embeddings, scores, decisions.

``SpeakerEncoder.load`` reads a ``.safetensors`` model file (``model_file``), or a training run
folder or ``.pt`` checkpoint (``checkpoint_source``, loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.audio import SAMPLE_RATE, read_audio
from .checkpoint_source import read_checkpoint
from .model_file import build_modules, embed_dim, is_model_file, read_model_file, resolve_model_path


class SpeakerEncoder:
    """Waveforms or audio files -> L2-normalised speaker embeddings; cosine scoring and decisions.

    >>> model = SpeakerEncoder.load("model.safetensors")
    >>> score, same = model.verify("a.wav", "b.wav")
    """

    def __init__(self, encoder: torch.nn.Module, features: torch.nn.Module, metadata: dict,
                 source: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.encoder = encoder.eval()
        self.features = features.eval()
        self.metadata = metadata
        self.source = str(source) if source is not None else None  # the file the weights came from
        self._fingerprint: str | None = None
        self.device = torch.device("cpu")
        self.to(device)

    # ---- loading ----
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "SpeakerEncoder":
        """A ``.safetensors`` model, a run folder or a ``.pt`` checkpoint; None = the bundled default."""
        path = resolve_model_path(path)
        if is_model_file(path):
            state, meta = read_model_file(path)
            source = path
        else:
            state, meta, source = read_checkpoint(path)
        encoder, features = build_modules(meta, state, str(path))
        if meta.get("embed_dim") is None:
            meta["embed_dim"] = embed_dim(encoder, meta)
        return cls(encoder, features, meta, source=source, device=device)

    def to(self, device: str | torch.device) -> "SpeakerEncoder":
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
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
        min_len = self.features.n_fft // 2 + 1
        if x.shape[-1] < min_len:
            raise ValueError(f"audio too short: {x.shape[-1]} samples; needs at least {min_len} "
                             f"({1000 * min_len / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz)")
        return F.normalize(self.encoder(self.features(x)).float(), dim=-1).cpu().numpy()

    def embed(self, waveform_or_path: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embedding [D] (float32, L2 norm 1) of one utterance: a path, or a 1-D waveform at ``sample_rate``."""
        return self.embed_waves(self._waveform(waveform_or_path, sample_rate)[None])[0]

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

    def score(self, a: Any, b: Any, sample_rate: int = SAMPLE_RATE) -> float:
        """Cosine similarity of two utterances' full-length embeddings."""
        return self.cosine(self.embed(a, sample_rate), self.embed(b, sample_rate))

    def verify(self, a: Any, b: Any, threshold: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> tuple[float, bool]:
        """(score, same speaker?) — same when score >= threshold (given, else the model's)."""
        if threshold is None:
            threshold = self.threshold
        if threshold is None:
            raise ValueError(f"{self.source or 'this model'} stores no decision threshold: pass threshold=... "
                             "(or export the model with --trials to store its dev EER threshold)")
        s = self.score(a, b, sample_rate)
        return s, bool(s >= threshold)

    def __repr__(self) -> str:
        return (f"SpeakerEncoder({self.metadata['encoder']['name']}, dim={self.metadata.get('embed_dim')}, "
                f"threshold={self.threshold}, device={self.device}, source={self.source!r})")


__all__ = ["SpeakerEncoder"]
