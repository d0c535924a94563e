"""`sslspeaker verify`."""

from __future__ import annotations

import argparse
import json
import math

NO_THRESHOLD = ("stores no decision threshold; pass --threshold T (or export the model with --trials FILE "
                "--audio-root DIR to store its dev EER threshold)")


def decision_line(score: float, threshold: float, source: str, same: bool, calibrated: bool) -> str:
    """``llr 3.21  threshold 4.60 (Bayes, p_target 0.01)  ->  same speaker`` (``score 0.7123  ...`` uncalibrated)."""
    decision = "same speaker" if same else "different speakers"
    if calibrated:
        return f"llr {score:.2f}  threshold {threshold:.2f} ({source})  ->  {decision}"
    return f"score {score:.4f}  threshold {threshold:.4f} ({source})  ->  {decision}"


def _check_sides(args: argparse.Namespace) -> None:
    """Two recordings A B, or ``--enroll FILE... --test FILE``; ``ValueError`` naming the options otherwise."""
    if args.enroll or args.test:
        if args.a is not None or not (args.enroll and args.test):
            raise ValueError("give two recordings A B, or --enroll FILE [FILE ...] --test FILE (not both)")
    elif args.b is None:
        raise ValueError("give two recordings A B (or --enroll FILE [FILE ...] --test FILE)")


def run(args: argparse.Namespace) -> int:
    from ..inference.model import SpeakerEncoder

    _check_sides(args)
    model = SpeakerEncoder.load(args.model, args.device, vad=not args.no_vad)
    if args.prior is not None and not model.calibrated:
        raise ValueError(f"--prior: {model.source} has no calibrated back-end, so its scores are not "
                         "log-likelihood ratios; use --threshold")
    if args.threshold is not None and args.prior is not None:
        raise ValueError("give --threshold or --prior, not both")
    if args.prior is not None and not 0.0 < args.prior < 1.0:
        raise ValueError(f"--prior must be a probability in (0, 1), got {args.prior}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold must be a finite number, got {args.threshold}")
    if args.threshold is None and args.prior is None and model.threshold is None:
        raise ValueError(f"{model.source} {NO_THRESHOLD}")
    threshold, source = model.decision_threshold(args.threshold, args.prior)
    source = "--threshold" if args.threshold is not None else source
    if args.enroll:
        score = model.score_embeddings(model.enroll(args.enroll), model.embed(args.test))
        same, sides = bool(score >= threshold), {"enroll": args.enroll, "test": args.test}
    else:
        (score, same), sides = model.verify(args.a, args.b, threshold), {"a": args.a, "b": args.b}
    if args.json:
        record = {**sides, "score": score, "threshold": threshold, "threshold_source": source,
                  "same_speaker": same, "backend": model.backend.name if model.backend else "cosine"}
        if model.calibrated:
            record.update(llr=score, prior=args.prior if args.prior is not None else model.prior)
        print(json.dumps(record))
    else:
        print(decision_line(score, threshold, source, same, model.calibrated))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="are two recordings the same speaker? (the model's back-end or cosine score "
                                      "vs a threshold)")
    p.add_argument("a", nargs="?", help="first audio file")
    p.add_argument("b", nargs="?", help="second audio file")
    p.add_argument("--enroll", nargs="+", metavar="FILE",
                   help="enrol a speaker from these recordings (their embeddings' mean, length-normalised) ...")
    p.add_argument("--test", metavar="FILE", help="... and score this recording against it (instead of A B)")
    p.add_argument("--model", help="a .safetensors model, a .pt checkpoint or a training run folder "
                                   "(default: the model bundled with the package)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--prior", type=float, default=None,
                   help="calibrated models: decide at this target prior (threshold = the Bayes threshold "
                        "log((1-P)/P) on the log-likelihood ratio; default: the model's stated prior)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    p.add_argument("--no-vad", action="store_true",  # issue 21 (speech activity)
                   help="embed every sample (default: only the speech regions, by frame energy)")
    p.set_defaults(func=run)
