"""`sslspeaker plot`: the DET curves of several results files on one pair of axes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_system(path: str, name: str | None) -> dict:
    """``{"name", "p_fa", "p_miss", "eer"}`` of an ``evaluate`` results file (``ValueError`` naming it otherwise)."""
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a results JSON file ({exc.msg})") from None
    det = results.get("det") if isinstance(results, dict) else None
    if not isinstance(det, dict) or not det.get("p_fa") or len(det["p_fa"]) != len(det.get("p_miss") or []):
        raise ValueError(f"{path}: holds no DET curve (results written by sslspeaker evaluate keep one under "
                         "'det'; re-run evaluate to get it)")
    eer = results.get("eer")
    return {"name": name or results.get("system") or Path(path).stem, "p_fa": det["p_fa"], "p_miss": det["p_miss"],
            "eer": eer / 100.0 if isinstance(eer, (int, float)) else None}


def run(args: argparse.Namespace) -> int:
    from ..evaluation.plots import check_format, plot_det_overlay

    check_format(args.out)
    if args.label and len(args.label) != len(args.results):
        raise ValueError(f"--label: give one per results file ({len(args.results)}), got {len(args.label)}")
    labels = args.label or [None] * len(args.results)
    systems = [read_system(path, name) for path, name in zip(args.results, labels)]
    out = plot_det_overlay(systems, args.out, title=args.title)
    print(f"DET curves of {len(systems)} systems -> {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="DET curves of several evaluate results files on one figure (PNG, PDF, SVG)",
                       description="Overlay the DET curves that sslspeaker evaluate stores in its results JSON; each "
                                   "curve is named by --label, else by the results' system name.")
    p.add_argument("results", nargs="+", help="results JSON files written by sslspeaker evaluate")
    p.add_argument("--out", required=True, help="figure to write: .png, .pdf or .svg (by the suffix)")
    p.add_argument("--label", action="append", help="legend name of each results file, in order (repeat once "
                                                    "per file; default: the system name in each file)")
    p.add_argument("--title", default=None, help="figure title (default: 'DET curves')")
    p.set_defaults(func=run)
