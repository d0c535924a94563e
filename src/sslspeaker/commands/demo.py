"""`sslspeaker demo`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, data=args.data, minutes=args.minutes, seed=args.seed, overrides=args.overrides,
             progress=not args.quiet)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="train on synthetic (or your) speech for a few minutes and evaluate on unseen speakers",
        description="Self-supervised training (MoCo, no labels) and speaker-verification evaluation on held-out "
                    "speakers, untrained vs trained encoder, in about 10 minutes on 2 CPU cores. Without --data it "
                    "generates a synthetic multi-speaker corpus. Settings: the packaged recipe "
                    "sslspeaker/configs/demo.yaml, overridable with key=value.")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo recipe, e.g. demo.train_speakers=100 "
                                                "train.batch_size=32")
    p.add_argument("--data", default=None, help="a folder of speech, one sub-folder per speaker (searched "
                                                "recursively; a corpus root such as speechocean762/ works)")
    p.add_argument("--out", default="sslspeaker-demo", help="output folder (default: ./sslspeaker-demo)")
    p.add_argument("--minutes", type=float, default=None, help="training budget in minutes (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="corpus, trial list and training seed")
    p.add_argument("--quiet", action="store_true", help="no embedding progress bars")
    p.set_defaults(func=run)
