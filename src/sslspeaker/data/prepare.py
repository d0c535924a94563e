"""``sslspeaker prepare KIND ROOT --out DIR``: manifests, trial lists and a rejection report.

Every corpus goes through the same path: list candidate files (with speaker/category from
the corpus layout), probe them in parallel (header + partial reads, see ``validate``), write
``manifest.csv`` with the good ones and ``report.csv`` with every rejected or altered file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..fileio import atomic_open, atomic_path, atomic_write_text
from .folders import AUDIO_EXTENSIONS, scan
from .manifest import Entry, Trial, read_manifest, read_trials, write_manifest, write_trials
from .validate import Policy, Probe, probe

VOX1_TEST_SPEAKERS = {f"id{n}" for n in range(10270, 10310)}  # the 40 VoxCeleb1 test speakers
VOX1_TRIAL_FILES = ("veri_test2.txt", "veri_test.txt", "list_test_all2.txt", "list_test_hard2.txt")

WHERE_TO_GET = {
    "voxceleb1": "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html (trial lists: veri_test2.txt, list_test_all2.txt, list_test_hard2.txt)",
    "voxceleb2": "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox2.html",
    "librispeech": "https://www.openslr.org/12",
    "speechocean762": "https://www.openslr.org/101",
    "musan": "https://www.openslr.org/17",
    "rirs": "https://www.openslr.org/28 (RIRS_NOISES)",
    "folder": None,
}


@dataclass
class Candidate:
    path: str
    speaker: str | None = None
    category: str | None = None


@dataclass
class Listing:
    """What a corpus layout yields before validation."""

    candidates: list[Candidate]
    trials: dict[str, Path] = field(default_factory=dict)  # output name -> trial list file
    subsets: dict[str, list[str]] = field(default_factory=dict)  # output name -> absolute paths
    min_duration: float | None = None  # per-kind override (impulse responses are short)
    audio_root: Path | None = None  # what trial-list paths are relative to


def _folder(root: Path, options) -> Listing:
    out = []
    for p in scan(root):
        speaker = None if options.get("no_speaker") or p.parent == root else p.parent.name
        out.append(Candidate(str(p), speaker, options.get("category")))
    return Listing(out)


def _trial_files(root: Path, given) -> dict[str, Path]:
    if given:
        return {Path(t).name: Path(t) for t in given}
    found = {}
    for folder in (root, root.parent):
        for name in VOX1_TRIAL_FILES:
            if (folder / name).is_file() and name not in found:
                found[name] = folder / name
    return found


def _voxceleb1(root: Path, options) -> Listing:
    # Layouts: ROOT/wav/idXXXXX/VIDEO/NNNNN.wav (merged dev+test) or ROOT itself holding id folders.
    wav = root / "wav" if (root / "wav").is_dir() else root
    cands = [Candidate(str(p), p.relative_to(wav).parts[0]) for p in scan(wav)]
    trials = _trial_files(root, options.get("trials"))
    if not trials:
        print(f"note: no VoxCeleb1 trial list found; pass --trials FILE (get them from {WHERE_TO_GET['voxceleb1']})",
              file=sys.stderr)
    subsets = {
        "test.csv": [c.path for c in cands if c.speaker in VOX1_TEST_SPEAKERS],
        "dev.csv": [c.path for c in cands if c.speaker not in VOX1_TEST_SPEAKERS],
    }
    return Listing(cands, trials, subsets, audio_root=wav)


def _voxceleb2(root: Path, options) -> Listing:
    m4a = sorted(p for p in scan(root, (".m4a",)))
    decoded = scan(root)
    if m4a and not decoded:
        ffmpeg = shutil.which("ffmpeg")
        if not ffmpeg:
            raise SystemExit(
                f"{root}: VoxCeleb2 ships AAC (.m4a), which libsndfile cannot read. Install ffmpeg "
                "(e.g. apt-get install ffmpeg) and run prepare again: it converts to FLAC under --out/audio."
            )
        decoded = _convert_m4a(m4a, root, Path(options["out"]) / "audio", ffmpeg, options.get("workers", 4))
        root_for_speaker = Path(options["out"]) / "audio"
    else:
        root_for_speaker = root
    cands = []
    for p in decoded:
        rel = p.relative_to(root_for_speaker).parts
        speaker = next((part for part in rel if part.startswith("id")), p.parent.parent.name)
        cands.append(Candidate(str(p), speaker))
    return Listing(cands)


def _convert_m4a(files: list[Path], root: Path, dest: Path, ffmpeg: str, workers: int) -> list[Path]:
    def one(src: Path) -> Path:
        dst = (dest / src.relative_to(root)).with_suffix(".flac")
        if not dst.exists():
            # a conversion that writes nothing is left out: the rename finds no file, and dst stays absent
            with contextlib.suppress(FileNotFoundError), atomic_path(dst, ".flac") as tmp:
                subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-ac", "1",
                                "-ar", "16000", str(tmp)], check=False)
        return dst

    with ThreadPoolExecutor(workers) as pool:
        out = list(tqdm(pool.map(one, files), total=len(files), desc="m4a->flac", unit="file"))
    return [p for p in out if p.exists()]


def _librispeech(root: Path, options) -> Listing:
    # LibriSpeech names files SPEAKER-CHAPTER-UTT.flac; the speaker id is the first field.
    return Listing([Candidate(str(p), p.name.split("-")[0]) for p in scan(root)])


def _speechocean762(root: Path, options) -> Listing:
    wave = root / "WAVE" if (root / "WAVE").is_dir() else root
    cands = [Candidate(str(p), p.parent.name) for p in scan(wave)]
    listing = Listing(cands, audio_root=root)
    protocol = root / "protocol"
    if protocol.is_dir():
        for name in ("train.csv", "dev.csv"):
            if (protocol / name).is_file():
                # the protocol's paths are relative to the corpus root, not to protocol/
                listing.subsets[name] = [e.path for e in read_manifest(protocol / name, base=root)]
        for t in protocol.glob("*trials*.txt"):
            listing.trials[t.name] = t
    return listing


def _musan(root: Path, options) -> Listing:
    cands = []
    for p in scan(root):
        category = p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "noise"
        cands.append(Candidate(str(p), None, category))
    return Listing(cands)


def _rirs(root: Path, options) -> Listing:
    # RIRS_NOISES mixes isotropic noises into real_rirs_isotropic_noises; its rir_list names the RIRs.
    files = scan(root)
    rir_lists = list(root.rglob("rir_list"))
    if rir_lists:
        names = set()
        for rl in rir_lists:
            for line in rl.read_text().splitlines():
                for tok in line.split():
                    if tok.lower().endswith(AUDIO_EXTENSIONS):
                        names.add(Path(tok).name)
        files = [p for p in files if p.name in names or "simulated_rirs" in p.parts]
    return Listing([Candidate(str(p), None, "rir") for p in files], min_duration=0.0)


KINDS: dict[str, Callable[[Path, dict], Listing]] = {
    "folder": _folder,
    "voxceleb1": _voxceleb1,
    "voxceleb2": _voxceleb2,
    "librispeech": _librispeech,
    "speechocean762": _speechocean762,
    "musan": _musan,
    "rirs": _rirs,
}


def probe_all(paths: list[str], policy: Policy, workers: int, progress: bool = True) -> list[Probe]:
    """Probe files in parallel threads (libsndfile releases the GIL while it reads)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        it = pool.map(lambda p: probe(p, policy), paths, chunksize=1)
        return list(tqdm(it, total=len(paths), desc="probing", unit="file", disable=not progress, mininterval=1.0))


def prepare(kind: str, root: str | os.PathLike, out: str | os.PathLike, *, policy: Policy | None = None,
            workers: int | None = None, progress: bool = True, **options) -> dict:
    """Build ``out/manifest.csv``, ``out/report.csv``, subsets and trial lists; returns a summary."""
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; choose one of {', '.join(KINDS)}")
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        hint = f" (get it from {WHERE_TO_GET[kind]})" if WHERE_TO_GET.get(kind) else ""
        raise FileNotFoundError(f"{root}: no such folder{hint}")
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    t0 = time.perf_counter()
    listing = KINDS[kind](root, {**options, "out": out, "workers": workers})
    policy = policy or Policy()
    if listing.min_duration is not None:
        policy = Policy(listing.min_duration, policy.sample_rate, policy.allow_upsample, policy.check_content)
    probes = probe_all([c.path for c in listing.candidates], policy, workers, progress)
    good: list[Entry] = []
    report_rows = []
    for cand, pr in zip(listing.candidates, probes):
        if pr.reason:
            report_rows.append((cand.path, "rejected", pr.reason))
            continue
        if pr.note:
            report_rows.append((cand.path, "kept", pr.note))
        good.append(Entry(cand.path, cand.speaker, pr.duration, cand.category))
    write_manifest(out / "manifest.csv", good)
    _write_report(out / "report.csv", report_rows)
    by_path = {e.path: e for e in good}
    for name, paths in listing.subsets.items():
        write_manifest(out / name, [by_path[p] for p in paths if p in by_path])
    trials_kept = {name: _copy_trials(src, out / name, listing.audio_root or root, by_path)
                   for name, src in listing.trials.items()}
    elapsed = time.perf_counter() - t0
    summary = {
        "kind": kind, "root": str(root), "files": len(listing.candidates), "kept": len(good),
        "rejected": sum(r[1] == "rejected" for r in report_rows), "speakers": len({e.speaker for e in good if e.speaker}),
        "hours": round(sum(e.duration for e in good) / 3600, 3), "seconds": round(elapsed, 2),
        "files_per_second": round(len(listing.candidates) / elapsed, 1) if elapsed else None,
        "subsets": sorted(listing.subsets), "trials": trials_kept,
        "trials_audio_root": str((listing.audio_root or root).resolve()) if listing.trials else None,
    }
    atomic_write_text(out / "prepare.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_report(path: Path, rows) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("path", "action", "reason"))
        w.writerows(rows)


def _copy_trials(src: Path, dst: Path, audio_root: Path, good: dict[str, Entry]) -> dict:
    """Copy a trial list, dropping trials whose audio was rejected (paths kept as given)."""
    trials = read_trials(src)
    base = audio_root.resolve()
    kept = [t for t in trials if str(base / t.a) in good and str(base / t.b) in good]
    write_trials(dst, kept)
    return {"source": str(src), "trials": len(trials), "kept": len(kept)}


__all__ = ["prepare", "KINDS", "Policy", "scan", "AUDIO_EXTENSIONS", "Trial"]
