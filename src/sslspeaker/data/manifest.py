"""Manifests (CSV ``path,speaker,duration[,category]``), trial lists, Kaldi lists, per-trial scores.

Relative paths in a manifest are relative to the manifest's own folder, so a manifest
alone locates its audio. Readers return absolute paths.

Trial lists are VoxCeleb's ``LABEL A B`` (LABEL 1 = same speaker, 0 = not) or Kaldi's
``A B target|nontarget``, line by line (both may mix). ``A`` and ``B`` are paths, utterance
ids of a Kaldi ``wav.scp`` (``read_scp``: ``ID PATH`` per line), or, on the A side, the name of
an enrolled speaker model of an enrolment list (``read_enrolment``: Kaldi's ``spk2utt``,
``MODEL UTT1 UTT2 ...`` per line). Per-trial scores are written as ``A B SCORE LABEL``
(``write_trial_scores``; LABEL ``target`` or ``nontarget``), one line per trial in list order.
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


KALDI_LABELS = {"target": 1, "nontarget": 0}
TRIAL_FORMATS = "VoxCeleb's 'LABEL A B' (LABEL 0 or 1) or Kaldi's 'A B target|nontarget'"


def parse_trial(parts: list[str]) -> Trial | None:
    """One trial from a line's fields in either format; None when they are neither."""
    if len(parts) != 3:
        return None
    if parts[0] in ("0", "1"):
        return Trial(int(parts[0]), parts[1], parts[2])
    if parts[2] in KALDI_LABELS:
        return Trial(KALDI_LABELS[parts[2]], parts[0], parts[1])
    return None


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Read a trial list (UTF-8 text) in VoxCeleb's ``LABEL A B`` or Kaldi's ``A B target|nontarget``
    format; a malformed line or one that is not UTF-8 is a ``ValueError`` naming the file and line."""
    trials = []
    for lineno, parts in _text_lines(path):
        trial = parse_trial(parts)
        if trial is None:
            raise ValueError(f"{path}:{lineno}: expected {TRIAL_FORMATS}, got {' '.join(parts)!r}")
        trials.append(trial)
    return trials


def _raw_lines(path: str | os.PathLike):
    """(line number, line) of each line of a UTF-8 text file; ``ValueError`` naming a line that is not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            yield lineno, _utf8_line(raw, path, lineno)


def _text_lines(path: str | os.PathLike):
    """(line number, whitespace-separated fields) of each non-blank line of a UTF-8 text file."""
    for lineno, line in _raw_lines(path):
        parts = line.split()
        if parts:
            yield lineno, parts


def read_scp(path: str | os.PathLike) -> dict[str, str]:
    """A Kaldi ``wav.scp``: ``{utterance id: audio path}`` (``ID PATH`` per line; relative paths are
    relative to the current folder, as Kaldi's tools read them). Command pipes (``... |``), a
    repeated id or a line without a path are a ``ValueError`` naming the file and line."""
    table: dict[str, str] = {}
    for lineno, parts in _text_lines(path):
        if parts[-1].endswith("|"):
            raise ValueError(f"{path}:{lineno}: a command pipe ({' '.join(parts[1:])!r}); sslspeaker reads "
                             "audio files only: give 'ID PATH'")
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'ID PATH', got {' '.join(parts)!r}")
        if parts[0] in table:
            raise ValueError(f"{path}:{lineno}: utterance id {parts[0]!r} given twice")
        table[parts[0]] = os.path.abspath(parts[1])
    if not table:
        raise ValueError(f"{path}: an empty scp list")
    return table


def read_path_list(path: str | os.PathLike) -> list[str]:
    """A list file: one audio path per line (UTF-8; relative paths are relative to the list's folder)."""
    base = Path(path).resolve().parent
    paths = [line.rstrip("\r\n") for _, line in _raw_lines(path) if line.strip()]
    if not paths:
        raise ValueError(f"{path}: an empty list file (expected one audio path per line)")
    return [p if os.path.isabs(p) else str(base / p) for p in paths]


def read_enrolment(path: str | os.PathLike) -> dict[str, list[str]]:
    """An enrolment list, Kaldi's ``spk2utt``: ``{model: [utterance, ...]}`` from ``MODEL UTT1 UTT2 ...``
    lines (utterances as ids of a ``wav.scp`` or as paths); errors name the file and line."""
    models: dict[str, list[str]] = {}
    for lineno, parts in _text_lines(path):
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'MODEL UTT1 [UTT2 ...]', got {' '.join(parts)!r}")
        if parts[0] in models:
            raise ValueError(f"{path}:{lineno}: enrolment model {parts[0]!r} given twice")
        models[parts[0]] = parts[1:]
    if not models:
        raise ValueError(f"{path}: an empty enrolment list")
    return models


def write_trial_scores(path: str | os.PathLike, trials: Sequence[Trial], scores: Sequence[float]) -> None:
    """``A B SCORE LABEL`` per trial (LABEL ``target``/``nontarget``), written atomically."""
    names = {v: k for k, v in KALDI_LABELS.items()}
    with atomic_open(path, "w", encoding="utf-8") as f:
        for t, s in zip(trials, scores, strict=True):
            f.write(f"{t.a} {t.b} {float(s):.6f} {names[t.label]}\n")


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
