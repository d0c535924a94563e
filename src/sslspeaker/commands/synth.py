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
    p = sub.add_parser("synth", help="generate a synthetic multi-speaker corpus (tests, demo)",
                       description="Synthetic speech: each speaker index is a distinct voice (vocal tract, pitch, "
                                   "channel), the same for a given --seed; writes FLAC files and a manifest.")
    p.add_argument("out", help="output folder: one sub-folder per speaker and manifest.csv")
    p.add_argument("--speakers", type=int, default=40, help="number of speakers (default 40)")
    p.add_argument("--utterances", type=int, default=10, help="utterances per speaker (default 10)")
    p.add_argument("--first-speaker", type=int, default=0,
                   help="index of the first speaker (default 0): corpora from disjoint index ranges share no voice")
    p.add_argument("--seed", type=int, default=0, help="voice population and utterance seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.set_defaults(func=run)
