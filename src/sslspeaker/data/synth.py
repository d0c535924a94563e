"""Synthetic speech: a fast source-filter generator of many distinct speakers.

Used by tests and by the demo, which must learn speaker identity from it on a laptop CPU, so
identity is spread over several physical knobs at once (pitch, vocal-tract length, per-formant
and per-vowel deviations, bandwidths, source tilt, open quotient, breathiness, jitter/shimmer,
nasality, high-frequency structure, sibilant shape, speaking rate) and every utterance gets its
own channel (gain, EQ, band limits, background noise at 20-40 dB SNR) and a slightly different
rendering of its voice. Utterance-level log-mel mean+std statistics separate speakers at about
20 % EER on 3-s clips (tests/test_synth.py): informative, far from perfect.

Signal model: a Rosenberg glottal-flow-derivative pulse train (with jitter, shimmer and
pulse-gated aspiration) plus white-noise sources, all amplitude-shaped per sample, then
filtered frame-wise in the STFT domain (32-ms frames, 8-ms hop) by spectral envelopes:
cascaded formants F1-F7, a piriform-fossa pole/zero pair, a nasal pole/zero pair and the source
tilt on the voiced path (minimum phase, so each pulse rings like a real vocal tract), a
band-pass on the frication path, and the utterance's channel on everything. In the STFT
domain the time-varying filters are a few batched FFTs, not per-sample recursions.

Determinism: a voice depends only on (seed, index) and an utterance only on (voice, seed);
``generate_corpus`` derives each utterance's seed from (seed, speaker, utterance) with
``numpy.random.SeedSequence`` spawn keys, so files do not depend on workers or order.

Speed, measured with ``taskset -c 0 python -m sslspeaker.data.synth 300 3`` on one core of a
shared, loaded 2-core machine: 300 3-s utterances in 7.6 s, ~40 utterances/s, ~120x real time.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.ndimage import convolve1d

from ..fileio import atomic_path
from .audio import SAMPLE_RATE
from .manifest import Entry, write_manifest

# Peterson & Barney (1952) adult-male vowel averages F1-F3 (Hz), F4 approximate; i I E ae A O U u V 3r.
VOWELS = np.array([
    [270, 2290, 3010, 3500], [390, 1990, 2550, 3600], [530, 1840, 2480, 3600],
    [660, 1720, 2410, 3600], [730, 1090, 2440, 3500], [570, 840, 2410, 3400],
    [440, 1020, 2240, 3400], [300, 870, 2240, 3400], [640, 1190, 2390, 3500],
    [490, 1350, 1690, 3300],
], dtype=float)
BANDWIDTHS = np.array([60.0, 90.0, 130.0, 200.0, 300.0, 500.0, 700.0])  # F1-F7, Hz, before the voice's factor
NEUTRAL = (500, 1500, 2500, 3500)
# Formant loci during a constriction; smoothing towards/away from them makes the transitions.
LOCI = {"lab": (250, 900, 2200, 3300), "alv": (250, 1700, 2600, 3500),
        "pal": (250, 1900, 2500, 3500), "vel": (250, 2000, 2500, 3400),
        "l": (350, 1000, 2600, 3400), "r": (350, 1100, 1500, 3200),
        "w": (300, 700, 2200, 3300), "j": (280, 2200, 2900, 3500)}
# consonant -> (place, manner, voiced, frication centre Hz, frication bandwidth Hz, level)
CONSONANTS = {
    "p": ("lab", "stop", 0, 1200, 3000, 0.5), "b": ("lab", "stop", 1, 1200, 3000, 0.4),
    "t": ("alv", "stop", 0, 4500, 2500, 0.8), "d": ("alv", "stop", 1, 4500, 2500, 0.6),
    "k": ("vel", "stop", 0, 2300, 1200, 0.8), "g": ("vel", "stop", 1, 2300, 1200, 0.6),
    "f": ("lab", "fric", 0, 6000, 8000, 0.25), "v": ("lab", "fric", 1, 6000, 8000, 0.2),
    "s": ("alv", "fric", 0, 5500, 2500, 0.7), "z": ("alv", "fric", 1, 5500, 2500, 0.5),
    "S": ("pal", "fric", 0, 3000, 1500, 0.7), "Z": ("pal", "fric", 1, 3000, 1500, 0.5),
    "h": (None, "asp", 0, 0, 0, 0.4),
    "m": ("lab", "nasal", 1, 0.9, 0, 0.5), "n": ("alv", "nasal", 1, 1.5, 0, 0.5),
    "N": ("vel", "nasal", 1, 2.5, 0, 0.5),  # for nasals the 4th field scales the voice's nasal zero
    "l": ("l", "approx", 1, 0, 0, 0.7), "r": ("r", "approx", 1, 0, 0, 0.7),
    "w": ("w", "approx", 1, 0, 0, 0.7), "j": ("j", "approx", 1, 0, 0, 0.7),
}
_CONS = list(CONSONANTS)
# Onset consonant probabilities, sonorant-heavy: obstruents change the spectrum most from
# utterance to utterance, so fewer of them make the long-term spectrum speaker-informative.
_CONS_P = np.array([0.8, 0.6, 1.2, 0.8, 1.0, 0.6,  # p b t d k g
                    0.5, 0.4, 1.0, 0.4, 0.4, 0.1, 0.6,  # f v s z S Z h
                    1.6, 2.0, 0.6,  # m n N
                    1.4, 1.4, 0.8, 0.6])  # l r w j
_CONS_P /= _CONS_P.sum()
_CODAS = ["m", "n", "N", "l", "r", "s", "f", "z", "t", "k"]
# (F0 range Hz, vocal-tract factor range) per voice class; log-uniform/uniform within.
KINDS = {"male": ((85, 165), (0.82, 1.04)), "female": ((160, 265), (1.0, 1.2)),
         "child": ((230, 340), (1.15, 1.32))}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker. Formants of vowel v: VOWELS[v] * tract * formant_scale * vowel_shift[v]."""

    kind: str                # "male", "female" or "child"
    f0: float                # mean fundamental frequency, Hz
    f0_range: float          # intonation excursion factor (1 = typical)
    tract: float             # vocal-tract length factor applied to all formants
    formant_scale: tuple     # per-formant F1-F4 deviation from uniform scaling
    vowel_shift: tuple       # per-vowel F1-F4 factors: an idiolect/accent
    bandwidth: float         # formant bandwidth factor (lossy tracts are wider)
    tilt: float              # extra source spectral tilt, dB/octave
    open_quotient: float     # open fraction of the glottal cycle (pressed < 0.5 < breathy)
    rate: float              # speaking-rate factor (1 = ~4 syllables/s)
    jitter: float            # cycle-to-cycle F0 perturbation (fraction)
    shimmer: float           # cycle-to-cycle amplitude perturbation (fraction)
    breath: float            # aspiration noise level relative to the pulses
    nasality: float          # baseline velopharyngeal coupling 0..1
    nasal_zero: float        # nasal anti-resonance frequency, Hz
    f5: float                # fifth formant, Hz: set by the larynx tube, barely vowel-dependent
    fossa: float             # piriform-fossa anti-resonance, Hz: a vowel-independent notch
    sibilance: float         # sibilant (s, z, sh) spectral-peak factor: tongue/teeth shape


def make_voice(seed: int, index: int) -> Voice:
    """The ``index``-th voice of population ``seed`` (independent of every other index)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))
    kind = str(rng.choice(list(KINDS), p=[0.45, 0.45, 0.10]))
    (f_lo, f_hi), (t_lo, t_hi) = KINDS[kind]
    return Voice(
        kind=kind,
        f0=float(np.exp(rng.uniform(np.log(f_lo), np.log(f_hi)))),
        f0_range=float(rng.uniform(0.5, 1.6)),
        tract=(t := float(rng.uniform(t_lo, t_hi))),
        formant_scale=tuple(np.exp(rng.normal(0, 0.1, 4)).round(4).tolist()),
        vowel_shift=tuple(tuple(r) for r in np.exp(rng.normal(0, 0.08, (len(VOWELS), 4))).round(4).tolist()),
        bandwidth=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))),
        tilt=float(rng.uniform(-4.0, 3.0)),
        open_quotient=float(rng.uniform(0.35, 0.8)),
        rate=float(np.exp(rng.uniform(np.log(0.75), np.log(1.35)))),
        jitter=float(rng.uniform(0.002, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.15)),
        breath=float(np.exp(rng.uniform(np.log(0.03), np.log(0.6)))),
        nasality=float(rng.uniform(0.0, 0.5) ** 2),
        nasal_zero=float(rng.uniform(700, 1400)),
        f5=float(rng.uniform(4100, 5000) * np.sqrt(t)),
        fossa=float(rng.uniform(3600, 5200) * np.sqrt(t)),
        sibilance=float(rng.uniform(0.8, 1.2)),
    )


def _perturb(v: Voice, rng: np.random.Generator) -> Voice:
    """The same speaker on another day: small changes of pitch, rate, effort."""
    return replace(v, f0=v.f0 * np.exp(rng.normal(0, 0.04)), rate=v.rate * np.exp(rng.normal(0, 0.08)),
                   tract=v.tract * np.exp(rng.normal(0, 0.01)), tilt=v.tilt + rng.normal(0, 0.3),
                   breath=v.breath * np.exp(rng.normal(0, 0.2)))


def _segments(rng: np.random.Generator, v: Voice, duration: float) -> np.ndarray:
    """Phone-like segments, one row each: dur, F1-F4, voicing, aspiration, frication, fc, fb, nasal, zero."""
    scale = v.tract * np.asarray(v.formant_scale)
    vowels = VOWELS * scale * np.asarray(v.vowel_shift)
    rows: list[tuple] = []

    def add(dur, F, av=0.0, ah=0.0, af=0.0, fc=4000.0, fb=4000.0, nas=0.0, nz=None):
        rows.append((dur / v.rate, *F, av, ah, af, fc * v.tract, fb, nas, nz or v.nasal_zero))

    def consonant(c, nxt):
        place, manner, voiced, fc, fb, lvl = CONSONANTS[c]
        F = np.asarray(LOCI[place]) * scale if place else nxt
        if manner == "stop":
            add(rng.uniform(0.04, 0.08), F, av=0.08 * voiced)  # closure (voice bar if voiced)
            add(rng.uniform(0.008, 0.015), F, av=0.3 * voiced, af=lvl, fc=fc, fb=fb)  # burst
            if not voiced:
                add(rng.uniform(0.02, 0.05), nxt, ah=0.3)  # aspiration into the vowel
        elif manner == "fric":
            add(rng.uniform(0.07, 0.13), F, av=0.35 * voiced, af=lvl, fb=fb,
                fc=fc * (v.sibilance if c in "szSZ" else 1.0))
        elif manner == "asp":
            add(rng.uniform(0.05, 0.09), nxt, ah=lvl)
        elif manner == "nasal":
            add(rng.uniform(0.05, 0.08), F, av=lvl, nas=1.0, nz=fc * v.nasal_zero)
        else:
            add(rng.uniform(0.04, 0.07), F, av=lvl)

    add(rng.uniform(0.05, 0.3), NEUTRAL * scale)  # leading silence
    t = rows[0][0]
    while t < duration + 0.1:  # syllables (C)(C)V(C), sometimes followed by a pause
        start = len(rows)
        nxt = vowels[rng.integers(len(VOWELS))]
        for c in rng.choice(_CONS, size=rng.choice(3, p=[0.2, 0.65, 0.15]), p=_CONS_P):
            consonant(c, nxt)
        add(rng.uniform(0.09, 0.18) * (1.5 if rng.random() < 0.3 else 1.0), nxt, av=1.0)
        if rng.random() < 0.4:
            consonant(rng.choice(_CODAS), nxt)
        if rng.random() < 0.12:
            add(rng.uniform(0.1, 0.35), nxt)
        t += sum(r[0] for r in rows[start:])
    return np.array(rows)


def _logres(f: np.ndarray, F: np.ndarray, B: np.ndarray) -> np.ndarray:
    """log|H| of a second-order resonance at F with bandwidth B, 0 at DC (cascade convention)."""
    return np.log(F * F) - 0.5 * np.log((F * F - f * f) ** 2 + (B * f) ** 2)


def _minphase(logmag: np.ndarray, n_fft: int) -> np.ndarray:
    """Minimum-phase spectrum with the given log magnitude (folded real cepstrum)."""
    c = np.fft.irfft(logmag, n_fft, axis=-1)
    c[..., 1 : n_fft // 2] *= 2.0
    c[..., n_fft // 2 + 1 :] = 0.0
    return np.exp(np.fft.rfft(c, axis=-1))


def _stft(x: np.ndarray, n_fft: int, hop: int, win: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.fft.rfft(frames * win, axis=-1)


def _istft(X: np.ndarray, n_fft: int, hop: int, win: np.ndarray, length: int) -> np.ndarray:
    frames = np.fft.irfft(X, n_fft, axis=-1) * win
    out = np.zeros(length)
    per = n_fft // hop
    for k in range(per):  # frames k, k+per, ... tile the signal without overlap
        blk = frames[k::per].reshape(-1)[: length - k * hop]
        out[k * hop : k * hop + blk.size] += blk
    return out * (hop / n_fft * 2.0)  # periodic sqrt-Hann analysis*synthesis sums to n_fft/(2 hop)


@dataclass(frozen=True)
class _Grid:
    """The STFT grid of an ``n``-sample signal: 32-ms sqrt-Hann frames, 8-ms hop, ``n_fft`` of padding each side."""

    n: int
    sr: int
    n_fft: int
    hop: int
    win: np.ndarray

    def analyse(self, x: np.ndarray) -> np.ndarray:
        """Frames [T, n_fft // 2 + 1] of the padded signal."""
        return _stft(np.pad(x, (self.n_fft, self.n_fft + (-self.n) % self.hop)), self.n_fft, self.hop, self.win)

    def synthesise(self, X: np.ndarray) -> np.ndarray:
        """The ``n`` samples that frames ``X`` overlap-add to (padding removed)."""
        length = self.n + 2 * self.n_fft + (-self.n) % self.hop
        return _istft(X, self.n_fft, self.hop, self.win, length)[self.n_fft : self.n_fft + self.n]

    def times(self) -> np.ndarray:
        """Centre time (s) of each frame, clipped at 0."""
        T = (self.n + 2 * self.n_fft + (-self.n) % self.hop - self.n_fft) // self.hop + 1
        return np.clip((np.arange(T) * self.hop - self.n_fft / 2) / self.sr, 0, None)

    def freqs(self) -> np.ndarray:
        """Bin frequencies (Hz) as a row [1, n_fft // 2 + 1]."""
        return np.fft.rfftfreq(self.n_fft, 1 / self.sr)[None, :]


def _grid(n: int, sr: int) -> _Grid:
    n_fft = 1 << int(round(np.log2(0.032 * sr)))
    win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    return _Grid(n, sr, n_fft, n_fft // 4, win)


def _amplitude_tracks(seg: np.ndarray, ends: np.ndarray, dur: float, ts: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(1-ms grid, (voicing, aspiration, frication) per sample): segment levels ramped over 5 ms."""
    tc = np.arange(int(dur * 1000) + 2) / 1000.0
    ic = np.minimum(np.searchsorted(ends, tc, side="right"), len(seg) - 1)
    amps = convolve1d(seg[ic][:, 5:8], np.hanning(7)[1:-1] / 3.0, axis=0, mode="nearest")
    return tc, tuple(np.interp(ts, tc, amps[:, j]) for j in range(3))


def _f0_track(rng: np.random.Generator, v: Voice, tc: np.ndarray, ts: np.ndarray, dur: float) -> np.ndarray:
    """F0 per sample: declination + a few accents + optional question rise, in semitones around the voice's F0."""
    st = np.linspace(rng.uniform(0, 1.5), rng.uniform(-3, -1), tc.size)
    for c in rng.uniform(0, dur, max(1, rng.poisson(1.2 * dur))):
        st += rng.normal(2.5, 1.0) * np.exp(-0.5 * ((tc - c) / rng.uniform(0.08, 0.2)) ** 2)
    if rng.random() < 0.25:
        st += 4.0 * np.clip((tc - dur + 0.3) / 0.3, 0, 1)
    return np.interp(ts, tc, v.f0 * 2.0 ** (v.f0_range * st / 12.0))


def _glottal_pulses(rng: np.random.Generator, v: Voice, f0: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit-variance Rosenberg pulse train, open-phase mask): phase accumulation, jitter and shimmer per period."""
    phase = np.cumsum(f0 / sr)
    jit = 1.0 + v.jitter * rng.standard_normal(int(phase[-1]) + 2)
    phase = np.cumsum(f0 * jit[phase.astype(np.int64)] / sr) + rng.random()
    k = phase.astype(np.int64)
    frac = phase - k
    tp, tn = 0.6 * v.open_quotient, 0.4 * v.open_quotient  # opening / closing fractions
    pulse = np.where(frac < tp, np.sin(np.pi * frac / tp) / tp,
                     np.where(frac < tp + tn, -np.sin(0.5 * np.pi * (frac - tp) / tn) / tn, 0.0))
    pulse *= 1.0 + v.shimmer * rng.standard_normal(k[-1] + 2)[k - k[0]]
    pulse /= pulse.std() + 1e-9
    return pulse, frac < tp + tn


def _sources(rng: np.random.Generator, v: Voice, pulse: np.ndarray, open_phase: np.ndarray,
             amps: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(voiced-path source, frication source): pulses with pulse-gated breath, aspiration and frication noise."""
    av, ah, af = amps
    noise = rng.standard_normal((3, pulse.size))
    voiced = av * (pulse + v.breath * open_phase * noise[0]) + ah * noise[1]
    return voiced, af * noise[2]


def _tract(v: Voice, p: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Voiced-path log magnitude per frame: formants F1-F7, piriform fossa, nasal pole/zero and source tilt."""
    smooth = np.array([1, 2, 3, 2, 1]) / 9.0  # ~40-ms formant transitions
    F = np.exp(convolve1d(np.log(p[:, 1:5]), smooth, axis=0, mode="nearest"))
    nas = np.maximum(convolve1d(p[:, 10], smooth, mode="nearest"), v.nasality)[:, None]
    B = BANDWIDTHS * v.bandwidth
    Lv = sum(_logres(f, F[:, i : i + 1], B[i]) for i in range(4)) + _logres(f, v.f5, B[4])
    # F6, F7 stand in for the higher poles that a cascade would otherwise lack (-60 dB/oct above F5).
    Lv = Lv + _logres(f, v.f5 + 1100.0 * v.tract, B[5]) + _logres(f, v.f5 + 2300.0 * v.tract, B[6])
    Lv = Lv + _logres(f, 1.15 * v.fossa, 250.0) - _logres(f, v.fossa, 250.0)
    Lv = Lv + nas * (_logres(f, 270.0, 100.0) - _logres(f, p[:, 11:12], 150.0))
    return Lv + v.tilt / 8.686 * np.log2(np.maximum(f, 100.0) / 1000.0)


def _frication(p: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Frication-path log magnitude per frame: a band-pass at each segment's centre and bandwidth."""
    fc, fb = p[:, 8:9], p[:, 9:10]
    return 2.0 * np.log(fb * f / np.sqrt((fc * fc - f * f) ** 2 + (fb * f) ** 2) + 1e-4)


def _channel(rng: np.random.Generator, f: np.ndarray, sr: int) -> np.ndarray:
    """The recording's log magnitude: smooth random EQ over log frequency, random high-pass, optional low-pass."""
    u = np.log2(np.maximum(f, 50.0) / 50.0) / np.log2(sr / 100.0)
    Lc = sum(rng.normal(0, 1.5) / 8.686 * np.cos(j * np.pi * u + rng.uniform(0, 2 * np.pi)) for j in (1, 2, 3))
    Lc = Lc + rng.uniform(-0.75, 0.75) / 8.686 * np.log2(np.maximum(f, 50.0) / 1000.0)
    Lc = Lc - 0.5 * np.log1p((rng.uniform(40, 150) / np.maximum(f, 1.0)) ** 4)
    if rng.random() < 0.25:  # telephone-like or low-rate-codec band limit
        Lc = Lc - 0.5 * np.log1p((f / rng.uniform(3400, 0.47 * sr)) ** 8)
    return Lc


def _filter(grid: _Grid, voiced: np.ndarray, fric: np.ndarray, Lv: np.ndarray, Lf: np.ndarray,
            Lc: np.ndarray) -> np.ndarray:
    """Frames of both paths through their envelopes and the channel (the voiced path minimum phase)."""
    Y = grid.analyse(voiced) * _minphase(Lv + Lc, grid.n_fft)
    # Noise sources have random phase anyway, so zero-phase filtering is as good and cheaper.
    return Y + grid.analyse(fric) * np.exp(Lf + Lc)


def _add_background(rng: np.random.Generator, grid: _Grid, Y: np.ndarray, f: np.ndarray, Lc: np.ndarray) -> np.ndarray:
    """``Y`` plus tilted background noise through the channel, at a random 20-40 dB SNR."""
    Ln = rng.uniform(-6, 0) / 8.686 * np.log2(np.maximum(f, 50.0) / 1000.0) + Lc
    N = grid.analyse(rng.standard_normal(grid.n)) * np.exp(Ln)
    snr = 10 ** (rng.uniform(20, 40) / 10)
    en = np.sum(np.abs(N) ** 2)
    return Y + N * np.sqrt((np.sum(np.abs(Y) ** 2) or en) / (snr * en))  # all-silent clip: noise alone


def synthesize(voice: Voice, duration: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One utterance of ``voice``: float32 mono, exactly round(duration*sample_rate) samples, peak <= 1."""
    n = int(round(duration * sample_rate))
    if n <= 0:
        return np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)  # every stage draws from it in this order: the utterance is a function of seed
    v = _perturb(voice, rng)
    dur, ts = n / sample_rate, np.arange(n) / sample_rate
    seg = _segments(rng, v, dur)
    ends = np.cumsum(seg[:, 0])
    tc, amps = _amplitude_tracks(seg, ends, dur, ts)
    f0 = _f0_track(rng, v, tc, ts, dur)
    voiced, fric = _sources(rng, v, *_glottal_pulses(rng, v, f0, sample_rate), amps)
    grid = _grid(n, sample_rate)
    p = seg[np.minimum(np.searchsorted(ends, grid.times(), side="right"), len(seg) - 1)]  # each frame's segment
    f = grid.freqs()
    Lc = _channel(rng, f, sample_rate)
    Y = _add_background(rng, grid, _filter(grid, voiced, fric, _tract(v, p, f), _frication(p, f), Lc), f, Lc)
    y = grid.synthesise(Y)
    gain = 10 ** (rng.uniform(-14, -1) / 20)
    return (y * (gain / (np.abs(y).max() + 1e-12))).astype(np.float32)


def _render(task: tuple) -> Entry:
    """Write one corpus file; pure function of its task so any worker gives the same bytes."""
    out_dir, prefix, spk, utt, seed, lo, hi, sr = task
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, spk, utt)))
    duration = round(float(rng.uniform(lo, hi)), 2)
    y = synthesize(make_voice(seed, spk), duration, int(rng.integers(2**63)), sr)
    sid = f"{prefix}{spk:04d}"
    path = Path(out_dir) / sid / f"{sid}_{utt:03d}.flac"
    with atomic_path(path, ".flac") as tmp:
        sf.write(str(tmp), y, sr, subtype="PCM_16", format="FLAC")
    return Entry(path=str(path), speaker=sid, duration=y.size / sr)


def _check_counts(least: int, **counts: int) -> None:
    """Raise ``ValueError`` naming the first count that is not an integer of at least ``least``."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")


def generate_corpus(
    out_dir: str | os.PathLike,
    n_speakers: int = 40,
    utterances_per_speaker: int = 10,
    seed: int = 0,
    min_duration: float = 2.0,
    max_duration: float = 5.0,
    sample_rate: int = SAMPLE_RATE,
    workers: int = 1,
    speaker_prefix: str = "spk",
    first_speaker: int = 0,
) -> Path:
    """Write ``out_dir/<spk>/<spk>_<utt>.flac`` (PCM_16) and ``out_dir/manifest.csv``; return the manifest.

    Speakers are ``first_speaker .. first_speaker+n_speakers-1`` of population ``seed`` (ids
    ``<prefix><index:04d>``), so disjoint train/test speaker sets come from one seed. Counts
    below 1 (a negative ``first_speaker``) are a ``ValueError`` naming the argument.
    """
    _check_counts(1, n_speakers=n_speakers, utterances_per_speaker=utterances_per_speaker, workers=workers)
    _check_counts(0, first_speaker=first_speaker)
    if not 0 < min_duration <= max_duration:
        raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}")
    out_dir = Path(out_dir)
    tasks = [(str(out_dir), speaker_prefix, s, u, seed, min_duration, max_duration, sample_rate)
             for s in range(first_speaker, first_speaker + n_speakers) for u in range(utterances_per_speaker)]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            entries = list(pool.map(_render, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    else:
        entries = [_render(t) for t in tasks]
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, entries)
    return manifest


if __name__ == "__main__":  # speed check: python -m sslspeaker.data.synth [count] [seconds]
    import sys
    import time

    count, secs = (int(sys.argv[1]) if len(sys.argv) > 1 else 300), (float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)
    voices = [make_voice(0, i) for i in range(20)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(count):
        synthesize(voices[i % 20], secs, seed=i)
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{count} x {secs:g} s: wall {el:.2f} s ({count / el:.1f} utt/s, {count * secs / el:.0f}x real time), "
          f"cpu {cpu:.2f} s ({count * secs / cpu:.0f}x real time)")
