"""Random crops read straight from disk (partial reads), padded by repetition when short."""

from __future__ import annotations

import numpy as np

from .audio import SAMPLE_RATE, read_audio


def tile_to(x: np.ndarray, frames: int) -> np.ndarray:
    """Repeat ``x`` end to end until it is exactly ``frames`` long (short utterances)."""
    if len(x) >= frames:
        return x[:frames]
    if len(x) == 0:
        raise ValueError("cannot pad an empty signal")
    reps = -(-frames // len(x))
    return np.tile(x, reps)[:frames]


def random_starts(file_frames: int, crop_frames: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent uniform crop starts; 0 when the file is shorter than a crop."""
    room = file_frames - crop_frames
    if room <= 0:
        return np.zeros(n, dtype=np.int64)
    return rng.integers(0, room + 1, size=n)


def read_crops(path: str, file_frames: int, crop_frames: int, n: int, rng: np.random.Generator,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``n`` random crops [n, crop_frames] of one file, each a partial read of just its span."""
    if file_frames <= crop_frames:
        # one read of the whole (short) file serves every view
        return np.stack([tile_to(read_audio(path, sample_rate=sample_rate), crop_frames)] * n)
    starts = random_starts(file_frames, crop_frames, n, rng)
    return np.stack([tile_to(read_audio(path, int(s), crop_frames, sample_rate), crop_frames) for s in starts])


def crops_of(x: np.ndarray, crop_frames: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random crops [n, crop_frames] of an utterance already in memory (same draws as ``read_crops``)."""
    starts = random_starts(len(x), crop_frames, n, rng)
    return np.stack([tile_to(x[int(s):int(s) + crop_frames], crop_frames) for s in starts]).astype(np.float32, copy=False)


def evenly_spaced_starts(file_frames: int, crop_frames: int, n: int) -> np.ndarray:
    """``n`` crop starts spread evenly over the file (clovaai's 10-crop evaluation)."""
    return np.linspace(0, max(0, file_frames - crop_frames), n).astype(np.int64)
