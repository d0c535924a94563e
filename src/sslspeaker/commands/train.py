"""`sslspeaker train`."""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config

    if args.list:
        from ..methods import list_methods
        from ..models import list_encoders

        print("methods:")
        for name, doc in list_methods().items():
            print(f"  {name:14s} {doc}")
        print("encoders: " + ", ".join(list_encoders()))
        return 0
    if not args.config or not args.out:
        print("error: train needs CONFIG and --out RUN_DIR (or --list)", file=sys.stderr)
        return 2
    from ..training.trainer import TrainingStopped, train

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


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an encoder from a recipe: train CONFIG [key=value ...] --out RUN_DIR")
    p.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32")
    p.add_argument("--out", help="run folder (checkpoints, logs, resolved config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after M minutes")
    p.add_argument("--list", action="store_true", help="list the registered methods and encoders")
    p.set_defaults(func=run)
