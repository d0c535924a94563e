"""`sslspeaker synth`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..data.synth import generate_corpus

    manifest = generate_corpus(args.out, n_speakers=args.speakers, utterances_per_speaker=args.utterances,
                               seed=args.seed, workers=args.workers, first_speaker=args.first_speaker)
    print(f"synthetic corpus: {args.speakers} speakers x {args.utterances} utterances -> {manifest}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic multi-speaker corpus (tests, demo)")
    p.add_argument("out")
    p.add_argument("--speakers", type=int, default=40)
    p.add_argument("--utterances", type=int, default=10)
    p.add_argument("--first-speaker", type=int, default=0, help="speaker index offset (disjoint sets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=run)
