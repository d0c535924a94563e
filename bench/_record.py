"""Write a benchmark's results into BENCHMARKS.md with commit, machine, date and command.

Each benchmark owns one section between ``<!-- bench:NAME -->`` markers; re-running the
benchmark replaces its section, so every number in the file came from a script run.

The scripts run as ``python bench/NAME.py``: Python puts the script's folder, ``bench/``, first
on ``sys.path``, so they import this module (and each other) by name.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS")
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        threads = threads or str(torch.get_num_threads())
    except Exception:
        gpu = "?"
    return f"{cpu}, {os.cpu_count()} cores ({threads} torch threads), {gpu}, Python {platform.python_version()}"


def cpu_kind() -> str:
    """The CPU model and its vector ISA: training speed (and so a fixed-budget EER) depends on both."""
    name = machine().split(",")[0]
    try:
        import torch

        from sslspeaker.training.trainer import cpu_has_fast_bf16
    except ImportError:
        return name
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}{', bf16' if cpu_has_fast_bf16() else ''})"


def hardware_kind(device) -> str:
    """What a fixed-budget run ran on: the CPU kind, or the GPU's name for a CUDA device."""
    import torch

    return f"GPU: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else cpu_kind()


def commit() -> str:
    if os.environ.get("SSLSPEAKER_BENCH_COMMIT"):  # a copy of the tree without git (a lent GPU machine)
        return os.environ["SSLSPEAKER_BENCH_COMMIT"]
    try:
        rev = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        # benchmark outputs (this file's own writes) are not code: they do not make a run "+local changes"
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                         ":!BENCHMARKS.md", ":!bench/results"], cwd=ROOT, text=True)
        return rev + ("+local changes" if dirty.strip() else "")
    except Exception:
        return "unknown"


def table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in columns) + " |")  # e.g. N|R
    return "\n".join(out)


def record(name: str, title: str, body: str, command: str | None = None, code: str | None = None) -> None:
    """Replace (or append) section ``name`` of BENCHMARKS.md; ``code``: the commit a long run imported at its
    start (default: HEAD now)."""
    command = command or "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- bench:{name} -->\n## {title}\n\n{body.strip()}\n\n"
               f"- command: `{command}`\n- commit: {code or commit()}\n- machine: {machine()}\n- date: {stamp}\n"
               f"<!-- /bench:{name} -->")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
    print(section)


HEADER = """# Benchmarks

Every figure here was written by a script in `bench/` (see each section's command); re-running
a script replaces its section. Nothing is typed in by hand.
"""
