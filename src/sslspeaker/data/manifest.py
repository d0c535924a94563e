"""Manifests (CSV ``path,speaker,duration[,category]``) and VoxCeleb-format trial lists.

Relative paths in a manifest are relative to the manifest's own folder, so a manifest
alone locates its audio. Readers return absolute paths.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..fileio import atomic_open

COLUMNS = ("path", "speaker", "duration")


@dataclass(frozen=True)
class Entry:
    """One audio file: absolute path, speaker (None when unknown), duration in seconds."""

    path: str
    speaker: str | None = None
    duration: float = 0.0
    category: str | None = None  # noise sets: "noise", "music", "speech"


@dataclass(frozen=True)
class Trial:
    """One verification trial: 1 = same speaker; paths as given (resolve with ``resolve``)."""

    label: int
    a: str
    b: str


def read_manifest(path: str | os.PathLike, base: str | os.PathLike | None = None) -> list[Entry]:
    """Read a manifest (UTF-8 CSV); relative paths resolve against ``base`` (default: the manifest's
    folder). A malformed row or text that is not UTF-8 is a ``ValueError`` naming the file."""
    path = Path(path)
    base = Path(base).resolve() if base is not None else path.resolve().parent
    try:
        return _read_manifest_rows(path, base)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r}: a manifest "
                         "is UTF-8 CSV)") from None


def _read_manifest_rows(path: Path, base: Path) -> list[Entry]:
    entries = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{path}: not a manifest (needs a 'path' column, got {reader.fieldnames})")
        for lineno, row in enumerate(reader, start=2):
            try:
                duration = float(row.get("duration") or 0.0)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad duration {row.get('duration')!r}") from None
            p = row["path"]
            entries.append(
                Entry(
                    path=str(base / p) if not os.path.isabs(p) else p,
                    speaker=row.get("speaker") or None,
                    duration=duration,
                    category=row.get("category") or None,
                )
            )
    return entries


def write_manifest(path: str | os.PathLike, entries: Iterable[Entry], relative: bool = True) -> int:
    """Write a manifest atomically; paths under its folder are stored relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    entries = list(entries)
    with_category = any(e.category for e in entries)
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS + (("category",) if with_category else ()))
        for e in entries:
            p = _relative(e.path, base) if relative else str(Path(e.path).resolve())
            row = [p, e.speaker or "", f"{e.duration:.3f}"]
            if with_category:
                row.append(e.category or "")
            w.writerow(row)
    return len(entries)


def _relative(p: str, base: Path) -> str:
    rel = os.path.relpath(Path(p).resolve(), base)
    return rel if not rel.startswith("..") else str(Path(p).resolve())


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Read a VoxCeleb ``veri_test.txt``-style list: ``LABEL PATH_A PATH_B`` per line (UTF-8 text);
    a malformed line or one that is not UTF-8 is a ``ValueError`` naming the file and line."""
    trials = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _utf8_line(raw, path, lineno)
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: expected 'LABEL PATH_A PATH_B' with LABEL 0 or 1, got {line.strip()!r}")
            trials.append(Trial(int(parts[0]), parts[1], parts[2]))
    return trials


def _utf8_line(raw: bytes, path: str | os.PathLike, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at column "
                         f"{exc.start + 1})") from None


def write_trials(path: str | os.PathLike, trials: Sequence[Trial]) -> None:
    """Write a trial list atomically in the VoxCeleb format."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for t in trials:
            f.write(f"{t.label} {t.a} {t.b}\n")


def resolve(path: str, root: str | os.PathLike) -> str:
    """A trial-list path made absolute against the audio root."""
    return path if os.path.isabs(path) else str(Path(root) / path)
