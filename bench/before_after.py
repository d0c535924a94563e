"""A refactor's before and after on the same CPU kind: training throughput and a fixed-budget dev row.

Runs ``bench/train_throughput.py`` (one setting, one data path) from a source tree given by
``--tree`` (a git worktree of the commit to measure: ``git worktree add /tmp/before REV``), with
that tree's ``src`` first on the import path, and keeps its rows under ``--label`` in
``bench/results/before_after.jsonl``. The section shows those rows beside the dev-protocol rows
named by ``--dev-rows`` (written by ``bench/dev_protocol.py --label RUN``).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from _record import ROOT, cpu_kind, record, table

RESULTS = ROOT / "bench" / "results" / "before_after.jsonl"
DEV = ROOT / "bench" / "results" / "dev_protocol.jsonl"


def tree_commit(tree: Path) -> str:
    rev = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=tree, text=True).strip()
    dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"],
                                    cwd=tree, text=True)
    return rev + ("+local changes" if dirty.strip() else "")


def throughput_rows(tree: Path, args) -> list[dict]:
    """Run the tree's own train_throughput.py; its printed row dicts."""
    cmd = [sys.executable, str(tree / "bench" / "train_throughput.py"), "--levers", args.lever, "--data-paths",
           args.data_path, "--rounds", str(args.rounds), "--steps", str(args.steps), "--no-record"]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run(cmd, cwd=tree, env=env, text=True, capture_output=True)
    if out.returncode:
        raise SystemExit(f"train_throughput.py in {tree} failed:\n{out.stderr[-2000:]}")
    return [ast.literal_eval(l) for l in out.stdout.splitlines() if l.startswith("{")]


def read(path: Path) -> list[dict]:
    return [json.loads(l) for l in open(path)] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--label", required=True, help="e.g. before / after")
    ap.add_argument("--tree", default=str(ROOT), help="source tree to measure (default: this checkout)")
    ap.add_argument("--lever", default="cl_bf16_compile", help="train_throughput.py lever (the best setting)")
    ap.add_argument("--data-path", default="main_batched")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dev-rows", default="", help="comma-separated dev_protocol run labels to show beside")
    ap.add_argument("--title", default="Architecture step (issue 17): before and after, same CPU kind")
    ap.add_argument("--render", action="store_true", help="only rewrite the section from stored rows")
    args = ap.parse_args()
    rows = read(RESULTS)
    if not args.render:
        tree = Path(args.tree).resolve()
        got = throughput_rows(tree, args)
        base = {"label": args.label, "commit": tree_commit(tree), "cpu": cpu_kind()}
        rows = [r for r in rows if r["label"] != args.label] + [{**base, **r} for r in got]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_section(rows, args)


def write_section(rows: list[dict], args) -> None:
    speed = [r for r in rows if "setting" in r]
    data = [r for r in rows if "data path" in r]
    body = table(speed, ["label", "setting", "examples/s", "GFLOP/s", "commit", "cpu"]) + "\n\n"
    body += table(data, ["label", "data path", "on the fly, examples/s", "pre-computed, examples/s",
                         "ratio (median of rounds)", "commit", "cpu"]) + "\n\n"
    wanted = [l for l in args.dev_rows.split(",") if l]
    dev = [r for r in read(DEV) if r["run"] in wanted]
    if dev:
        body += table(dev, ["run", "minutes", "steps", "epochs", "examples/s", "EER % (full)", "minDCF0.01 (full)",
                            "commit", "cpu"]) + "\n\n"
    body += (f"Throughput: `bench/train_throughput.py --levers {args.lever} --data-paths {args.data_path} --rounds "
             f"{args.rounds} --steps {args.steps}` run from each commit's own tree. Dev rows: "
             "`python bench/dev_protocol.py configs/moco_speechocean762.yaml --minutes 6 --label RUN --group "
             "screening` (a 6-minute budget, so start-up time counts).")
    record("before_after", args.title, body)


if __name__ == "__main__":
    main()
