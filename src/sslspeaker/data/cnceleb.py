"""The CN-Celeb layouts (CN-Celeb1 and CN-Celeb2, OpenSLR 82) for ``sslspeaker prepare cnceleb``.

ROOT holds ``CN-Celeb_flac`` (or ``CN-Celeb_wav``) and/or ``CN-Celeb2_flac``, or is one of them:

- CN-Celeb1: ``data/SPEAKER/*.flac`` (its dev speakers listed in ``dev/dev.lst``), ``eval/test/*``,
  ``eval/enroll/*`` and ``eval/lists/``: ``enroll.map`` (a model id, then the utterances under
  ``data/`` that enrol it: an enrolment speaker is several utterances), ``enroll.lst`` (a model id
  and its one concatenated enrolment file) and ``trials.lst`` (``MODEL TEST_PATH 0|1``, test paths
  under ``eval/``; the lists say ``.wav`` also in the FLAC release);
- CN-Celeb2: ``data/SPEAKER/*.flac``, training speakers only.

Outputs besides ``manifest.csv``: ``train.csv`` (CN-Celeb1 dev speakers + CN-Celeb2),
``cnceleb1_dev.csv``, ``cnceleb2.csv``, ``test.csv`` (the evaluation's test utterances),
``enroll.csv`` (an enrolment list: a manifest whose ``speaker`` column is the enrolment model id,
one row per enrolment utterance, from ``enroll.map``, else the concatenated files of
``enroll.lst``) and ``trials.txt`` (``LABEL MODEL TEST_PATH``: the model id as the first side,
the test path relative to the CN-Celeb1 folder, kept when the test file and at least one of the
model's enrolment utterances were kept).
"""

from __future__ import annotations

import os
from pathlib import Path

from .folders import scan
from .manifest import Entry, Trial, write_manifest, write_trials

CNCELEB1_NAMES = ("CN-Celeb_flac", "CN-Celeb_wav", "CN-Celeb")
CNCELEB2_NAMES = ("CN-Celeb2_flac", "CN-Celeb2_wav", "CN-Celeb2")


def corpus_folders(root: Path) -> tuple[Path | None, Path | None]:
    """(CN-Celeb1 folder, CN-Celeb2 folder) under ``root`` (or ``root`` itself), each None if absent."""
    def find(names, is_it):
        for name in names:
            if (root / name).is_dir():
                return root / name
        return root if is_it(root) else None

    one = find(CNCELEB1_NAMES, lambda r: (r / "eval" / "lists").is_dir())
    two = find(CNCELEB2_NAMES, lambda r: (r / "data").is_dir() and not (r / "eval").is_dir() and r != one)
    if one is None and two is None:
        raise FileNotFoundError(f"{root}: no CN-Celeb layout (expected {CNCELEB1_NAMES[0]}/eval/lists or "
                                f"{CNCELEB2_NAMES[0]}/data)")
    return one, two


def list_words(path: Path) -> list[list[str]]:
    """The whitespace-separated fields of each non-empty line of a CN-Celeb list (UTF-8)."""
    try:
        return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r})") from None


def existing(base: Path, rel: str) -> str:
    """``base / rel`` as listed, or with the other of .wav / .flac when only that exists (the lists say .wav)."""
    p = base / rel
    if not p.exists():
        for a, b in ((".wav", ".flac"), (".flac", ".wav")):
            if p.suffix == a and p.with_suffix(b).exists():
                return str(p.with_suffix(b))
    return str(p)


def enrolment(one: Path) -> dict[str, list[str]]:
    """Model id -> its enrolment utterances (absolute paths): ``enroll.map``, else ``enroll.lst``."""
    lists = one / "eval" / "lists"
    if (lists / "enroll.map").is_file():
        return {w[0]: [existing(one / "data", u) for u in w[1:]] for w in list_words(lists / "enroll.map")}
    if (lists / "enroll.lst").is_file():
        return {w[0]: [existing(one / "eval", w[1])] for w in list_words(lists / "enroll.lst")}
    return {}


def trials(one: Path, models: dict[str, list[str]]) -> list[tuple[int, str, str]]:
    """(label, model id, absolute test path) of ``trials.lst``; a model id unknown to the enrolment is named."""
    path = one / "eval" / "lists" / "trials.lst"
    if not path.is_file():
        return []
    out = []
    for n, w in enumerate(list_words(path), start=1):
        if len(w) != 3 or w[2] not in ("0", "1"):
            raise ValueError(f"{path}:{n}: expected 'MODEL TEST_PATH 0|1', got {' '.join(w)!r}")
        model = w[0] if w[0] in models else f"{w[0]}-enroll"
        if model not in models:
            raise ValueError(f"{path}:{n}: model {w[0]!r} is not in the enrolment lists")
        out.append((int(w[2]), model, existing(one / "eval", w[1])))
    return out


def speaker_of(path: Path, data: Path) -> str:
    """``data/SPEAKER/...`` -> SPEAKER; an evaluation file ``SPEAKER-...`` -> SPEAKER."""
    try:
        return path.relative_to(data).parts[0]
    except ValueError:
        return path.name.split("-")[0]


def write_enrolment(out: Path, models: dict[str, list[str]], trial_list, one: Path,
                    kept: dict[str, Entry]) -> dict:
    """Write ``enroll.csv`` and ``trials.txt`` from the kept files; returns their counts."""
    rows = [Entry(p, model, kept[p].duration) for model, paths in models.items() for p in paths if p in kept]
    enrolled = {e.speaker for e in rows}
    write_manifest(out / "enroll.csv", rows, relative=False)
    good = [Trial(label, model, os.path.relpath(test, one)) for label, model, test in trial_list
            if model in enrolled and test in kept]
    write_trials(out / "trials.txt", good)
    return {"models": len(enrolled), "enrolment_utterances": len(rows), "trials": len(trial_list),
            "trials_kept": len(good), "trials_audio_root": str(one)}
