"""`sslspeaker shard`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import time

    from ..config import ManifestRef
    from ..data.shards import write_shards
    from ..training.build import load_entries

    t0 = time.perf_counter()
    entries = load_entries(ManifestRef(args.manifest, args.root))
    summary = write_shards(entries, args.out, shard_size=args.shard_size, threads=args.threads,
                           progress=not getattr(args, "quiet", False))
    print(f"{summary['utterances']} utterances -> {len(summary['shards'])} shards in {args.out} "
          f"({len(summary['skipped'])} files left out, listed in shards.json) in {time.perf_counter() - t0:.1f} s")
    print(f"train on them with data.train=[{args.out}] data.format=shards")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("shard", help="pack a manifest's audio into tar shards for sequential reading",
                       description="Writes shard-NNNNNN.tar files (WebDataset layout: KEY.EXT audio bytes and "
                                   "KEY.json per utterance), index.csv and shards.json into OUT; unreadable, empty, "
                                   "silent or non-finite files are left out and listed. Train with "
                                   "data.format=shards data.train=[OUT].")
    p.add_argument("manifest", help="a manifest CSV (path,speaker,duration) or a folder of audio")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the shards")
    p.add_argument("--root", default=None, help="folder the manifest's relative paths are relative to "
                                                "(default: the manifest's folder)")
    p.add_argument("--shard-size", type=int, default=1000, help="utterances per shard (default 1000)")
    p.add_argument("--threads", type=int, default=4, help="threads checking files (default 4)")
    p.set_defaults(func=run)
