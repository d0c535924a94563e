"""Audio reading: partial reads, mix-down to mono, resampling to the working rate (soxr)."""

from __future__ import annotations

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


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information only (no decoding of the samples)."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises RuntimeError/LibsndfileError on bad headers
        raise AudioError(path, f"unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from None
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
    The result may be shorter than ``frames`` near the end of the file.
    """
    try:
        with sf.SoundFile(str(path)) as f:
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
        raise AudioError(path, f"unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if native != sample_rate and x.size:
        x = soxr.resample(x, native, sample_rate).astype(np.float32, copy=False)
        if frames >= 0:
            x = x[:frames]
    return np.ascontiguousarray(x, dtype=np.float32)
