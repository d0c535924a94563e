"""Training dataset and its resumable, shardable epoch sampler.

Each item's randomness (crop positions, augmentation) comes from an RNG keyed by
(seed, epoch, index), so an item is the same whichever worker or rank reads it and
whether or not the run was interrupted: resuming needs only (epoch, batch position).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import Stopped
from .audio import SAMPLE_RATE, AudioError
from .cache import UtteranceCache
from .crops import crops_of, read_crops
from .manifest import Entry

log = logging.getLogger(__name__)
MAX_BAD_IN_A_ROW = 20
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # [V, T] -> [V, T]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


class SegmentDataset(torch.utils.data.Dataset):
    """Yields ``n_views`` random crops of one utterance: ``{"wave": [V, T], "index", "label"}``,
    plus ``"local": [V_local, T_local]`` shorter crops for multi-crop methods.

    Indexed by ``(epoch, index)`` pairs (see ``EpochBatchSampler``). A file that is unreadable
    or holds NaN/inf samples in a crop it gives is reported once (``skipped_files``) and
    replaced by another utterance drawn from the same RNG, so a bad file never stops a run. With ``cache_bytes`` large enough for the whole set, decoded utterances
    stay in memory and crops are cut from them (the trainer fills the cache before data
    workers fork, so they share it copy-on-write).
    """

    def __init__(self, entries: Sequence[Entry], crop_seconds: float = 1.8, n_views: int = 2, seed: int = 0,
                 augment: Augment | None = None, with_labels: bool = False, sample_rate: int = SAMPLE_RATE,
                 local_crop_seconds: float = 0.0, n_local_views: int = 0, labelled_fraction: float = 1.0, cache_bytes: float = 0.0):
        if not entries:
            raise ValueError("empty training manifest")
        self.entries = list(entries)
        self.crop_frames = int(round(crop_seconds * sample_rate))
        self.n_views = n_views
        self.local_frames = int(round(local_crop_seconds * sample_rate))
        self.n_local = n_local_views if self.local_frames > 0 else 0
        self.seed = seed
        self.augment = augment
        self.sample_rate = sample_rate
        self.bad: dict[int, str] = {}  # index -> why its file was skipped
        self.cache = UtteranceCache(self.entries, cache_bytes, sample_rate)
        self.labels = None
        if with_labels:
            speakers = sorted({e.speaker for e in self.entries if e.speaker})
            if len(speakers) == 0:
                raise ValueError("with_labels needs a manifest with a speaker column")
            self.speaker_ids = {s: i for i, s in enumerate(speakers)}
            if labelled_fraction < 1.0:
                # semi-supervised: a seeded subset of speakers keeps its labels, the rest read -1
                keep = np.random.default_rng(seed).permutation(len(speakers))[:round(labelled_fraction * len(speakers))]
                kept = {speakers[i] for i in keep}
                self.speaker_ids = {s: (i if s in kept else -1) for s, i in self.speaker_ids.items()}
            self.labels = [self.speaker_ids.get(e.speaker, -1) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _crops(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        if self.cache.enabled:
            x = self.cache.get(index)
            views = crops_of(x, self.crop_frames, self.n_views, rng)
            return views, crops_of(x, self.local_frames, self.n_local, rng) if self.n_local else None
        e = self.entries[index]
        frames = int(e.duration * self.sample_rate)
        views = read_crops(e.path, frames, self.crop_frames, self.n_views, rng, self.sample_rate)
        local = read_crops(e.path, frames, self.local_frames, self.n_local, rng, self.sample_rate) if self.n_local else None
        return views, local

    def _usable_crops(self, index: int, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray | None]:
        """(index, views, local) of ``index`` or, when its file is unusable (unreadable, non-finite
        samples, empty), of another utterance drawn from ``rng``; each bad file is reported once."""
        for _ in range(MAX_BAD_IN_A_ROW):
            if index not in self.bad:
                try:
                    return (index, *self._crops(index, rng))
                except (AudioError, ValueError) as exc:
                    self.bad[index] = str(getattr(exc, "reason", exc))
                    log.warning("skipping unusable training file %s (%s)", self.entries[index].path, exc)
            index = int(rng.integers(len(self.entries)))
        path, reason = self.skipped_files()[-1]
        raise Stopped(f"{MAX_BAD_IN_A_ROW} unreadable files in a row: check the training manifest "
                           f"({len(self.bad)} skipped so far, e.g. {path}: {reason})")

    def skipped_files(self) -> list[tuple[str, str]]:
        """(path, reason) of every file this dataset object has skipped so far, in manifest order
        (each data-loader worker process holds its own copy)."""
        return [(self.entries[i].path, self.bad[i]) for i in sorted(self.bad)]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = item_rng(self.seed, epoch, index)
        index, views, local = self._usable_crops(index, rng)
        return self._item(index, views, local, rng)

    def item_from_wave(self, epoch: int, index: int, x: np.ndarray) -> dict:
        """The item of utterance ``index`` in ``epoch`` from its decoded audio ``x`` (a shard's member): the
        same draws as ``__getitem__`` with the utterance cached in memory."""
        rng = item_rng(self.seed, epoch, index)
        views = crops_of(x, self.crop_frames, self.n_views, rng)
        local = crops_of(x, self.local_frames, self.n_local, rng) if self.n_local else None
        return self._item(index, views, local, rng)

    def _item(self, index: int, views: np.ndarray, local: np.ndarray | None, rng: np.random.Generator) -> dict:
        if self.augment is not None:
            views = self.augment(views, rng)
            local = self.augment(local, rng) if local is not None else None
        item = {"wave": torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)), "index": index}
        if local is not None:
            item["local"] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32))
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` for one rank: a seeded permutation per epoch, sharded
    across ranks, drop-last, starting from a saved batch position when resuming."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{n} training utterances cannot fill one batch of {batch_size} x {world_size} ranks")

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.batches_per_epoch() * self.batch_size
        mine = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield [(self.epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]


def collate(items: list[dict]) -> dict:
    out = {"wave": torch.stack([it["wave"] for it in items]), "index": torch.tensor([it["index"] for it in items])}
    if "local" in items[0]:
        out["local"] = torch.stack([it["local"] for it in items])
    if "label" in items[0]:
        out["label"] = torch.tensor([it["label"] for it in items])
    return out
