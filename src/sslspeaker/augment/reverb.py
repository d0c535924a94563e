"""Reverberation: FFT convolution with room impulse responses, and a bank of RIR files."""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft
import torch

from ..data.audio import SAMPLE_RATE, AudioError, read_audio
from ..data.manifest import Entry

log = logging.getLogger(__name__)


def reverberate(x: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """y[t] = Σ_l h[l]·x[t−l] for t < T: linear convolution truncated to the input length."""
    # x [B, T], rir [B, L] or [L]; zero-padding to n ≥ T+L−1 makes the circular FFT product linear.
    T, L = x.shape[-1], rir.shape[-1]
    n = scipy.fft.next_fast_len(T + L - 1, real=True)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):  # FFTs in half precision lose the tail
        X = torch.fft.rfft(x.to(dtype), n=n)
        H = torch.fft.rfft(rir.to(device=x.device, dtype=dtype), n=n)
        y = torch.fft.irfft(X * H, n=n)[..., :T]
    return y.to(x.dtype)


def prepare_rir(h: np.ndarray) -> np.ndarray:
    """h[p:] / ‖h[p:]‖₂ with p = argmax|h|: direct path first, unit energy."""
    # Starting at the direct-path peak means convolution does not delay the speech (crops stay
    # aligned); unit energy keeps the reverberant level comparable to the dry speech.
    h = np.asarray(h, dtype=np.float32)
    h = h[int(np.argmax(np.abs(h))) :]
    return (h / np.sqrt(np.sum(h.astype(np.float64) ** 2))).astype(np.float32)


class RirBank:
    """Room impulse responses, loaded at 16 kHz, trimmed to the direct path and unit-energy.

    ``max_seconds`` optionally cuts long tails (cost of the FFT grows with the RIR length).
    Unreadable or silent files are skipped with a warning.
    """

    def __init__(self, entries: list[Entry], max_seconds: float | None = None):
        self.paths: list[str] = []
        self.rirs: list[np.ndarray] = []
        for e in entries:
            try:
                h = read_audio(e.path)
            except AudioError as exc:
                log.warning("rir bank: skipping %s", exc)
                continue
            if not np.any(h):
                log.warning("rir bank: skipping %s: silent", e.path)
                continue
            h = prepare_rir(h)
            if max_seconds is not None:
                h = prepare_rir(h[: max(1, int(max_seconds * SAMPLE_RATE))])
            self.paths.append(e.path)
            self.rirs.append(h)

    def __len__(self) -> int:
        return len(self.rirs)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random impulse response (shared array: do not modify)."""
        if not self.rirs:
            raise ValueError("rir bank has no usable impulse responses")
        return self.rirs[int(rng.integers(len(self.rirs)))]
