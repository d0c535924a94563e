"""Folders of audio: finding the files, and the speakers a folder tree holds.

``scan`` lists audio files; ``speaker_folders`` reads a tree whose sub-folders are speakers
(``speechocean762/WAVE/SPEAKERxxxx/*.flac``, ``voxceleb/idXXXXX/VIDEO/*.wav``);
``speaker_entries`` measures those files, leaving out unreadable and short ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from .audio import AudioError, audio_info
from .manifest import Entry

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")


def scan(root: Path, extensions=AUDIO_EXTENSIONS) -> list[Path]:
    """All audio files under ``root``, sorted, following no symlinked folders twice."""
    found: list[Path] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir():
                    stack.append(Path(e.path))
                elif e.name.lower().endswith(extensions):
                    found.append(Path(e.path))
    return sorted(found)


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


__all__ = ["AUDIO_EXTENSIONS", "scan", "speaker_folders", "speaker_entries"]
