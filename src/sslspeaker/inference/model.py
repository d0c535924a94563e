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

from ..data.audio import SAMPLE_RATE
from ..models.batched import embed_chunked, embed_padded
from .api import EncoderAPI, check_embedding, check_waveform
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


class SpeakerEncoder(EncoderAPI):
    """Waveforms or audio files -> L2-normalised speaker embeddings; scores (back-end or cosine), decisions and
    enrolment come from ``api.EncoderAPI``.

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
        An ``.onnx`` file (``sslspeaker export --onnx``) gives an ``onnx_model.OnnxSpeakerEncoder``.

        ``vad``: trim non-speech before embedding (the default; see ``api``).

        ``encoder`` (run folders and checkpoints): which of its encoders, ``inference`` (the one its
        method declares), ``online``, ``momentum`` or ``auto`` (see ``checkpoint_source``).
        """
        path = resolve_model_path(path)
        if path.suffix == ".onnx":  # a torch-free encoder over onnxruntime, with this same API
            from .onnx_model import OnnxSpeakerEncoder

            onnx = OnnxSpeakerEncoder.load(path, device)
            onnx.vad = bool(vad)
            return onnx
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

    @property
    def min_samples(self) -> int:
        """The shortest waveform the front end takes: n_fft / 2 + 1 samples (its reflect padding)."""
        return self.features.n_fft // 2 + 1

    def __repr__(self) -> str:
        backend = self.backend.name if self.backend is not None else None
        return (f"SpeakerEncoder({self.metadata['encoder']['name']}, dim={self.metadata.get('embed_dim')}, "
                f"backend={backend}, threshold={self.threshold}, device={self.device}, source={self.source!r})")


__all__ = ["SpeakerEncoder", "resolve_device", "check_waveform", "check_embedding", "DEVICE_HELP"]
