"""Folders of audio: finding the files, and the speakers a folder tree holds.

``scan`` lists audio files; ``speaker_folders`` reads a tree whose sub-folders are speakers
(``speechocean762/WAVE/SPEAKERxxxx/*.flac``, ``voxceleb/idXXXXX/VIDEO/*.wav``);
``speaker_entries`` measures those files, leaving out unreadable and short ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .audio import AudioError, audio_info
from .manifest import Entry

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")


def scan(root: Path, extensions=AUDIO_EXTENSIONS, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """All audio files under ``root``, sorted, entering no folder twice (symlinks included).

    Left out, each with a reason: a folder reached again through a symlink (a loop, or a second
    link to one folder), a symlink that cannot be followed (one pointing at itself), a folder
    below ``root`` that cannot be listed, and a file or folder whose name is not UTF-8. The reasons go to ``skipped`` as (name with escapes,
    reason) pairs when it is given, else to the log.
    """
    found: list[Path] = []
    skips: list[tuple[str, str]] = [] if skipped is None else skipped
    seen = {_identity(root)}
    stack = [root]
    while stack:
        folder = stack.pop()
        for e in _entries(folder, skips, must=folder == root):
            kind = _kind(e, seen, skips)
            if kind == "dir":
                stack.append(Path(e.path))
            elif kind == "file" and e.name.lower().endswith(extensions) and _utf8_name(e, skips, "file"):
                found.append(Path(e.path))
    if skipped is None:
        for name, reason in skips:
            log.warning("skipping %s: %s", name, reason)
    return sorted(found)


def shown_name(path: str | os.PathLike) -> str:
    """A path as text, any byte that is not UTF-8 written as an escape (``bad\\xff.wav``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _identity(folder: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def _entries(folder: Path, skips: list, must: bool) -> list[os.DirEntry]:
    """The entries of ``folder``; one that cannot be listed is reported (raises for the root)."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if must:
            raise
        skips.append((shown_name(folder), f"folder cannot be listed ({exc.strerror})"))
        return []


def _kind(e: os.DirEntry, seen: set, skips: list) -> str:
    """"dir" to descend into, "file", or "skip" (reported): folders are entered once, by identity."""
    try:
        if not e.is_dir():
            return "file"
        ident = _identity(e.path)
    except OSError as exc:  # a symlink pointing at itself or into a chain of links
        skips.append((shown_name(e.path), f"symlink cannot be followed ({exc.strerror})"))
        return "skip"
    if ident in seen:
        skips.append((shown_name(e.path), "folder already scanned (a symlink loop, or a second link to one folder)"))
        return "skip"
    seen.add(ident)
    return "dir" if _utf8_name(e, skips, "folder") else "skip"


def _utf8_name(e: os.DirEntry, skips: list, what: str) -> bool:
    try:
        e.name.encode("utf-8")
    except UnicodeEncodeError:
        skips.append((shown_name(e.path), f"{what} name is not UTF-8"))
        return False
    return True


def speaker_folders(root: str | os.PathLike) -> tuple[Path, dict[str, list[Path]], int]:
    """(speaker root, {speaker: audio files}, loose files ignored) of a folder of speech.

    Speakers are the sub-folders of the first level at which the tree branches: from ``root``,
    descend while every audio file lies in the same sub-folder and that sub-folder itself holds
    speaker folders (so ``speechocean762/`` descends into ``WAVE/``). Files below a speaker
    folder, at any depth, are that speaker's; audio files directly in the speaker root are ignored.
    Raises ``ValueError`` (starting with ``root``) when there is no such folder or no audio in it.
    """
    root = Path(root)
    files = _audio_files(root)
    parts = [f.relative_to(root).parts for f in files]
    depth = _branching_depth(parts)
    groups: dict[str, list[Path]] = {}
    loose = 0
    for f, p in zip(files, parts):
        if len(p) > depth + 1:
            groups.setdefault(p[depth], []).append(f)
        else:
            loose += 1
    speaker_root = root.joinpath(*parts[0][:depth]) if depth else root
    return speaker_root, {k: groups[k] for k in sorted(groups)}, loose


def _audio_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    files = scan(root)
    if not files:
        raise ValueError(f"{root}: no audio files found (looked for .wav, .flac, .ogg, .opus, .mp3, .aiff)")
    return files


def _branching_depth(parts: list[tuple[str, ...]]) -> int:
    """How many levels all files share one folder on, with speaker folders still below it."""
    depth = 0
    while all(len(p) > depth + 2 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    return depth


def speaker_entries(groups: dict[str, list[Path]], min_seconds: float) -> tuple[dict[str, list[Entry]], dict[str, int]]:
    """({speaker: entries with durations}, {"unreadable": n, "short": n} left out) of ``speaker_folders``' groups;
    a file shorter than ``min_seconds`` is "short"."""
    entries: dict[str, list[Entry]] = {}
    dropped = {"unreadable": 0, "short": 0}
    for spk, paths in groups.items():
        for p in paths:
            try:
                dur = audio_info(p).duration
            except AudioError:
                dropped["unreadable"] += 1
                continue
            if dur < min_seconds:
                dropped["short"] += 1
                continue
            entries.setdefault(spk, []).append(Entry(str(p), spk, dur))
    return entries, dropped


__all__ = ["AUDIO_EXTENSIONS", "scan", "shown_name", "speaker_folders", "speaker_entries"]
