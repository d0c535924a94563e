"""Tar shards for corpora of millions of files (``sslspeaker shard``, ``data.format: shards``).

Random partial reads of a million small files starve a GPU on network storage; reading a few
hundred large files from start to end does not. A shard folder holds:

- ``shard-NNNNNN.tar``: ``shard_size`` utterances each, as WebDataset lays them out: per
  utterance ``KEY.EXT`` (the original encoded bytes, not re-encoded) and ``KEY.json``
  (``speaker``, ``duration``, ``source``), KEY the utterance's 9-digit index. Any tar reader or
  the ``webdataset`` library reads them;
- ``index.csv`` (``key,shard,speaker,duration,source``) and ``shards.json`` (the shards, their
  counts, the skipped files): what a trainer needs without opening a shard.

Files are checked as ``prepare`` checks them (``validate.probe``: unreadable, empty, silent,
non-finite); bad ones are reported in ``shards.json`` and left out.

Reading (``ShardStream``) is sequential within a shard. Each epoch the shards are shuffled with
the seed and dealt to ``world_size x streams`` slots (rank r owns slots r*S .. r*S+S-1); a slot
reads its shards in order through a shuffle buffer of ``buffer`` utterances and emits batches.
Every slot emits the same number of batches per epoch (what its fewest-utterance deal allows),
so ranks stay in step; the utterances past that, different ones each epoch, wait for the next.
A rank's batch ``b`` comes from slot ``b mod S``, so the batch order does not depend on how many
loader workers share the slots (``data.workers`` must divide ``data.streams``). Which utterance
a slot emits when is a function of the index alone (the buffer is simulated on indices), and
each item's crops come from the (seed, epoch, index) RNG, so a run resumes at an exact batch
position: the slot skips what it already emitted without decoding it.

Memory: each slot holds up to ``buffer`` items (the crops of ``n_views`` views, float32).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import Stopped
from ..fileio import atomic_path, atomic_write_text
from .audio import SAMPLE_RATE, AudioError, decode_audio
from .dataset import SegmentDataset, collate
from .manifest import Entry
from .validate import Policy, probe

log = logging.getLogger(__name__)

INDEX, SUMMARY = "index.csv", "shards.json"
FORMAT = "sslspeaker-shards/1"
INDEX_COLUMNS = ("key", "shard", "speaker", "duration", "source")


# ---- writing ---------------------------------------------------------------------------------
def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def write_shards(entries: Sequence[Entry], out: str | os.PathLike, shard_size: int = 1000, threads: int = 4,
                 progress: bool = True) -> dict:
    """Shard ``entries`` into ``out`` (a new or empty folder); returns the ``shards.json`` summary."""
    out = Path(out)
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size}: expected >= 1")
    if (out / SUMMARY).exists() or any(out.glob("shard-*.tar")):
        raise FileExistsError(f"{out}: already holds shards (choose a new folder)")
    out.mkdir(parents=True, exist_ok=True)
    kept, skipped, rows = [], [], []
    with ThreadPoolExecutor(threads) as pool:  # probing reads headers and windows: I/O, outside the GIL
        checks = pool.map(lambda e: probe(e.path, Policy(min_duration=0.0)), entries)
        for e, p in tqdm(zip(entries, checks), total=len(entries), disable=not progress, desc="checking",
                         unit="file", mininterval=2.0):
            (skipped.append({"path": e.path, "reason": p.reason}) if p.reason else kept.append((e, p.duration)))
    shards = []
    for s, start in enumerate(tqdm(range(0, len(kept), shard_size), disable=not progress, desc="sharding",
                                   unit="shard", mininterval=2.0)):
        part = kept[start:start + shard_size]
        keys = [f"{start + j:09d}" for j in range(len(part))]
        write_tar(out / shard_name(s), keys, part)
        shards.append({"name": shard_name(s), "count": len(part)})
        rows += [{"key": k, "shard": shard_name(s), "speaker": e.speaker or "", "duration": round(d, 4),
                  "source": e.path} for k, (e, d) in zip(keys, part)]
    with atomic_path(out / INDEX) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = {"format": FORMAT, "utterances": len(kept), "shard_size": shard_size, "shards": shards,
               "skipped": skipped}
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1) + "\n")  # last: a folder with it is complete
    for bad in skipped:
        log.warning("left out %s: %s", bad["path"], bad["reason"])
    return summary


def write_tar(path: Path, keys: list[str], part: list[tuple[Entry, float]]) -> None:
    """One shard, written atomically: per utterance ``KEY.EXT`` (its bytes) and ``KEY.json``."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, (e, duration) in zip(keys, part):
            ext = Path(e.path).suffix.lower().lstrip(".") or "audio"
            add_member(tar, f"{key}.{ext}", Path(e.path).read_bytes())
            meta = {"speaker": e.speaker, "duration": round(duration, 4), "source": e.path}
            add_member(tar, f"{key}.json", json.dumps(meta).encode())


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


# ---- the index -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSet:
    """The shards of one or more shard folders, in order, with the utterances of each (global indices)."""

    paths: list[str]  # shard files
    members: list[np.ndarray]  # per shard: the global indices of its utterances, in tar order
    keys: list[list[str]]  # per shard: its utterances' tar keys, in the same order
    entries: list[Entry]  # per utterance: path "SHARD#KEY", speaker, duration

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.members])


def open_shards(folders: Sequence[str | os.PathLike]) -> ShardSet:
    """The shard set of ``folders`` (each a shard folder or its ``shards.json``); ``ValueError`` naming a
    folder that is not one, or a shard file that is missing."""
    paths, members, keys, entries = [], [], [], []
    for folder in folders:
        folder = Path(folder)
        folder = folder.parent if folder.name == SUMMARY else folder
        if not (folder / SUMMARY).is_file():
            raise ValueError(f"{folder}: not a shard folder (no {SUMMARY}; make one with `sslspeaker shard`)")
        summary = json.loads((folder / SUMMARY).read_text())
        if summary.get("format") != FORMAT:
            raise ValueError(f"{folder / SUMMARY}: format {summary.get('format')!r}, expected {FORMAT!r}")
        by_shard: dict[str, list[int]] = {s["name"]: [] for s in summary["shards"]}
        keys_of: dict[str, list[str]] = {s["name"]: [] for s in summary["shards"]}
        with open(folder / INDEX, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                by_shard[row["shard"]].append(len(entries))
                keys_of[row["shard"]].append(row["key"])
                entries.append(Entry(f"{folder / row['shard']}#{row['key']}", row["speaker"] or None,
                                     float(row["duration"])))
        for s in summary["shards"]:
            path = folder / s["name"]
            if not path.is_file():
                raise ValueError(f"{path}: shard listed in {folder / SUMMARY} is missing")
            if len(by_shard[s["name"]]) != s["count"]:
                raise ValueError(f"{folder / INDEX}: {len(by_shard[s['name']])} rows for {s['name']}, "
                                 f"{SUMMARY} says {s['count']}")
            paths.append(str(path))
            members.append(np.array(by_shard[s["name"]], dtype=np.int64))
            keys.append(keys_of[s["name"]])
    if not entries:
        raise ValueError(f"{', '.join(map(str, folders))}: no utterances in the shards")
    return ShardSet(paths, members, keys, entries)


# ---- the plan: which slot emits which utterance when -----------------------------------------
def deal_shards(n_shards: int, slots: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Per slot, its shards this epoch: a seeded permutation of the shards dealt round-robin."""
    order = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n_shards)
    return [order[s::slots] for s in range(slots)]


def batches_per_slot(sizes: np.ndarray, slots: int, batch_size: int) -> int:
    """Batches every slot can emit in any epoch: the fewest utterances a deal can give a slot
    (its ``n_shards // slots`` smallest shards), in whole batches."""
    k = len(sizes) // slots
    return int(np.sort(sizes)[:k].sum()) // batch_size if k else 0


def emission_order(arrivals: np.ndarray, buffer: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(emitted utterances in order, the arrival count at which each is emitted) of a shuffle buffer of
    ``buffer`` items: each arrival enters; once the buffer is full, a uniformly drawn item leaves."""
    pending: list[int] = []
    out, at = [], []
    for i, u in enumerate(arrivals.tolist()):
        pending.append(u)
        if len(pending) > buffer:
            j = int(rng.integers(len(pending)))
            pending[j], pending[-1] = pending[-1], pending[j]
            out.append(pending.pop())
            at.append(i)
    rng.shuffle(pending)
    out += pending
    at += [len(arrivals) - 1] * len(pending)
    return np.array(out, dtype=np.int64), np.array(at, dtype=np.int64)


# ---- reading ---------------------------------------------------------------------------------
def read_members(path: str, wanted: set[int], keys: list[str]) -> Iterator[tuple[int, bytes | None]]:
    """(position in ``keys``, audio bytes or None when not wanted) of each utterance of one shard, in order."""
    by_key = {k: pos for pos, k in enumerate(keys)}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                pos = by_key.get(key)
                if pos is None or ext == "json":
                    continue
                yield pos, (tar.extractfile(m).read() if pos in wanted else None)
    except (tarfile.TarError, OSError) as exc:
        raise Stopped(f"{path}: unreadable shard ({exc.__class__.__name__}: {exc})") from None


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's batches of a ``ShardSet`` (see the module docstring); ``set_position`` like the file sampler."""

    def __init__(self, shards: ShardSet, dataset: SegmentDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, streams: int = 4, buffer: int = 500):
        self.shards, self.dataset, self.batch_size, self.seed = shards, dataset, batch_size, seed
        self.rank, self.world, self.streams, self.buffer = rank, world_size, streams, buffer
        slots = world_size * streams
        if len(shards.paths) < slots:
            raise ValueError(f"{len(shards.paths)} shards cannot feed {world_size} rank(s) x {streams} data.streams: "
                             "shard with a smaller --shard-size or lower data.streams")
        self.per_slot = batches_per_slot(shards.sizes, slots, batch_size)
        if self.per_slot == 0:
            raise ValueError(f"shards of {int(shards.sizes.min())}+ utterances dealt to {slots} slots cannot fill "
                             f"one batch of {batch_size}")
        self.epoch, self.start_batch = 0, 0

    def batches_per_epoch(self) -> int:
        return self.per_slot * self.streams

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def slot_plan(self, stream: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(shard ids in reading order, emitted utterances, arrival count of each emission) of one stream."""
        mine = deal_shards(len(self.shards.paths), self.world * self.streams, self.seed, self.epoch)
        shard_ids = mine[self.rank * self.streams + stream].tolist()
        arrivals = np.concatenate([self.shards.members[s] for s in shard_ids])
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, stream, 0xB0F])
        out, at = emission_order(arrivals, self.buffer, rng)
        n = self.per_slot * self.batch_size
        return shard_ids, out[:n], at[:n]

    def stream_batches(self, stream: int, first: int) -> Iterator[dict]:
        """Batches ``first``, ``first`` + 1, ... of one stream this epoch (what came before is not decoded)."""
        shard_ids, out, at = self.slot_plan(stream)
        start = first * self.batch_size
        if start >= len(out):
            return
        wanted_all = set(out[start:].tolist())
        ready: dict[int, dict] = {}
        emit = start
        arrival = -1
        for s in shard_ids:
            members = self.shards.members[s]
            wanted = {pos for pos, u in enumerate(members.tolist()) if u in wanted_all}
            for pos, data in read_members(self.shards.paths[s], wanted, self.shards.keys[s]):
                arrival += 1
                u = int(members[pos])
                if data is not None:
                    ready[u] = self._item(u, data)
                # out holds whole batches and ``at`` never falls: a batch is ready when its last item is
                while emit < len(out) and at[emit + self.batch_size - 1] <= arrival:
                    yield collate([ready.pop(int(v)) for v in out[emit:emit + self.batch_size]])
                    emit += self.batch_size
                if emit >= len(out):
                    return

    def _item(self, index: int, data: bytes) -> dict:
        where = self.shards.entries[index].path
        try:
            x = decode_audio(data, where, SAMPLE_RATE)
        except AudioError as exc:  # checked when sharded: a member that fails now is damaged storage
            raise Stopped(f"{exc} (the shard was checked when written: the file is damaged)") from None
        return self.dataset.item_from_wave(self.epoch, index, x)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.streams % workers:
            raise ValueError(f"data.workers={workers} must divide data.streams={self.streams}")
        first = self.start_batch
        # batch b of the rank is batch b // S of stream b % S; the loader takes the workers' outputs in turn,
        # so this worker serves b = first + worker (mod workers): every batch of a stream goes to one worker
        mine = range(first + worker, self.batches_per_epoch(), workers)
        streams: dict[int, Iterator[dict]] = {}
        for b in mine:
            s = b % self.streams
            if s not in streams:
                streams[s] = self.stream_batches(s, b // self.streams)
            yield next(streams[s])


class ShardDataset(SegmentDataset):
    """A ``SegmentDataset`` over a shard set: the same items (crops, augmentation, labels) from shard members."""

    def __init__(self, shards: ShardSet, **kwargs):
        super().__init__(shards.entries, cache_bytes=0.0, **kwargs)
        self.shards = shards

    def __getitem__(self, key):
        raise TypeError("a shard dataset is read as a stream (ShardDataset.stream), not by index")

    def stream(self, batch_size: int, seed: int, rank: int, world_size: int, streams: int, buffer: int) -> ShardStream:
        return ShardStream(self.shards, self, batch_size, seed, rank, world_size, streams, buffer)


__all__ = ["write_shards", "open_shards", "ShardSet", "ShardStream", "ShardDataset",
           "deal_shards", "batches_per_slot", "emission_order"]
