"""Decoded training utterances kept in memory, so crops after the first epoch cost no decoding.

A small pool (the development sets: a few hours) re-decodes every file dozens of times per
run; compressed formats make that the dominant data cost (an Opus crop takes ~8 ms to seek
and decode). Audio is stored as 16-bit integers: exact for 16-bit sources, -96 dB
quantisation otherwise, and half the memory of float32 (one hour ≈ 115 MB). Only finite audio
is stored: a file with NaN or infinite samples raises ``AudioError`` and is never cached.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .audio import SAMPLE_RATE, AudioError, check_finite, read_audio
from .manifest import Entry

log = logging.getLogger(__name__)
BYTES_PER_SAMPLE = 2


def to_int16(y: np.ndarray, path: str) -> np.ndarray:
    """Float samples in [-1, 1] as 16-bit integers; ``AudioError`` naming ``path`` for NaN or inf."""
    check_finite(y, path)
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


class UtteranceCache:
    """Whole utterances by index, filled lazily on first use; ``enabled`` only when the whole
    set (by manifest durations) fits in ``max_bytes``, so memory is bounded and known up front."""

    def __init__(self, entries: Sequence[Entry], max_bytes: float, sample_rate: int = SAMPLE_RATE):
        self.entries, self.sample_rate = entries, sample_rate
        self.need_bytes = sum(e.duration for e in entries) * sample_rate * BYTES_PER_SAMPLE
        self.enabled = 0 < self.need_bytes <= max_bytes
        self._store: dict[int, np.ndarray] = {}
        if max_bytes > 0 and not self.enabled:
            log.info("training audio needs %.1f GB in memory, over data.cache_gb=%.1f: crops are read from disk",
                     self.need_bytes / 1e9, max_bytes / 1e9)

    def __len__(self) -> int:
        return len(self._store)

    def get(self, index: int) -> np.ndarray:
        """The utterance as float32 (raises ``AudioError`` like ``read_audio``)."""
        x = self._store.get(index)
        if x is None:
            path = self.entries[index].path
            x = to_int16(read_audio(path, sample_rate=self.sample_rate), path)
            self._store[index] = x
        return x.astype(np.float32) * (1.0 / 32768.0)

    def fill(self, threads: int = 2, progress: bool = True) -> None:
        """Decode every utterance now (in the training process, before data workers fork and
        share the pages copy-on-write); unreadable and non-finite files are left for the dataset
        to report and skip."""
        if not self.enabled:
            return

        def load(i: int) -> None:
            try:
                self.get(i)
            except (AudioError, ValueError):
                pass

        with ThreadPoolExecutor(threads) as pool:  # libsndfile decodes outside the GIL
            list(tqdm(pool.map(load, range(len(self.entries))), total=len(self.entries), disable=not progress,
                      desc="caching training audio", unit="file", mininterval=2.0))
