"""Faults (issue #18) end to end: each case runs ``python -m sslspeaker.cli ...`` as a subprocess on
tiny synthetic data made in a temporary folder, and the "Faults" table of BENCHMARKS.md shows
what happened (exit code and the command's one-line message) against the expected outcome.

Usage: ``python bench/faults.py [--keep DIR]``. About 2-3 minutes on a loaded 2-core CPU: the
training runs are a few steps of a small TDNN.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from _record import ROOT, record, table

TINY = ["model.encoder=tdnn", "model.options={channels: 16, embed_dim: 16, stats_channels: 24}",
        "method.options={queue_size: 8}", "data.crop_seconds=0.5", "data.workers=0", "train.batch_size=4",
        "train.epochs=1", "train.threads=1", "train.log_every=1", "train.checkpoint_every=2", "train.device=cpu"]


@dataclass
class Case:
    """A command line, what it should do, and an optional check of what it left behind."""

    name: str
    argv: list[str]
    expect: str  # the expected outcome in words
    rc: tuple[int, ...]  # the exit codes that count as a pass
    says: str = ""  # text the message must contain ("" = anything)
    check: Callable[[], bool] | None = None  # what must hold afterwards (files, values)
    before: Callable[[], None] | None = None
    background: list[str] | None = None  # a command started first and killed after the case
    extra_env: dict = field(default_factory=dict)


# ---- data ---------------------------------------------------------------------------------
def write_wave(path: Path, x: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), 16000, subtype="FLOAT")
    return str(path)


def make_data(root: Path) -> dict:
    """A small synthetic corpus, NaN and silent files, manifests and trial lists."""
    sys.path.insert(0, str(ROOT / "src"))
    from sslspeaker.data.manifest import Entry, read_manifest, write_manifest
    from sslspeaker.data.synth import generate_corpus

    manifest = generate_corpus(root / "corpus", n_speakers=4, utterances_per_speaker=3, seed=1, min_duration=1.0,
                               max_duration=1.5)
    good = read_manifest(manifest)
    tone = 0.1 * np.sin(np.arange(16000) * 0.07)
    some_nan = tone.copy()
    some_nan[4000:4100] = np.nan
    d = {"manifest": str(manifest), "a": good[0].path, "b": good[3].path,
         "some_nan": write_wave(root / "bad" / "some_nan.wav", some_nan),
         "all_nan": write_wave(root / "bad" / "all_nan.wav", np.full(16000, np.nan)),
         "silent1": write_wave(root / "silent" / "s1.wav", np.zeros(16000)),
         "silent2": write_wave(root / "silent" / "s2.wav", np.zeros(16000))}
    write_manifest(root / "mixed.csv", [*good, Entry(d["some_nan"], "spk9999", 1.0)])
    write_manifest(root / "all_nan.csv", [Entry(write_wave(root / "nan" / f"n{i}.wav", np.full(16000, np.nan)),
                                                None, 1.0) for i in range(8)])
    write_manifest(root / "missing.csv", [Entry(str(root / "gone" / f"g{i}.wav"), None, 1.0) for i in range(20)])
    (root / "bad_trials.txt").write_text(f"1 {good[0].path} {root / 'nowhere.wav'}\n")
    (root / "trials.txt").write_text(f"1 {good[0].path} {good[1].path}\n0 {good[0].path} {good[3].path}\n")
    (root / "recipe.yaml").write_text("train: {seed: 5}\n")
    prep = root / "prep_in"
    for key in ("some_nan", "all_nan"):
        write_wave(prep / "spk1" / f"{key}.wav", np.asarray(sf.read(d[key])[0]))
    write_wave(prep / "spk1" / "ok.wav", np.asarray(sf.read(good[0].path)[0]))
    return d


# ---- helpers ------------------------------------------------------------------------------
def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sslspeaker.cli", *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def message(stderr: str, stdout: str) -> str:
    """The command's one-line message: its error line, a traceback's last line, else the first output line."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith(("error:", "stopped:"))), None)
    if said is None and any(line.startswith("Traceback") for line in lines):
        said = f"traceback: {lines[-1]}"
    out = [line.strip() for line in stdout.splitlines() if line.strip()]
    return (said or (out or lines or [""])[0])[:240]


def checkpoint_clean(run: Path) -> bool:
    """The run's checkpoint exists and holds no NaN/inf tensor."""
    from sslspeaker.runs import load_checkpoint
    from sslspeaker.training.checkpoint import nonfinite_tensors

    path = run / "checkpoints" / "last.pt"
    return path.is_file() and not list(nonfinite_tensors(load_checkpoint(path)))


def no_dirty_checkpoint(run: Path) -> bool:
    path = run / "checkpoints" / "last.pt"
    return not path.exists() or checkpoint_clean(run)


def step_of(run: Path) -> int:
    from sslspeaker.runs import load_checkpoint

    return int(load_checkpoint(run / "checkpoints" / "last.pt")["position"]["step"])


def craft_model(src: Path, dst: Path, change: Callable[[dict], object]) -> None:
    """A copy of model file ``src`` with the metadata ``change(metadata)`` made (in place, or a raw string)."""
    from safetensors.torch import save_file

    from sslspeaker.inference.model_file import METADATA_KEY, read_model_file

    tensors, meta = read_model_file(src)
    raw = change(meta)
    text = raw if isinstance(raw, str) else json.dumps(meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst), metadata={METADATA_KEY: text})


def poison_checkpoint(src: Path, dst: Path) -> None:
    """A copy of run ``src`` whose checkpoint has a NaN in the first floating-point weight of the encoder."""
    import torch

    from sslspeaker.runs import load_checkpoint
    from sslspeaker.training.checkpoint import save_checkpoint

    ckpt = load_checkpoint(src / "checkpoints" / "last.pt")
    name = next(k for k, v in ckpt["method"].items() if k.startswith("encoder.") and v.is_floating_point())
    ckpt["method"][name] = torch.full_like(ckpt["method"][name], float("nan"))
    save_checkpoint(dst / "checkpoints" / "last.pt", ckpt)


DISK_FULL = """
import contextlib, errno, sys
import sslspeaker.training.checkpoint as c
real, writes = c.atomic_open, [0]
class Full:
    def __init__(self, f): self.f = f
    def write(self, data):
        self.f.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
@contextlib.contextmanager
def filling(path, mode="wb"):
    writes[0] += 1
    with real(path, mode) as f:
        yield f if writes[0] <= 1 else Full(f)
c.atomic_open = filling
from sslspeaker.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ---- the cases ----------------------------------------------------------------------------
def train_cmd(root: Path, run: Path, manifest: str, *extra: str) -> list[str]:
    return cli("train", str(root / "recipe.yaml"), f"data.train={manifest}", *TINY, *extra, "--out", str(run))


def log_says(run: Path, text: str) -> bool:
    path = run / "log.jsonl"
    return path.is_file() and text in path.read_text()


def training_cases(root: Path, d: dict) -> list[Case]:
    m, r = d["manifest"], root / "runs"
    return [
        Case("one file with NaN samples in the pool", train_cmd(root, r / "mixed", str(root / "mixed.csv")),
             "rc 0, checkpoint finite", (0,), check=lambda: checkpoint_clean(r / "mixed")),
        Case("all-NaN training pool", train_cmd(root, r / "nan", str(root / "all_nan.csv"), "train.max_nonfinite=2"),
             "rc 2 or 3, no checkpoint with NaN", (2, 3), check=lambda: no_dirty_checkpoint(r / "nan")),
        Case("training run (validation, optim.lr=1e-3)",
             train_cmd(root, r / "good", m, "optim.lr=1e-3", f"validation.trials={root / 'trials.txt'}"),
             "rc 0, finite checkpoint, EER logged", (0,),
             check=lambda: checkpoint_clean(r / "good") and log_says(r / "good", '"eer"')),
        Case("plain re-run over a finished run", train_cmd(root, r / "good", m), "rc 2: --resume or --force", (2,),
             says="--resume to continue, --force to start over"),
        Case("--force over a finished run", [*train_cmd(root, r / "good", m), "--force"], "rc 0, old run kept aside",
             (0,), check=lambda: any((p / "checkpoints" / "last.pt").is_file()
                                     for p in (r / "good").glob("replaced-*"))),
        Case("--resume with train.epochs=2", [*train_cmd(root, r / "good", m, "train.epochs=2"), "--resume"],
             "rc 0, the run goes on to epoch 2", (0,), check=lambda: log_says(r / "good", '"event": "resume"')),
        Case("--resume changing data.crop_seconds",
             [*train_cmd(root, r / "good", m, "data.crop_seconds=1.0"), "--resume"],
             "rc 2 naming the option", (2,), says="data.crop_seconds cannot change"),
        Case("two runs on one folder", train_cmd(root, r / "busy", m, "train.epochs=2"),
             "the second: rc 2 naming the holder",
             (2,), says="in use by another training process (pid",
             background=train_cmd(root, r / "busy", m, "train.epochs=400")),
        Case("disk full writing a checkpoint",
             [sys.executable, "-c", DISK_FULL, *train_cmd(root, r / "full", m, "train.epochs=2")[3:]],
             "rc 3 one line, previous checkpoint intact, no temp file", (3,), says="no space left on",
             check=lambda: step_of(r / "full") == 2 and not list((r / "full" / "checkpoints").glob(".*tmp*"))),
        Case("--resume once space is freed", [*train_cmd(root, r / "full", m, "train.epochs=2"), "--resume"],
             "rc 0", (0,),
             check=lambda: step_of(r / "full") == 6),
        Case("validation list naming a missing file",
             train_cmd(root, r / "val", m, f"validation.trials={root / 'bad_trials.txt'}"),
             "rc 2 naming the file", (2,),
             says="nowhere.wav: no such file"),
        Case("crop longer than every file (crop_seconds=30)", train_cmd(root, r / "long", m, "data.crop_seconds=30"),
             "rc 0 with a warning", (0,), check=lambda: log_says(r / "long", "is longer than")),
        Case("train.init_from=garbage", train_cmd(root, r / "init", m, "train.init_from=garbage"),
             "rc 2 one line", (2,),
             says="train.init_from"),
        Case("corrupt last.pt with --resume", [*train_cmd(root, r / "corrupt", m), "--resume"], "rc 2 one line", (2,),
             says="not a loadable", before=lambda: _write(r / "corrupt" / "checkpoints" / "last.pt", b"\x80junk")),
        Case("manifest whose files are all missing", train_cmd(root, r / "gone", str(root / "missing.csv")),
             "rc 2 one line", (2,), says="none of the 20"),
    ]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


BAD_OPTIONS = ["train.batch_size=-4", "train.batch_size=0", "train.log_every=0", "data.crop_seconds=0",
               "optim.lr=-1.0", "data.train=[]", "train.device=cuda", "data.n_views=0"]


def option_cases(root: Path, d: dict) -> list[Case]:
    return [Case(f"option {o}", train_cmd(root, root / "runs" / f"opt{i}", d["manifest"], o),
                 "rc 2 naming the option", (2,),
                 says=o.split("=")[0]) for i, o in enumerate(BAD_OPTIONS)]


def data_cases(root: Path, d: dict) -> list[Case]:
    out = root / "prep_out"

    def nan_rejected() -> bool:
        listed = (out / "manifest.csv").read_text() if (out / "manifest.csv").is_file() else ""
        report = (out / "report.csv").read_text().lower() if (out / "report.csv").is_file() else ""
        return "nan.wav" not in listed and "ok.wav" in listed and "finite" in report

    return [Case("prepare: files with NaN samples", cli("prepare", "folder", str(root / "prep_in"), "--out", str(out),
                                                        "--quiet"),
                 "rc 0, NaN files rejected as non-finite", (0,), check=nan_rejected)]


MODEL_CRAFTS = {
    "threshold NaN": lambda m: m.update(threshold=float("nan")),
    "metadata a list": lambda m: "[1, 2]",
    "metadata nested 100000 deep": lambda m: "[" * 100000 + "]" * 100000,
    "encoder a string": lambda m: m.update(encoder="tdnn"),
    "n_mels 'forty'": lambda m: m["features"].update(n_mels="forty"),
    "hop_length 0": lambda m: m["features"].update(hop_length=0),
    "n_fft 1e9": lambda m: m["features"].update(n_fft=int(1e9)),
    "embed_dim 4e9": lambda m: m["encoder"]["options"].update(embed_dim=int(4e9)),
    "embed_dim lies (1000)": lambda m: m.update(embed_dim=1000),
}


def model_cases(root: Path, d: dict) -> list[Case]:
    model, runs = root / "model.safetensors", root / "runs"
    # a threshold on the command line: the cases test the audio, the device and the model, not a missing threshold
    verify = lambda *a: cli("verify", *a, "--device", "cpu", "--threshold", "0.5")  # noqa: E731
    cases = [
        Case("export the trained run", cli("export", str(runs / "good"), "--out", str(model), "--quiet",
                                           "--device", "cpu"), "rc 0", (0,), check=model.is_file),
        Case("export a run with NaN weights", cli("export", str(runs / "poisoned"), "--out",
                                                  str(root / "poisoned.safetensors"), "--device", "cpu"),
             "rc 2, nothing written", (2,), before=lambda: poison_checkpoint(runs / "good", runs / "poisoned"),
             check=lambda: not (root / "poisoned.safetensors").exists()),
        Case("verify two speech files", verify(d["a"], d["b"], "--model", str(model)), "rc 0", (0,)),
        Case("verify: audio with NaN samples", verify(d["some_nan"], d["a"], "--model", str(model)),
             "rc 2 naming the file", (2,), says="some_nan.wav"),
        Case("verify: two silent files", verify(d["silent1"], d["silent2"], "--model", str(model)),
             "rc 2 naming the file", (2,), says="s1.wav"),
        Case("verify: a missing file", verify(d["a"], "/nonexistent.wav", "--model", str(model)),
             "rc 2: no such file", (2,), says="no such file"),
        Case("verify --device cuda without CUDA", [*verify(d["a"], d["b"], "--model", str(model)), "--device", "cuda"],
             "rc 2 one line", (2,), says="error:"),
        Case("verify --device foo", [*verify(d["a"], d["b"], "--model", str(model)), "--device", "foo"],
             "rc 2 one line", (2,), says="error:"),
        Case("verify --model wav.scp", verify(d["a"], d["b"], "--model", str(root / "trials.txt")),
             "rc 2 one line", (2,), says="error:"),
        Case("embed --out /proc/nope", cli("embed", d["a"], "--model", str(model), "--out", "/proc/nope",
                                           "--device", "cpu"), "rc 2 one line", (2,), says="error:"),
        Case("evaluate --out a folder", cli("evaluate", "--model", str(model), "--trials", str(root / "trials.txt"),
                                            "--audio-root", "/", "--out", str(root), "--device", "cpu", "--quiet",
                                            "--no-cache"), "rc 2 one line", (2,), says="error:"),
    ]
    for name, change in MODEL_CRAFTS.items():
        crafted = root / "crafted" / f"{len(cases)}.safetensors"
        argv = verify(d["a"], d["b"], "--model", str(crafted))
        argv = argv[:-2] if name == "threshold NaN" else argv  # the model's own threshold is the case
        cases.append(Case(f"model metadata: {name}", argv, "rc 2 naming the file and field", (2,), says=crafted.name,
                          before=lambda c=crafted, f=change: _craft(model, c, f)))
    return cases


def _craft(model: Path, crafted: Path, change) -> None:
    crafted.parent.mkdir(parents=True, exist_ok=True)
    craft_model(model, crafted, change)


# ---- running ------------------------------------------------------------------------------
def start_background(argv: list[str], lock: Path) -> subprocess.Popen:
    """Start ``argv`` and wait (up to 60 s) until it holds the run folder's lock."""
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.2)
    time.sleep(1.0)
    return proc


def run_case(case: Case, root: Path) -> dict:
    """Run one case; its row of the table."""
    holder = None
    try:
        if case.before is not None:
            case.before()
        if case.background is not None:
            holder = start_background(case.background, Path(case.background[-1]) / "train.lock")
        t0 = time.perf_counter()
        proc = subprocess.run(case.argv, env={**env(), **case.extra_env}, capture_output=True, text=True,
                              timeout=300, cwd=root)
        rc, said, seconds = proc.returncode, message(proc.stderr, proc.stdout), time.perf_counter() - t0
    except Exception as exc:  # a failing set-up or a hung command is a failed case, not a failed benchmark
        rc, said, seconds = None, f"{type(exc).__name__}: {exc}"[:240], 0.0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    ok = rc in case.rc and case.says in said and _holds(case.check)
    return {"case": case.name, "expected": case.expect, "what happened": f"rc {rc}: {said}",
            "s": f"{seconds:.1f}", "result": "pass" if ok else "FAIL"}


def run_group(cases: list[Case], root: Path, workers: int) -> list[dict]:
    """The rows of ``cases``, run ``workers`` at a time (independent cases only when more than one), in order."""
    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(lambda c: run_case(c, root), cases))
    for row in rows:
        print(f"{row['result']:4s} {row['case']}: {row['what happened']}", flush=True)
    return rows


def _holds(check) -> bool:
    try:
        return check is None or bool(check())
    except Exception:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="sslspeaker-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    d = make_data(root)
    models = model_cases(root, d)
    rows = [*run_group(training_cases(root, d), root, 1),  # in order: each case uses the runs before it
            *run_group([*option_cases(root, d), *data_cases(root, d)], root, 2),
            *run_group(models[:1], root, 1), *run_group(models[1:], root, 2)]  # after the export
    passed = sum(r["result"] == "pass" for r in rows)
    body = (f"{passed} of {len(rows)} cases pass ({time.perf_counter() - t0:.0f} s in all). Each case is one "
            f"`python -m sslspeaker.cli` process on tiny synthetic data; \"what happened\" is its exit code and "
            f"its one-line message (the first `error:`/`stopped:`/traceback line, else the first output line).\n\n"
            + table(rows, ["case", "expected", "what happened", "s", "result"]))
    record("faults", "Faults (issue #18)", body)


if __name__ == "__main__":
    main()
