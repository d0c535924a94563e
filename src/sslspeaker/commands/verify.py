"""`sslspeaker verify`."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..inference.model import SpeakerEncoder

    model = SpeakerEncoder.load(args.model, args.device)
    threshold = args.threshold if args.threshold is not None else model.threshold
    if threshold is None:
        raise ValueError(f"{model.source} stores no decision threshold; pass --threshold T "
                         "(or export the model with --trials FILE --audio-root DIR to store its dev EER threshold)")
    score, same = model.verify(args.a, args.b, threshold)
    decision = "same speaker" if same else "different speakers"
    source = "--threshold" if args.threshold is not None else (model.threshold_source or "model threshold")
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "score": score, "threshold": threshold,
                          "threshold_source": source, "same_speaker": same}))
    else:
        print(f"score {score:.4f}  threshold {threshold:.4f} ({source})  ->  {decision}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="are two recordings the same speaker? (cosine score vs threshold)")
    p.add_argument("a", help="first audio file")
    p.add_argument("b", help="second audio file")
    p.add_argument("--model", help="a .safetensors model, a .pt checkpoint or a training run folder "
                                   "(default: the model bundled with the package)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    p.set_defaults(func=run)
