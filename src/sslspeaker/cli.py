"""The ``sslspeaker`` command: one sub-command per pipeline job."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare
    from .data.validate import Policy

    policy = Policy(min_duration=args.min_duration, sample_rate=args.sample_rate,
                    allow_upsample=args.allow_upsample, check_content=not args.header_only)
    try:
        summary = prepare(args.kind, args.root, args.out, policy=policy, workers=args.workers,
                          progress=not args.quiet, trials=args.trials, category=args.category,
                          no_speaker=args.no_speaker)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['kept']} of {summary['files']} files kept ({summary['rejected']} rejected, "
          f"{summary['speakers']} speakers, {summary['hours']} h) in {summary['seconds']} s "
          f"[{summary['files_per_second']} files/s] -> {args.out}/manifest.csv")
    if summary["rejected"]:
        print(f"rejected files and reasons: {args.out}/report.csv")
    for name, t in summary["trials"].items():
        print(f"trials {args.out}/{name}: {t['kept']} of {t['trials']} (use --audio-root {summary['trials_audio_root']})")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .data.synth import generate_corpus

    manifest = generate_corpus(args.out, n_speakers=args.speakers, utterances_per_speaker=args.utterances,
                               seed=args.seed, workers=args.workers, first_speaker=args.first_speaker)
    print(f"synthetic corpus: {args.speakers} speakers x {args.utterances} utterances -> {manifest}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    if args.list:
        from .methods import list_methods
        from .models import list_encoders

        print("methods:")
        for name, doc in list_methods().items():
            print(f"  {name:14s} {doc}")
        print("encoders: " + ", ".join(list_encoders()))
        return 0
    if not args.config or not args.out:
        print("error: train needs CONFIG and --out RUN_DIR (or --list)", file=sys.stderr)
        return 2
    from .training.trainer import TrainingStopped, train

    try:
        cfg = load_config(args.config, args.overrides)
        result = train(cfg, args.out, resume=args.resume, max_minutes=args.max_minutes)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="sslspeaker", description=__doc__)
    p.add_argument("--version", action="version", version=f"sslspeaker {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    kinds = ("folder", "voxceleb1", "voxceleb2", "librispeech", "speechocean762", "musan", "rirs")
    q = sub.add_parser("prepare", help="build a manifest (and trial lists) from a corpus folder")
    q.add_argument("kind", choices=kinds)
    q.add_argument("root", help="the corpus folder")
    q.add_argument("--out", required=True, help="output folder for manifest.csv, report.csv, trial lists")
    q.add_argument("--trials", nargs="*", help="trial list files (VoxCeleb1 O/E/H)")
    q.add_argument("--category", help="category column for noise sets built with 'folder' (noise/music/speech)")
    q.add_argument("--no-speaker", action="store_true", help="'folder': leave the speaker column empty")
    q.add_argument("--min-duration", type=float, default=0.5, help="reject files shorter than this (s)")
    q.add_argument("--sample-rate", type=int, default=16000, help="working sample rate")
    q.add_argument("--allow-upsample", action="store_true", help="keep files below the working rate")
    q.add_argument("--header-only", action="store_true", help="skip the truncation/silence reads")
    q.add_argument("--workers", type=int, default=None, help="parallel probes (default 4 x cores)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_prepare)

    t = sub.add_parser("train", help="train an encoder from a recipe: train CONFIG [key=value ...] --out RUN_DIR")
    t.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32")
    t.add_argument("--out", help="run folder (checkpoints, logs, resolved config)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after M minutes")
    t.add_argument("--list", action="store_true", help="list the registered methods and encoders")
    t.set_defaults(func=_train)

    s = sub.add_parser("synth", help="generate a synthetic multi-speaker corpus (tests, demo)")
    s.add_argument("out")
    s.add_argument("--speakers", type=int, default=40)
    s.add_argument("--utterances", type=int, default=10)
    s.add_argument("--first-speaker", type=int, default=0, help="speaker index offset (disjoint sets)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
