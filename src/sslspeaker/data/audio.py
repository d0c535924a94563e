"""Audio reading: partial reads, mix-down to mono, resampling to the working rate (soxr).

Every read is checked: samples that are NaN or infinite make it an ``AudioError``, so no
non-finite value leaves this module (float files can hold them; integer files cannot).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


class AudioError(Exception):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def unreadable_reason(path: str | os.PathLike, exc: BaseException) -> str:
    """Why opening ``path`` failed: a missing file or a folder by name, else the decoder's first line."""
    if not os.path.lexists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a folder, not an audio file"
    return decoder_reason(exc)


def decoder_reason(exc: BaseException) -> str:
    """The decoder's complaint, on one line."""
    return f"unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})"


def check_finite(x: np.ndarray, path: str | os.PathLike) -> None:
    """Raise ``AudioError`` naming ``path`` when ``x`` holds a NaN or infinite sample."""
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioError(path, f"non-finite samples ({bad} NaN/inf values of {x.size} read)")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information only (no decoding of the samples)."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises RuntimeError/LibsndfileError on bad headers
        raise AudioError(path, unreadable_reason(path, exc)) from None
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def read_audio(
    path: str | os.PathLike,
    start: int = 0,
    frames: int = -1,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``; ``start``/``frames`` count samples at that rate.

    Only the requested span is decoded (a partial read), so a 2-s crop of a 20-min file costs
    2 s of decoding. Files at another rate are resampled with soxr; multichannel is averaged.
    The result may be shorter than ``frames`` near the end of the file. Raises ``AudioError`` for
    a file that cannot be read and for NaN or infinite samples in the span read.
    """
    return _decode(str(path), path, start, frames, sample_rate)


def decode_audio(data: bytes, where: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``read_audio`` of a whole encoded file held in memory (a tar shard's member); ``where`` names it in errors."""
    return _decode(io.BytesIO(data), where, 0, -1, sample_rate)


def _decode(source, where, start: int, frames: int, sample_rate: int) -> np.ndarray:
    try:
        with sf.SoundFile(source) as f:
            native = f.samplerate
            if native == sample_rate:
                f_start, f_frames = start, frames
            else:
                f_start = int(round(start * native / sample_rate))
                f_frames = -1 if frames < 0 else int(np.ceil(frames * native / sample_rate)) + 1
            if f_start:
                f.seek(min(f_start, f.frames))
            x = f.read(f_frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        reason = unreadable_reason(where, exc) if isinstance(source, str) else decoder_reason(exc)
        raise AudioError(where, reason) from None
    check_finite(x, where)
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if native != sample_rate and x.size:
        x = soxr.resample(x, native, sample_rate).astype(np.float32, copy=False)
        if frames >= 0:
            x = x[:frames]
    return np.ascontiguousarray(x, dtype=np.float32)
