"""`sslspeaker pipeline`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline

    report = run_pipeline(args.recipe, args.overrides, args.out, max_minutes=args.max_minutes, resume=args.resume)
    for name, entry in report["stages"].items():
        dev = entry.get("dev") or {}
        figures = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in dev.items())
        print(f"{name:14s} {entry['kind']:12s} {entry['minutes']:7.1f} min  {figures}")
    print(f"{report['minutes']:.1f} min in all; model: {report['final']['model']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="unlabelled speech -> self-supervised model -> pseudo-label rounds -> "
                                        "back-end -> calibrated verifier, as a recipe's stages")
    p.add_argument("recipe", help="a pipeline recipe file, or a packaged recipe's name (e.g. pipeline_speechocean762; "
                                  "train --list names them)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe's top-level keys "
                                                "(e.g. budget_minutes=60 device=cpu)")
    p.add_argument("--out", required=True, help="output folder: one sub-folder per stage, report.json, "
                                                "model.safetensors")
    p.add_argument("--max-minutes", type=float, default=None, help="the time budget (overrides budget_minutes)")
    p.add_argument("--resume", action="store_true", help="continue a run in --out: done stages are kept, an "
                                                         "interrupted training stage resumes from its checkpoint")
    p.set_defaults(func=run)
