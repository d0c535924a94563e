"""Files against tar shards on a synthetic corpus of many small files (issue 22, item 3).

``python bench/data_shards.py --files 100000 --work DIR`` writes DIR/corpus (``--files`` FLAC clips of
``--seconds`` s: tones in noise, content irrelevant to a data-path figure), then times

1. ``sslspeaker prepare``'s scan and probe of the folder (a manifest), and ``sslspeaker shard`` of it;
2. two-view 1-s training examples per second through the trainer's own datasets and a DataLoader
   with 1, 4 and 8 workers, no model: random partial reads of the files (``data.format=files``,
   no memory cache) against the shard stream (``data.format=shards``, 8 streams);
3. the same with every file open slowed by ``--latency-ms`` (network storage's time to first
   byte; a sleep before each ``soundfile`` open of a file, and before each shard open).

Every figure is this machine's; 8 workers on 2 cores measure latency hiding, not decoding speed.
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sslspeaker.data import shards as shard_mod
from sslspeaker.data.dataset import EpochBatchSampler, SegmentDataset, collate
from sslspeaker.data.prepare import prepare
from sslspeaker.data.manifest import read_manifest

from _record import record, table

SR = 16000


def write_corpus(root: Path, n: int, seconds: float) -> None:
    """``n`` FLAC clips in folders of 1,000 (skipped when the corpus is already there)."""
    if (root / "done").is_file():
        return
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for i in range(n):
        x = 0.2 * np.sin(2 * np.pi * (100 + i % 400) * t) + 0.02 * rng.standard_normal(t.size)
        path = root / f"spk{i // 1000:04d}" / f"u{i:07d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x.astype(np.float32), SR, subtype="PCM_16")
    (root / "done").write_text("ok\n")


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def examples_per_s(loader, batches: int) -> float:
    """Steady rate: the batches the workers had prefetched at start-up are drawn before timing starts."""
    it = iter(loader)
    for _ in range(max(1, loader.num_workers) * (loader.prefetch_factor or 1) + 1):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += next(it)["wave"].shape[0]
    return n / (time.perf_counter() - t0)


def file_loader(entries, workers: int, batch: int):
    ds = SegmentDataset(entries, crop_seconds=1.0, n_views=2, seed=0, cache_bytes=0.0)
    sampler = EpochBatchSampler(len(ds), batch, seed=0)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                       prefetch_factor=4 if workers else None)


def shard_loader(shard_dir: Path, workers: int, batch: int):
    ds = shard_mod.ShardDataset(shard_mod.open_shards([shard_dir]), crop_seconds=1.0, n_views=2, seed=0)
    stream = ds.stream(batch, seed=0, rank=0, world_size=1, streams=8, buffer=500)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       prefetch_factor=4 if workers else None)


def slowed(latency_s: float):
    """Patch file opens to wait ``latency_s`` first (inherited by forked loader workers); returns the undo."""
    sf_open, tar_open = sf.SoundFile.__init__, tarfile.open

    def sf_init(self, file, *a, **kw):
        if isinstance(file, str):
            time.sleep(latency_s)
        sf_open(self, file, *a, **kw)

    def tar(*a, **kw):
        time.sleep(latency_s)
        return tar_open(*a, **kw)

    sf.SoundFile.__init__, shard_mod.tarfile.open = sf_init, tar
    return lambda: (setattr(sf.SoundFile, "__init__", sf_open), setattr(shard_mod.tarfile, "open", tar_open))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--work", default="/tmp/sslspeaker_shards_bench")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    _, t_write = timed(write_corpus, work / "corpus", args.files, args.seconds)
    manifest_dir = work / "prepared"
    if not (manifest_dir / "manifest.csv").is_file():
        _, t_prepare = timed(prepare, "folder", work / "corpus", manifest_dir, progress=False)
    else:
        t_prepare = float("nan")
    entries = read_manifest(manifest_dir / "manifest.csv")
    shard_dir = work / "shards"
    if not (shard_dir / shard_mod.SUMMARY).is_file():
        _, t_shard = timed(shard_mod.write_shards, entries, shard_dir, args.shard_size, 4, False)
    else:
        t_shard = float("nan")
    rows = []
    for latency in (0.0, args.latency_ms / 1000):
        undo = slowed(latency) if latency else (lambda: None)
        try:
            for workers in (1, 4, 8):
                row = {"reads": f"+{latency * 1000:g} ms per open" if latency else "local disk", "workers": workers}
                row["files ex/s"] = round(examples_per_s(file_loader(entries, workers, args.batch_size), args.batches), 1)
                row["shards ex/s"] = round(examples_per_s(shard_loader(shard_dir, workers, args.batch_size), args.batches), 1)
                row["shards / files"] = f"{row['shards ex/s'] / row['files ex/s']:.2f}x"
                print(row, flush=True)
                rows.append(row)
        finally:
            undo()
    size = sum(p.stat().st_size for p in shard_dir.glob("*.tar")) / 1e9
    body = (f"{len(entries):,} FLAC clips of {args.seconds:g} s (16 kHz, 16-bit) in folders of 1,000; shards of "
            f"{args.shard_size:,} ({size:.2f} GB). Corpus written in {t_write:.0f} s; `prepare` (scan + probe) "
            f"{t_prepare:.0f} s; `shard` (probe + pack) {t_shard:.0f} s (nan: reused from an earlier run). "
            f"Two-view 1-s examples per second, batch {args.batch_size}, {args.batches} batches timed after those the workers prefetched at start-up, "
            "no model.\n\n" + table(rows, ["reads", "workers", "files ex/s", "shards ex/s", "shards / files"]))
    print(body)
    if not args.no_record:
        record("data_shards", "Data for millions of files: files against tar shards (issue 22)", body)


if __name__ == "__main__":
    main()
