"""`sslspeaker embed`."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path


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


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.audio import AudioError
    from ..inference.model import SpeakerEncoder

    model = SpeakerEncoder.load(args.model, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done: list[tuple[str, "np.ndarray"]] = []
    failed = 0
    for path in args.files:
        try:
            if not os.path.isfile(path):
                raise AudioError(path, "no such file")
            done.append((path, model.embed(path)))
        except (AudioError, ValueError) as exc:
            failed += 1
            print(f"error: skipped {exc}", file=sys.stderr)
    if args.format == "npy":
        names = _unique_names([p for p, _ in done])
        with open(out / "index.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "embedding"])
            for (path, e), name in zip(done, names):
                np.save(out / f"{name}.npy", e)
                w.writerow([path, f"{name}.npy"])
        where = f"{len(done)} .npy files in {out} (index.csv maps inputs to files)"
    elif args.format == "npz":
        emb = np.stack([e for _, e in done]) if done else np.zeros((0, model.embed_dim), np.float32)
        np.savez(out / "embeddings.npz", paths=np.array([p for p, _ in done], dtype=str), embeddings=emb)
        where = f"{out / 'embeddings.npz'} (arrays 'paths' [N], 'embeddings' [N, {model.embed_dim}])"
    else:
        with open(out / "embeddings.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [f"e{i}" for i in range(model.embed_dim)])
            for path, e in done:
                w.writerow([path] + [f"{v:.8g}" for v in e])
        where = str(out / "embeddings.csv")
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
    p.set_defaults(func=run)
