"""Additive noise: mixing at a target SNR and a bank of noise files (MUSAN-style categories)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio
from ..data.manifest import Entry

log = logging.getLogger(__name__)

EPS = 1e-10  # power floor: a silent noise segment must not divide by zero
PRELOAD_LIMIT_S = 1800.0  # categories shorter than this (30 min) are kept in memory
MAX_WARNINGS = 5  # skipped files named one by one, the rest counted


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, snr_db) -> torch.Tensor:
    """y = s + g·n with g = sqrt(P_s / (P_n·10^(snr/10))), P = mean(x²) over time."""
    # speech, noise [B, T]; snr_db [B] (or a scalar). A silent noise gets a floored power.
    snr = torch.as_tensor(snr_db, dtype=speech.dtype, device=speech.device)
    p_s = speech.pow(2).mean(-1)
    p_n = noise.pow(2).mean(-1)
    gain = torch.sqrt(p_s / (p_n * 10.0 ** (snr / 10.0)).clamp_min(EPS))
    return speech + gain.unsqueeze(-1) * noise


def combine_sources(sources: list[np.ndarray], snrs_db: list[float]) -> tuple[np.ndarray, float]:
    """n = Σ_k n_k / sqrt(P_k·10^(snr_k/10)), snr = −10·log10 P_n: n mixed at snr puts each n_k at snr_k."""
    # Each source's level relative to the speech is fixed without knowing the speech, so babble
    # (several talkers, each at its own SNR: the Kaldi/MUSAN convention) becomes one noise.
    S = np.stack(sources).astype(np.float32, copy=False)  # [k, T]
    p = np.maximum(np.einsum("kt,kt->k", S, S) / S.shape[1], EPS)
    n = (1.0 / np.sqrt(p * 10.0 ** (np.asarray(snrs_db, np.float64) / 10.0))).astype(np.float32) @ S
    return n, -10.0 * np.log10(max(float(np.mean(n * n, dtype=np.float64)), EPS))


@dataclass
class _NoiseFile:
    path: str
    frames: int  # at SAMPLE_RATE
    samples: np.ndarray | None = None  # preloaded audio


class NoiseBank:
    """Noise files grouped by category ("noise", "music", "speech"; a missing category is "noise").

    ``sample`` returns a random span of a random file, reading only that span from disk unless
    the category is preloaded. ``preload=None`` preloads every category, subsampling one longer
    than ``preload_limit_s`` to that much audio (keeps disk reads out of the hot path);
    ``preload=False`` reads every span from disk.
    Unreadable files are skipped with a warning.
    """

    def __init__(self, entries: list[Entry], preload: bool | None = None, preload_limit_s: float = PRELOAD_LIMIT_S):
        self._files: dict[str, list[_NoiseFile]] = {}
        skipped = []
        for e in entries:
            try:
                info = audio_info(e.path)
            except AudioError as exc:
                skipped.append(str(exc))
                continue
            frames = int(info.frames * SAMPLE_RATE // info.sample_rate) if info.sample_rate else 0
            if frames <= 0:
                skipped.append(f"{e.path}: empty")
                continue
            self._files.setdefault(e.category or "noise", []).append(_NoiseFile(e.path, frames))
        for why in skipped[:MAX_WARNINGS]:
            log.warning("noise bank: skipping %s", why)
        if len(skipped) > MAX_WARNINGS:  # a wrong root makes every file fail: one line, not thousands
            log.warning("noise bank: skipped %d unusable files of %d in all", len(skipped), len(entries))
        for category, files in self._files.items():
            total_s = sum(f.frames for f in files) / SAMPLE_RATE
            if preload is None and total_s >= preload_limit_s:
                # A large set (MUSAN speech is 60 h) keeps a seeded random subset of about
                # preload_limit_s in memory: disk reads in the hot path cost more than the
                # diversity lost (babble draws 3-7 talkers from hundreds of files either way).
                order = np.random.default_rng(0).permutation(len(files))
                keep, budget = [], preload_limit_s * SAMPLE_RATE
                for i in order:
                    if budget <= 0:
                        break
                    keep.append(files[i])
                    budget -= files[i].frames
                log.info("noise bank: %s has %.0f min; keeping %d of %d files (%.0f min) in memory",
                         category, total_s / 60, len(keep), len(files), preload_limit_s / 60)
                files[:] = sorted(keep, key=lambda f: f.path)
            if preload is not False:
                for f in list(files):
                    self._load(category, f)

    @property
    def categories(self) -> list[str]:
        """Categories with at least one usable file."""
        return sorted(c for c, files in self._files.items() if files)

    def count(self, category: str) -> int:
        return len(self._files.get(category, ()))

    def is_preloaded(self, category: str) -> bool:
        files = self._files.get(category, ())
        return bool(files) and all(f.samples is not None for f in files)

    def sample(self, category: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``n_samples`` float32 samples from a random file at a random offset (looped if short)."""
        return self.sample_many(category, 1, n_samples, rng)[0]

    def sample_many(self, category: str, count: int, n_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
        """``count`` segments from distinct files when the category has enough, else with repeats."""
        files = self._usable(category)
        picks = rng.choice(len(files), size=count, replace=count > len(files))
        chosen = [files[i] for i in picks]
        out = []
        for f in chosen:
            while True:
                x = self._segment(category, f, n_samples, rng)
                if x is not None:
                    break
                files = self._usable(category)  # f was dropped: draw another file
                f = files[rng.integers(len(files))]
            out.append(x)
        return out

    def _usable(self, category: str) -> list[_NoiseFile]:
        files = self._files.get(category)
        if not files:
            have = ", ".join(self.categories) or "none"
            raise ValueError(f"noise bank has no usable files of category {category!r} (categories: {have})")
        return files

    def _segment(self, category: str, f: _NoiseFile, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """A span of ``f``; None (file dropped) when it turns out unreadable."""
        if f.frames >= n:
            start = int(rng.integers(f.frames - n + 1))
            if f.samples is not None:
                x = f.samples[start : start + n]  # a read-only view: callers combine, never write
            else:
                try:
                    x = read_audio(f.path, start, n)
                except AudioError as exc:
                    self._drop(category, f, exc.reason)
                    return None
            if len(x) < n:  # header length and decoded length can differ slightly
                x = np.pad(x, (0, n - len(x)), mode="wrap") if len(x) else np.zeros(n, np.float32)
            return x
        # Short file: loop it from a random phase so every part of the noise gets used.
        if f.samples is None and not self._load(category, f):
            return None
        reps = -(-(n + f.frames) // f.frames)
        start = int(rng.integers(f.frames))
        return np.tile(f.samples, reps)[start : start + n].copy()

    def _load(self, category: str, f: _NoiseFile) -> bool:
        try:
            x = read_audio(f.path)
        except AudioError as exc:
            self._drop(category, f, exc.reason)
            return False
        if not len(x):
            self._drop(category, f, "decoded no samples")
            return False
        f.samples, f.frames = x, len(x)
        return True

    def _drop(self, category: str, f: _NoiseFile, why: str) -> None:
        log.warning("noise bank: skipping %s (%s)", f.path, why)
        self._files[category].remove(f)
