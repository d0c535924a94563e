"""`sslspeaker embed`: audio files, folders (scanned for audio), list files (a manifest CSV or one path
per line) and Kaldi ``wav.scp`` lists -> embeddings as .npy files, one .npz or .csv, or a Kaldi
``xvector.ark`` + ``xvector.scp`` (kaldiio) keyed by utterance id."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from ..fileio import atomic_open, atomic_path


def _unique_names(stems: list[str]) -> list[str]:
    """One output name per input stem: the stem, or stem-2, stem-3, ... where stems collide."""
    taken: set[str] = set()
    names = []
    for stem in stems:
        stem = stem or "audio"
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


def input_files(names: list[str], scp: str | None = None) -> list[tuple[str, str]]:
    """[(key, audio path)] of the inputs: ``scp``'s (id, path) pairs, then each name as an audio file,
    a folder (its audio files, sorted) or a list file (a manifest CSV, else one path per line relative
    to its folder). Keys are the scp ids and the file stems, made unique (``_unique_names``)."""
    from ..data.folders import AUDIO_EXTENSIONS, scan
    from ..data.manifest import read_manifest, read_path_list, read_scp

    items = list(read_scp(scp).items()) if scp else []
    for name in names:
        if os.path.isdir(name):
            found = [str(p) for p in scan(Path(name))]
            if not found:
                raise ValueError(f"{name}: a folder without audio files ({', '.join(AUDIO_EXTENSIONS)})")
        elif name.lower().endswith(AUDIO_EXTENSIONS) or not os.path.isfile(name):
            found = [name]  # an audio file (a missing one is refused, on its own line, when embedded)
        else:
            found = [e.path for e in read_manifest(name)] if name.lower().endswith(".csv") else read_path_list(name)
        items += [(Path(p).stem, p) for p in found]
    if not items:
        raise ValueError("no inputs: give audio files, folders, list files or --scp wav.scp")
    keys = _unique_names(["_".join(k.split()) for k, _ in items])  # Kaldi keys hold no white space
    return [(k, p) for k, (_, p) in zip(keys, items)]


def _embed_all(model, items: list[tuple[str, str]], progress: bool = False,
               windows: tuple | None = None) -> tuple[list, int]:
    """([(key, path, embedding)] of the usable files, number refused); each refusal is one line on stderr.
    With ``windows`` = (window, hop) seconds the embedding is ``embed_windows``'s (starts, embeddings)."""
    from tqdm import tqdm

    from ..data.audio import AudioError

    done, failed = [], 0
    with tqdm(items, desc="embedding", unit="file", disable=not progress, leave=False, mininterval=1.0,
              dynamic_ncols=True) as bar:
        for key, path in bar:
            try:
                done.append((key, path, model.embed(path) if windows is None else model.embed_windows(path, *windows)))
            except (AudioError, ValueError) as exc:
                failed += 1
                tqdm.write(f"error: skipped {exc}", file=sys.stderr)
    return done, failed


def write_npy(out: Path, done: list) -> str:
    import numpy as np

    for key, _, e in done:
        with atomic_path(out / f"{key}.npy", suffix=".npy") as tmp:
            np.save(tmp, e)
    with atomic_open(out / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "embedding"])
        w.writerows([path, f"{key}.npy"] for key, path, _ in done)
    return f"{len(done)} .npy files in {out} (index.csv maps inputs to files)"


def write_npz(out: Path, done: list, dim: int) -> str:
    import numpy as np

    emb = np.stack([e for _, _, e in done]) if done else np.zeros((0, dim), np.float32)
    with atomic_path(out / "embeddings.npz", suffix=".npz") as tmp:
        np.savez(tmp, paths=np.array([p for _, p, _ in done], dtype=str), embeddings=emb)
    return f"{out / 'embeddings.npz'} (arrays 'paths' [N], 'embeddings' [N, {dim}])"


def write_csv(out: Path, done: list, dim: int) -> str:
    with atomic_open(out / "embeddings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [f"e{i}" for i in range(dim)])
        w.writerows([path] + [f"{v:.8g}" for v in e] for _, path, e in done)
    return str(out / "embeddings.csv")


def write_kaldi(out: Path, done: list, dim: int) -> str:
    """``out/xvector.ark`` (binary float vectors) and ``out/xvector.scp`` (``KEY ARK:OFFSET``), via kaldiio."""
    import numpy as np

    from ..errors import MissingExtraError

    try:
        import kaldiio
    except ImportError:
        raise MissingExtraError("--format kaldi needs kaldiio: pip install 'sslspeaker[kaldi]'") from None
    ark, scp = out / "xvector.ark", out / "xvector.scp"
    table = io.StringIO()
    with atomic_path(ark, suffix=".ark") as tmp:
        kaldiio.save_ark(str(tmp), {k: np.asarray(e, np.float32) for k, _, e in done}, scp=table)
    with atomic_open(scp, "w", encoding="utf-8") as f:  # the ark is in place; its offsets do not move
        f.write(table.getvalue().replace(f" {tmp}:", f" {ark}:"))
    return f"{ark} and {scp} ({len(done)} vectors of {dim} floats, keyed by utterance id)"


def write_windows(out: Path, done: list) -> str:
    """--window: KEY.npz per input (arrays 'starts' [N] seconds, 'embeddings' [N, D]) and index.csv."""
    import numpy as np

    for key, _, (starts, emb) in done:
        with atomic_path(out / f"{key}.npz", suffix=".npz") as tmp:
            np.savez(tmp, starts=starts, embeddings=emb)
    with atomic_open(out / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "windows"]] + [[p, f"{k}.npz"] for k, p, _ in done])
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
    if args.format not in ("npy",):
        raise ValueError(f"--window writes one .npz of windows per input; --format {args.format} does not apply")
    return args.window, hop


WRITERS = {"npy": lambda out, done, dim: write_npy(out, done), "npz": write_npz, "csv": write_csv,
           "kaldi": write_kaldi}


def run(args: argparse.Namespace) -> int:
    from ..inference.model import SpeakerEncoder

    items = input_files(args.files, args.scp)
    windows = _windows(args)
    model = SpeakerEncoder.load(args.model, args.device, vad=not args.no_vad)
    out = _output_folder(args.out)
    done, failed = _embed_all(model, items, progress=not args.quiet and len(items) > 1, windows=windows)
    where = write_windows(out, done) if windows is not None else WRITERS[args.format](out, done, model.embed_dim)
    print(f"embedded {len(done)} of {len(items)} files -> {where}"
          + (f"; {failed} failed (see above)" if failed else ""))
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="speaker embeddings (L2-normalised, full utterance) of audio files")
    p.add_argument("files", nargs="*", help="audio files, folders (their audio files) or list files (a manifest "
                                            ".csv, or one path per line relative to the list's folder)")
    p.add_argument("--scp", help="Kaldi wav.scp ('ID PATH' per line): embed its files, keyed by their ids")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="npy", choices=list(WRITERS),
                   help="npy: one file per input (named after its stem or id); npz/csv: one embeddings.npz/.csv; "
                        "kaldi: xvector.ark + xvector.scp (kaldiio)")
    p.add_argument("--model", help="a .safetensors model, a .pt checkpoint or a training run folder "
                                   "(default: the model bundled with the package)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--window", type=float, default=None, metavar="S",
                   help="embed S-second windows instead (one KEY.npz per input: 'starts' [N] s, 'embeddings' [N, D])")
    p.add_argument("--hop", type=float, default=None, metavar="S", help="with --window: seconds between window "
                                                                        "starts (default: half the window)")
    p.add_argument("--no-vad", action="store_true",
                   help="embed every sample (default: only the speech regions, by frame energy; windows never trim)")
    p.set_defaults(func=run)
