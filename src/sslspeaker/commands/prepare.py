"""`sslspeaker prepare`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare
    from ..data.validate import Policy

    policy = Policy(min_duration=args.min_duration, sample_rate=args.sample_rate,
                    allow_upsample=args.allow_upsample, check_content=not args.header_only)
    summary = prepare(args.kind, args.root, args.out, policy=policy, workers=args.workers, progress=not args.quiet,
                      trials=args.trials, category=args.category, no_speaker=args.no_speaker)
    skipped = f", {summary['skipped']} skipped by the scan" if summary["skipped"] else ""
    print(f"{summary['kept']} of {summary['files']} files kept ({summary['rejected']} rejected{skipped}, "
          f"{summary['speakers']} speakers, {summary['hours']} h) in {summary['seconds']} s "
          f"[{summary['files_per_second']} files/s] -> {args.out}/manifest.csv")
    if summary["rejected"] or summary["skipped"]:
        print(f"rejected and skipped files with reasons: {args.out}/report.csv")
    for name, t in summary["trials"].items():
        print(f"trials {args.out}/{name}: {t['kept']} of {t['trials']} (use --audio-root {summary['trials_audio_root']})")
    return 0


def add_parser(sub) -> None:
    kinds = ("folder", "voxceleb1", "voxceleb2", "librispeech", "speechocean762", "musan", "rirs")
    p = sub.add_parser("prepare", help="build a manifest (and trial lists) from a corpus folder")
    p.add_argument("kind", choices=kinds, help="corpus layout: folder (speaker = sub-folder) or a named corpus "
                                               "(musan, rirs: noise and impulse-response sets)")
    p.add_argument("root", help="the corpus folder")
    p.add_argument("--out", required=True, help="output folder for manifest.csv, report.csv, trial lists")
    p.add_argument("--trials", nargs="*", help="trial list files (VoxCeleb1 O/E/H)")
    p.add_argument("--category", help="category column for noise sets built with 'folder' (noise/music/speech)")
    p.add_argument("--no-speaker", action="store_true", help="'folder': leave the speaker column empty")
    p.add_argument("--min-duration", type=float, default=0.5, help="reject files shorter than this (s)")
    p.add_argument("--sample-rate", type=int, default=16000, help="working sample rate")
    p.add_argument("--allow-upsample", action="store_true", help="keep files below the working rate")
    p.add_argument("--header-only", action="store_true", help="skip the truncation/silence reads")
    p.add_argument("--workers", type=int, default=None, help="parallel probes (default 4 x cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
