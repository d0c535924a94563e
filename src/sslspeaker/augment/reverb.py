"""Reverberation: FFT convolution with room impulse responses, and a bank of RIR files."""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft
import torch

from ..data.audio import SAMPLE_RATE, AudioError, read_audio
from ..data.manifest import Entry

log = logging.getLogger(__name__)


def fft_length(T: int, L: int) -> int:
    """A fast FFT size n ≥ T+L−1: zero-padding to it makes the circular FFT product a linear convolution."""
    return scipy.fft.next_fast_len(T + L - 1, real=True)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def reverberate(x: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """y[t] = Σ_l h[l]·x[t−l] for t < T: linear convolution truncated to the input length."""
    # x [B, T], rir [B, L] or [L]
    n = fft_length(x.shape[-1], rir.shape[-1])
    with torch.autocast(x.device.type, enabled=False):
        H = torch.fft.rfft(rir.to(device=x.device, dtype=_work_dtype(x)), n=n)
    return convolve_spectrum(x, H, n)


def convolve_spectrum(x: torch.Tensor, H: torch.Tensor, n: int) -> torch.Tensor:
    """y = irfft(rfft(x, n)·H)[:T]: ``reverberate`` with the RIR's n-point spectrum H given."""
    T = x.shape[-1]
    if x.device.type == "cpu":
        # scipy's pocketfft is ~1.7x faster than torch's CPU FFT on the few rows a data worker
        # convolves, and this is the data path's largest cost.
        threads = torch.get_num_threads()  # a batch in the training process uses every core
        X = scipy.fft.rfft(x.to(_work_dtype(x)).numpy(), n=n, workers=threads)
        y = torch.from_numpy(scipy.fft.irfft(X * H.numpy(), n=n, workers=threads)[..., :T])
    else:
        with torch.autocast(x.device.type, enabled=False):  # FFTs in half precision lose the tail
            y = torch.fft.irfft(torch.fft.rfft(x.to(_work_dtype(x)), n=n) * H, n=n)[..., :T]
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
        self.max_len = max((len(h) for h in self.rirs), default=0)
        self._spectra: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rirs)

    def draw(self, rng: np.random.Generator) -> int:
        """The index of one random impulse response."""
        if not self.rirs:
            raise ValueError("rir bank has no usable impulse responses")
        return int(rng.integers(len(self.rirs)))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random impulse response (shared array: do not modify)."""
        return self.rirs[self.draw(rng)]

    def spectra(self, n: int, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        """Every RIR's n-point real FFT [R, n//2+1], computed once per (n, dtype, device):
        a training run uses one crop length, so reverberation costs two FFTs, not three."""
        key = (n, dtype, str(device))
        if key not in self._spectra:
            h = torch.zeros(len(self.rirs), self.max_len, dtype=dtype)
            for i, r in enumerate(self.rirs):
                h[i, : len(r)] = torch.from_numpy(r)
            self._spectra[key] = torch.fft.rfft(h.to(device), n=n)
        return self._spectra[key]
