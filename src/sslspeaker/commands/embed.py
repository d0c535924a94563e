"""`sslspeaker embed`."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from ..fileio import atomic_open, atomic_path


def _unique_names(paths: list[str]) -> list[str]:
    """One output stem per input: the file stem, or stem-2, stem-3, ... where stems collide."""
    taken: set[str] = set()
    names = []
    for p in paths:
        stem = Path(p).stem or "audio"
        name, k = stem, 2
        while name in taken:
            name, k = f"{stem}-{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def _output_folder(out: str) -> Path:
    """``--out`` created (with its parents); an ``OSError`` naming the option otherwise."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {out}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"--out {out}: the output folder is not writable")
    return folder


def _embed_all(model, files: list[str], windows: tuple | None = None) -> tuple[list, int]:
    """([(path, embedding)] of the usable files, number refused); each refusal is one line on stderr.
    With ``windows`` = (window, hop) seconds: [(path, (starts, embeddings))] (``embed_windows``)."""
    from ..data.audio import AudioError

    done, failed = [], 0
    for path in files:
        try:
            done.append((path, model.embed(path) if windows is None else model.embed_windows(path, *windows)))
        except (AudioError, ValueError) as exc:
            failed += 1
            print(f"error: skipped {exc}", file=sys.stderr)
    return done, failed


def write_npy(out: Path, done: list) -> str:
    import numpy as np

    names = _unique_names([p for p, _ in done])
    for (_, e), name in zip(done, names):
        with atomic_path(out / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, e)
    with atomic_open(out / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "embedding"])
        w.writerows([path, f"{name}.npy"] for (path, _), name in zip(done, names))
    return f"{len(done)} .npy files in {out} (index.csv maps inputs to files)"


def write_windows(out: Path, done: list) -> str:
    """--window: NAME.npz per input (arrays 'starts' [N] seconds, 'embeddings' [N, D]) and index.csv."""
    import numpy as np

    names = _unique_names([p for p, _ in done])
    for (_, (starts, emb)), name in zip(done, names):
        with atomic_path(out / f"{name}.npz", suffix=".npz") as tmp:
            np.savez(tmp, starts=starts, embeddings=emb)
    with atomic_open(out / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "windows"]] + [[p, f"{n}.npz"] for (p, _), n in zip(done, names)])
    return f"{len(done)} .npz files of windows in {out} (index.csv maps inputs to files)"


def _windows(args: argparse.Namespace) -> tuple | None:
    """(window, hop) seconds from --window/--hop (hop: window / 2 by default), or None."""
    if args.window is None:
        if args.hop is not None:
            raise ValueError("--hop needs --window")
        return None
    hop = args.window / 2 if args.hop is None else args.hop
    for name, v in (("--window", args.window), ("--hop", hop)):
        if not (v > 0 and v < float("inf")):
            raise ValueError(f"{name} must be a positive number of seconds, got {v}")
    return args.window, hop


def write_npz(out: Path, done: list, dim: int) -> str:
    import numpy as np

    emb = np.stack([e for _, e in done]) if done else np.zeros((0, dim), np.float32)
    with atomic_path(out / "embeddings.npz", suffix=".npz") as tmp:
        np.savez(tmp, paths=np.array([p for p, _ in done], dtype=str), embeddings=emb)
    return f"{out / 'embeddings.npz'} (arrays 'paths' [N], 'embeddings' [N, {dim}])"


def write_csv(out: Path, done: list, dim: int) -> str:
    with atomic_open(out / "embeddings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [f"e{i}" for i in range(dim)])
        w.writerows([path] + [f"{v:.8g}" for v in e] for path, e in done)
    return str(out / "embeddings.csv")


def run(args: argparse.Namespace) -> int:
    from ..inference.model import SpeakerEncoder

    windows = _windows(args)  # issue 21: --window/--hop/--no-vad
    model = SpeakerEncoder.load(args.model, args.device, vad=not args.no_vad)
    out = _output_folder(args.out)
    done, failed = _embed_all(model, args.files, windows)
    if windows is not None:
        where = write_windows(out, done)
    elif args.format == "npy":
        where = write_npy(out, done)
    elif args.format == "npz":
        where = write_npz(out, done, model.embed_dim)
    else:
        where = write_csv(out, done, model.embed_dim)
    print(f"embedded {len(done)} of {len(args.files)} files -> {where}"
          + (f"; {failed} failed (see above)" if failed else ""))
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="speaker embeddings (L2-normalised, full utterance) of audio files")
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="npy", choices=["npy", "npz", "csv"],
                   help="npy: one file per input (named after its stem); npz/csv: one embeddings.npz/.csv")
    p.add_argument("--model", help="a .safetensors model, a .pt checkpoint or a training run folder "
                                   "(default: the model bundled with the package)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    # issue 21: sliding windows and speech activity
    p.add_argument("--window", type=float, default=None, metavar="S",
                   help="embed S-second windows instead (one NAME.npz per input: 'starts' [N] s, 'embeddings' [N, D])")
    p.add_argument("--hop", type=float, default=None, metavar="S", help="with --window: seconds between window "
                                                                        "starts (default: half the window)")
    p.add_argument("--no-vad", action="store_true",
                   help="embed every sample (default: only the speech regions, by frame energy; windows never trim)")
    p.set_defaults(func=run)
