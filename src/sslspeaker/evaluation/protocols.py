"""Scoring protocols: how an utterance becomes embeddings and a trial becomes a score.

Every protocol turns an utterance into ``n`` L2-normalised embeddings [n, D] (n = 1 for the
full utterance, 10 for the segment protocols) and scores a trial as the mean of the n×n
matrix of cosine similarities between the two utterances' embeddings. Because the mean of
the matrix equals the dot product of the two mean embeddings,

    mean_ij <a_i, b_j> = <mean_i a_i, mean_j b_j>,

scoring only needs each utterance's (unnormalised) mean embedding: see ``utterance_vector``.

``full``
    One embedding of the whole utterance; score = cosine.
``mocovox10x10``
    MoCoVox's evaluation: 10 segments at uniformly random positions of each utterance,
    score = mean of the 10×10 cosine scores (Lee, Koh & Yoon 2020, "Momentum Contrast
    Speaker Representation Learning", which names MoCoVox; Xia et al. 2021). Segment length:
    4 s, **our choice**, not a figure from those papers: the 4-s crops of Chung et al. 2020's
    10-crop protocol that these works build on. It is the ``segment_seconds`` parameter and
    is recorded in every result. Positions come from a generator seeded with
    ``(seed, sha256(seed_key))``, where ``seed_key`` is the path as written in the trial list
    (or a cohort file's path relative to its manifest), so a trial list gives the same
    segments on any machine, in any run, whatever the global RNG state.
``clova10crop``
    clovaai/voxceleb_trainer's evaluation: 10 crops of ``eval_frames`` = 400 frames,
    i.e. 400·160 + 240 = 64 240 samples (4.015 s), at evenly spaced starts
    ``linspace(0, len − crop, 10)`` (truncated to integers); files not longer than a crop are
    repeated end to end (their ``np.pad(..., 'wrap')``); score = mean of the 10×10 cosine
    matrix of the normalised crop embeddings.

Files shorter than a segment are tiled (repeated) to the segment length, as in training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio
from ..data.crops import evenly_spaced_starts, random_starts, tile_to

CLOVA_HOP, CLOVA_EXTRA = 160, 240  # voxceleb_trainer: max_audio = max_frames * 160 + 240


@dataclass(frozen=True)
class Protocol:
    """Base class: subclasses set ``name``/``params`` and implement ``load``."""

    name: str = "full"
    params: dict = field(default_factory=dict)
    seeded: bool = False  # segment positions depend on the seed key (then it is part of cache keys)

    @property
    def n(self) -> int:
        return 1

    def load(self, path: str, seed_key: str | None = None) -> np.ndarray:
        """The waveform segments [n, T] (16 kHz, float32) to embed for this utterance."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"name": self.name, "params": dict(self.params), "embeddings_per_utterance": self.n,
                "score": "mean of the n x n cosine similarities" if self.n > 1 else "cosine similarity"}

    @property
    def tag(self) -> str:
        """A short stable hash of the name and parameters (cache file names)."""
        blob = json.dumps({"name": self.name, "params": self.params}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class FullUtterance(Protocol):
    name: str = "full"
    params: dict = field(default_factory=lambda: {"max_seconds": 0.0})

    def load(self, path: str, seed_key: str | None = None) -> np.ndarray:
        max_s = float(self.params.get("max_seconds") or 0.0)
        return read_audio(path, 0, int(max_s * SAMPLE_RATE) if max_s else -1)[None]


def _segments(path: str, crop: int, n: int, starts_for) -> np.ndarray:
    """``n`` segments [n, crop] at ``starts_for(length)`` (called once); short files are tiled to a crop."""
    info = audio_info(path)
    x = None
    if info.sample_rate == SAMPLE_RATE and info.frames > 0:
        length = info.frames  # no need to decode the file to know its length
    else:
        x = read_audio(path)
        length = len(x)
    if length == 0:
        raise AudioError(path, "no samples")
    if length <= crop:
        x = read_audio(path) if x is None else x
        return np.stack([tile_to(x, crop)] * n)
    starts = starts_for(length)
    if x is None and n * crop < length:  # long file: partial reads of just the segments
        segs = [read_audio(path, int(s), crop) for s in starts]
    else:
        x = read_audio(path) if x is None else x
        segs = [x[int(s):int(s) + crop] for s in starts]
    if any(len(seg) == 0 for seg in segs):
        raise AudioError(path, "shorter than its header says (truncated?)")
    return np.stack([tile_to(seg, crop) for seg in segs])


def _seed_from_key(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


@dataclass(frozen=True)
class RandomSegments(Protocol):
    name: str = "mocovox10x10"
    params: dict = field(default_factory=lambda: {"n_segments": 10, "segment_seconds": 4.0, "seed": 0})
    seeded: bool = True

    @property
    def n(self) -> int:
        return int(self.params["n_segments"])

    @property
    def crop(self) -> int:
        return int(round(float(self.params["segment_seconds"]) * SAMPLE_RATE))

    def rng(self, key: str) -> np.random.Generator:
        return np.random.default_rng([int(self.params.get("seed", 0)), _seed_from_key(key)])

    def load(self, path: str, seed_key: str | None = None) -> np.ndarray:
        rng = self.rng(seed_key if seed_key is not None else str(path))
        return _segments(path, self.crop, self.n, lambda length: random_starts(length, self.crop, self.n, rng))


@dataclass(frozen=True)
class EvenCrops(Protocol):
    name: str = "clova10crop"
    params: dict = field(default_factory=lambda: {"n_crops": 10, "eval_frames": 400})

    @property
    def n(self) -> int:
        return int(self.params["n_crops"])

    @property
    def crop(self) -> int:
        return int(self.params["eval_frames"]) * CLOVA_HOP + CLOVA_EXTRA

    def load(self, path: str, seed_key: str | None = None) -> np.ndarray:
        return _segments(path, self.crop, self.n, lambda length: evenly_spaced_starts(length, self.crop, self.n))


PROTOCOLS: dict[str, type[Protocol]] = {"full": FullUtterance, "mocovox10x10": RandomSegments,
                                        "clova10crop": EvenCrops}


def get_protocol(name: str | Protocol, **params: Any) -> Protocol:
    """A protocol by name; ``params`` override its defaults (unknown ones are an error)."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    cls = PROTOCOLS[name]
    defaults = cls().params
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"protocol {name}: unknown parameter(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(defaults)})")
    return cls(params={**defaults, **params})


def utterance_vector(embeddings: np.ndarray) -> np.ndarray:
    """[n, D] normalised embeddings -> the mean [D] whose dot products are the protocol's scores."""
    return np.asarray(embeddings, dtype=np.float64).reshape(-1, np.shape(embeddings)[-1]).mean(0)


def score_embeddings(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the n×m cosine matrix of two utterances' normalised embeddings [n, D], [m, D]."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float((a @ b.T).mean())


__all__ = ["Protocol", "FullUtterance", "RandomSegments", "EvenCrops", "PROTOCOLS", "get_protocol",
           "utterance_vector", "score_embeddings"]
