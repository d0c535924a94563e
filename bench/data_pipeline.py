"""Data-pipeline throughput: 2-s two-view training examples per second from FLAC on disk.

Reads the shared speechocean762 training pool through the trainer's own dataset and
DataLoader (random partial-read crops, optional N|R augmentation in the workers), with no
model, so the figure is what the data path can feed a trainer.
"""

import argparse
import time
from pathlib import Path

import torch

from sslspeaker.config import load_config
from sslspeaker.data.dataset import EpochBatchSampler, SegmentDataset, collate
from sslspeaker.training.build import build_augmenter, load_all, worker_augment

from _record import record, table

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "moco_speechocean762.yaml"


def throughput(ds, batch: int, workers: int, batches: int) -> float:
    sampler = EpochBatchSampler(len(ds), batch, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not steady state
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["wave"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(RECIPE, ["data.train=[{manifest: ${SSLSPEAKER_DATA}/speechocean762/protocol/train.csv, "
                               "root: ${SSLSPEAKER_DATA}/speechocean762}]"])
    entries = load_all(cfg.data.train)
    augment = worker_augment(build_augmenter(cfg, seed=0))
    rows = []
    for source, cache_bytes in (("FLAC on disk", 0.0), ("decoded, in memory", cfg.data.cache_gb * 1e9)):
        for aug_name, aug in [("none", None), (f"{cfg.augment.mode} on both views".replace("|", "\\|"), augment)]:
            ds = SegmentDataset(entries, crop_seconds=2.0, n_views=2, seed=0, augment=aug, cache_bytes=cache_bytes)
            ds.cache.fill(progress=False)  # before workers fork: they share it
            for workers in (0, 1, 2):
                rate = throughput(ds, args.batch_size, workers, args.batches)
                rows.append({"audio": source, "augmentation": aug_name, "workers": workers,
                             "examples/s": round(rate, 1)})
                print(rows[-1], flush=True)
    body = table(rows, ["audio", "augmentation", "workers", "examples/s"])
    body += (f"\n\n2-s two-view examples (2 x 32,000 samples) per second, batch {args.batch_size}, "
             f"{args.batches} batches after the first, from `speechocean762/protocol/train.csv` (FLAC). "
             "Augmentation: the development recipe's noise set (shared noises; babble of 3-7 talkers "
             "from the pool) and RIRs, applied per item as in a data worker. workers=0 reads in the main process. "
             "In memory: the training set decoded once (`data.cache_gb`), crops cut from it.")
    if not args.no_record:
        record("data_pipeline", "Data-pipeline throughput (2 CPU cores)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
