"""Checks that decide whether an audio file goes into a manifest, and why not.

A file is probed from its header plus three short partial reads (start, middle, end),
so a corpus of a million files is validated without decoding it whole: the end read
catches truncation, the three windows catch silence (a file silent in all three is
rejected; one that is silent only elsewhere is harmless to a crop-based trainer) and
non-finite samples (NaN or inf in any window). A probe reads parts only: a file that passes
can still hold NaN elsewhere, which the crop reader (``audio.read_audio``) refuses when a crop
reaches it, and the training dataset then skips and reports the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .audio import SAMPLE_RATE, AudioError, audio_info

SILENCE_PEAK = 1e-4  # about -80 dBFS: below any real recording's noise floor
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class Probe:
    """Outcome for one file: ``reason`` is None when the file is usable."""

    path: str
    duration: float = 0.0
    reason: str | None = None  # why it is rejected
    note: str | None = None  # kept, but altered when read (resampled, mixed down)


@dataclass(frozen=True)
class Policy:
    min_duration: float = 0.5
    sample_rate: int = SAMPLE_RATE
    allow_upsample: bool = False  # upsampling cannot restore the missing band
    check_content: bool = True  # partial reads for truncation, silence and non-finite samples

    def __post_init__(self):
        if not (isinstance(self.min_duration, (int, float)) and math.isfinite(self.min_duration)
                and self.min_duration >= 0):
            raise ValueError(f"min_duration must be a number of seconds >= 0, got {self.min_duration!r}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {self.sample_rate!r}")


def probe(path: str, policy: Policy = Policy()) -> Probe:
    """Validate one file against ``policy``; never raises for a bad file."""
    try:
        info = audio_info(path)
    except AudioError as exc:
        return Probe(path, reason=exc.reason)
    if info.frames <= 0:
        return Probe(path, reason="empty (no samples)")
    if info.sample_rate < policy.sample_rate and not policy.allow_upsample:
        return Probe(path, info.duration, reason=f"sample rate {info.sample_rate} Hz < {policy.sample_rate} Hz "
                     "(upsampling cannot restore the missing band; allow it with --allow-upsample)")
    if info.duration < policy.min_duration:
        return Probe(path, info.duration, reason=f"too short ({info.duration:.3f} s < {policy.min_duration} s)")
    notes = []
    if info.sample_rate != policy.sample_rate:
        notes.append(f"resampled {info.sample_rate}->{policy.sample_rate} Hz")
    if info.channels > 1:
        notes.append(f"mixed down from {info.channels} channels")
    if policy.check_content:
        reason = _check_content(path, info.frames, info.sample_rate)
        if reason:
            return Probe(path, info.duration, reason=reason)
    return Probe(path, info.duration, note="; ".join(notes) or None)


def _check_content(path: str, frames: int, sample_rate: int) -> str | None:
    win = min(frames, int(PROBE_SECONDS * sample_rate))
    starts = sorted({0, max(0, frames // 2 - win // 2), frames - win})
    peak = 0.0
    try:
        with sf.SoundFile(path) as f:
            for s in starts:
                f.seek(s)
                x = f.read(win, dtype="float32", always_2d=True)
                if len(x) < win:
                    return f"truncated (header says {frames} samples, data ends before {s + win})"
                if not np.isfinite(x).all():
                    return f"non-finite samples (NaN/inf in the window at sample {s})"
                peak = max(peak, float(np.abs(x).max()) if x.size else 0.0)
    except Exception as exc:
        return f"truncated or corrupt ({exc.__class__.__name__}: {str(exc).splitlines()[0][:100]})"
    if peak < SILENCE_PEAK:
        return f"silent (peak {peak:.1e} < {SILENCE_PEAK:.0e} in start/middle/end windows)"
    return None
