"""Per-view augmentation of contrastive views (MoCoVox Table 1 settings: none, noise, reverb, N|R).

Independently of the mode, a view may also pass through a channel after its noise or
reverberation: a random smooth equaliser (``AugmentConfig.eq``), then a telephone band limit
(``AugmentConfig.bandlimit``). The settings are ``config.AugmentConfig``, the recipe's ``augment:`` section.

Randomness comes only from a numpy Generator (passed in, or owned and checkpointable), and all
random choices, including noise segments and RIRs, are drawn on the CPU, so a run is
reproducible whatever device does the arithmetic. Mixing and convolution run in torch on the
views' device (``augment_views``) or on a data worker's CPU (``augment_waveform``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import AugmentConfig
from ..data.audio import SAMPLE_RATE
from .channel import EQ_COMPONENTS, equalise, low_pass
from .noise import NoiseBank, combine_sources, mix_at_snr
from .reverb import RirBank, convolve_spectrum, fft_length

MODES = ("none", "noise", "reverb", "N|R")
APPLY_TO = ("both", "one", "second")
BANK_CATEGORY = {"noise": "noise", "music": "music", "babble": "speech"}  # babble is made of speech files


@dataclass
class ViewAug:
    """The random draw for one view: what to apply, with its noise sources or RIR."""

    kind: str = "none"  # "none", "noise" or "reverb"
    category: str | None = None  # "noise", "music" or "babble"
    sources: list[np.ndarray] = field(default_factory=list)  # one per noise file (babble: 3–7)
    snr_db: list[float] = field(default_factory=list)  # one per source, relative to the speech
    rir_index: int | None = None  # the RIR's index in the augmenter's bank (its spectrum is cached there)
    eq: tuple[list[float], list[float]] | None = None  # equaliser (gains in dB, phases) of its cosines, or None
    cutoff_hz: float | None = None  # band limit applied last (None: full band)


class Augmenter:
    """Draws and applies one augmentation per view; ``mode`` picks the kind, ``apply_to`` the views.

    ``apply_to``: "both" augments every view, "one" a random view of each example, "second"
    always the second view (the other stays clean). Pass ``rng`` to the methods to use your own
    generator (e.g. one per data worker); otherwise the augmenter's own, seeded by ``seed``, is
    used and saved by ``state_dict``.
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        noise_bank: NoiseBank | None = None,
        rir_bank: RirBank | None = None,
        mode: str = "N|R",
        apply_to: str = "both",
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        if apply_to not in APPLY_TO:
            raise ValueError(f"apply_to={apply_to!r}: expected one of {APPLY_TO}")
        self.config = config or AugmentConfig()
        self.noise_bank, self.rir_bank = noise_bank, rir_bank
        self.mode, self.apply_to = mode, apply_to
        have = noise_bank.categories if noise_bank is not None else []
        usable = {c: w for c, w in self.config.category_weights.items() if w > 0 and BANK_CATEGORY[c] in have}
        self.categories = sorted(usable)
        self._cum_p = np.cumsum([usable[c] for c in self.categories]) / sum(usable.values()) if usable else None
        if mode in ("noise", "N|R") and not usable:
            raise ValueError(
                f"mode={mode!r} needs a noise_bank with files of category noise, music or speech (for babble); "
                f"got {'no noise_bank' if noise_bank is None else f'categories {have}'}"
            )
        if mode in ("reverb", "N|R") and (rir_bank is None or len(rir_bank) == 0):
            raise ValueError(f"mode={mode!r} needs a rir_bank with at least one impulse response")
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def draw(self, n_samples: int, rng: np.random.Generator | None = None) -> ViewAug:
        """The random augmentation of one view of ``n_samples`` samples, per ``mode``, then its channel."""
        rng = self.rng if rng is None else rng
        aug = self._draw_mode(n_samples, rng)
        c = self.config  # no draws at p = 0: the random streams of runs without a channel are unchanged
        if c.eq > 0 and rng.random() < c.eq:
            aug.eq = (rng.normal(0.0, c.eq_db, EQ_COMPONENTS).tolist(), rng.uniform(0, 2 * np.pi, EQ_COMPONENTS).tolist())
        if c.bandlimit > 0 and rng.random() < c.bandlimit:
            aug.cutoff_hz = float(rng.uniform(*c.bandlimit_hz))
        return aug

    def _draw_mode(self, n_samples: int, rng: np.random.Generator) -> ViewAug:
        kind = self.mode
        if kind == "N|R":
            kind = "noise" if rng.random() < self.config.p_noise_given_NR else "reverb"
        if kind == "reverb":
            return ViewAug("reverb", rir_index=self.rir_bank.draw(rng))
        if kind == "none":
            return ViewAug()
        category = self.categories[min(int(np.searchsorted(self._cum_p, rng.random(), side="right")),
                                       len(self.categories) - 1)]
        lo, hi = self.config.babble_count if category == "babble" else (1, 1)
        count = int(rng.integers(lo, hi + 1))
        sources = self.noise_bank.sample_many(BANK_CATEGORY[category], count, n_samples, rng)
        snrs = rng.uniform(*self.config.snr_range(category), size=count).tolist()
        return ViewAug("noise", category, sources, snrs)

    def augment_views(self, views: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Augment views [B, V, T] on their own device; returns a new tensor of the same shape."""
        rng = self.rng if rng is None else rng
        B, V, T = views.shape
        if self.apply_to == "both":
            chosen = np.ones((B, V), bool)
        else:
            chosen = np.zeros((B, V), bool)
            chosen[np.arange(B), rng.integers(V, size=B) if self.apply_to == "one" else min(1, V - 1)] = True
        augs = [self.draw(T, rng) if c else ViewAug() for c in chosen.reshape(-1)]
        return self.apply(views.reshape(B * V, T), augs).reshape(B, V, T)

    def augment_waveform(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Augment one segment [T] on the CPU (for DataLoader workers, before batching)."""
        y = self.apply(torch.from_numpy(np.asarray(x, np.float32))[None], [self.draw(len(x), rng)])
        return y[0].numpy()

    def apply(self, x: torch.Tensor, augs: list[ViewAug]) -> torch.Tensor:
        """Apply drawn augmentations to x [N, T] (one per row), batched by kind."""
        out = x.clone()
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        noisy = [i for i, a in enumerate(augs) if a.kind == "noise"]
        if noisy:
            # Several sources (babble) are combined on the CPU into one noise and an effective
            # SNR, so one [N, T] tensor goes to the device.
            pairs = [_one_noise(augs[i]) for i in noisy]
            noise = torch.from_numpy(np.stack([p[0] for p in pairs])).to(x.device, work)
            snr = torch.tensor([p[1] for p in pairs], dtype=work, device=x.device)
            idx = torch.tensor(noisy, device=x.device)
            out[idx] = mix_at_snr(x[idx].to(work), noise, snr).to(x.dtype)
        reverbed = [i for i, a in enumerate(augs) if a.kind == "reverb"]
        if reverbed:
            n = fft_length(x.shape[-1], self.rir_bank.max_len)
            H = self.rir_bank.spectra(n, work, x.device)[[augs[i].rir_index for i in reverbed]]
            idx = torch.tensor(reverbed, device=x.device)
            out[idx] = convolve_spectrum(x[idx].to(work), H, n).to(x.dtype)
        coloured = [i for i, a in enumerate(augs) if a.eq is not None]
        if coloured:
            idx = torch.tensor(coloured, device=x.device)
            gains, phases = (torch.tensor([augs[i].eq[k] for i in coloured], dtype=torch.float64) for k in (0, 1))
            out[idx] = equalise(out[idx], gains, phases, SAMPLE_RATE)
        limited = [i for i, a in enumerate(augs) if a.cutoff_hz is not None]
        if limited:
            idx = torch.tensor(limited, device=x.device)
            cutoff = torch.tensor([augs[i].cutoff_hz for i in limited], dtype=torch.float64)
            out[idx] = low_pass(out[idx], cutoff, SAMPLE_RATE)
        return out


def _one_noise(a: ViewAug) -> tuple[np.ndarray, float]:
    return (a.sources[0], a.snr_db[0]) if len(a.sources) == 1 else combine_sources(a.sources, a.snr_db)
