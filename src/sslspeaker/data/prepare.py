"""``sslspeaker prepare KIND ROOT --out DIR``: manifests, trial lists and a rejection report.

Every corpus goes through the same path: list candidate files (with speaker/category from
the corpus layout), probe them in parallel (header + partial reads, see ``validate``), write
``manifest.csv`` with the good ones and ``report.csv`` with every file rejected, altered or
skipped by the scan (symlink loops, names that are not UTF-8, shown with escapes).
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

from ..fileio import atomic_open, atomic_path, atomic_write_text, remove_stale_temps
from .folders import AUDIO_EXTENSIONS, scan, shown_name
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
    "cnceleb": "https://www.openslr.org/82 (CN-Celeb1 and CN-Celeb2)",
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
    # outputs made from the kept files (out folder, path -> kept entry) -> their counts for the summary
    extra: Callable[[Path, dict[str, Entry]], dict] | None = None


def _folder(root: Path, options) -> Listing:
    out = []
    for p in scan(root, skipped=options.get("skipped")):
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
    cands = [Candidate(str(p), p.relative_to(wav).parts[0]) for p in scan(wav, skipped=options.get("skipped"))]
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
    m4a = sorted(p for p in scan(root, (".m4a",), options.get("skipped")))
    decoded = scan(root, skipped=options.get("skipped"))
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
    return Listing([Candidate(str(p), p.name.split("-")[0]) for p in scan(root, skipped=options.get("skipped"))])


def _speechocean762(root: Path, options) -> Listing:
    wave = root / "WAVE" if (root / "WAVE").is_dir() else root
    cands = [Candidate(str(p), p.parent.name) for p in scan(wave, skipped=options.get("skipped"))]
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
    for p in scan(root, skipped=options.get("skipped")):
        category = p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "noise"
        cands.append(Candidate(str(p), None, category))
    return Listing(cands)


def _rirs(root: Path, options) -> Listing:
    # RIRS_NOISES mixes isotropic noises into real_rirs_isotropic_noises; its rir_list names the RIRs.
    files = scan(root, skipped=options.get("skipped"))
    rir_lists = list(root.rglob("rir_list"))
    if rir_lists:
        names = set()
        for rl in rir_lists:
            for line in _utf8_text(rl).splitlines():
                for tok in line.split():
                    if tok.lower().endswith(AUDIO_EXTENSIONS):
                        names.add(Path(tok).name)
        files = [p for p in files if p.name in names or "simulated_rirs" in p.parts]
    return Listing([Candidate(str(p), None, "rir") for p in files], min_duration=0.0)


def _cnceleb(root: Path, options) -> Listing:
    from . import cnceleb

    one, two = cnceleb.corpus_folders(root)
    cands = []
    for folder in (f for f in (one, two) if f is not None):
        cands += [Candidate(str(p), cnceleb.speaker_of(p, folder / "data")) for p in
                  scan(folder, skipped=options.get("skipped"))]
    listing = Listing(cands, audio_root=one)
    two_paths = [c.path for c in cands if two is not None and Path(c.path).is_relative_to(two)]
    listing.subsets["cnceleb2.csv"] = two_paths
    if one is not None:
        models = cnceleb.enrolment(one)
        trial_list = cnceleb.trials(one, models)
        dev = _cnceleb1_dev(one, cands, models, trial_list)
        listing.subsets["cnceleb1_dev.csv"] = dev
        listing.subsets["test.csv"] = sorted({t for _, _, t in trial_list})
        listing.extra = lambda out, kept: cnceleb.write_enrolment(out, models, trial_list, one, kept)
    listing.subsets["train.csv"] = listing.subsets.get("cnceleb1_dev.csv", []) + two_paths
    return listing


def _cnceleb1_dev(one: Path, cands: list[Candidate], models: dict, trial_list) -> list[str]:
    """CN-Celeb1's training files: its ``data/`` speakers in ``dev/dev.lst``, else those of no evaluation file."""
    from .cnceleb import list_words

    data = one / "data"
    mine = [c for c in cands if Path(c.path).is_relative_to(data)]
    if (one / "dev" / "dev.lst").is_file():
        dev = {w[0] for w in list_words(one / "dev" / "dev.lst")}
    else:
        evaluated = {c.speaker for c in mine if any(c.path in paths for paths in models.values())}
        evaluated |= {Path(t).name.split("-")[0] for _, _, t in trial_list}
        dev = {c.speaker for c in mine} - evaluated
    return [c.path for c in mine if c.speaker in dev]


def _utf8_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r})") from None


KINDS: dict[str, Callable[[Path, dict], Listing]] = {
    "folder": _folder,
    "voxceleb1": _voxceleb1,
    "voxceleb2": _voxceleb2,
    "librispeech": _librispeech,
    "speechocean762": _speechocean762,
    "musan": _musan,
    "rirs": _rirs,
    "cnceleb": _cnceleb,
}


def probe_all(paths: list[str], policy: Policy, workers: int, progress: bool = True) -> list[Probe]:
    """Probe files in parallel threads (libsndfile releases the GIL while it reads)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        it = pool.map(lambda p: probe(p, policy), paths, chunksize=1)
        return list(tqdm(it, total=len(paths), desc="probing", unit="file", disable=not progress, mininterval=1.0))


def prepare(kind: str, root: str | os.PathLike, out: str | os.PathLike, *, policy: Policy | None = None,
            workers: int | None = None, progress: bool = True, **options) -> dict:
    """Build ``out/manifest.csv``, ``out/report.csv``, subsets and trial lists; returns a summary.

    Bad input (unknown kind, missing root, a root that is a file, an output folder that cannot be
    written) raises before any file is probed; every input is read before the first output is
    written, each output is written atomically, and temporary files of killed runs are removed.
    """
    root, out = _corpus_root(kind, root), _output_folder(out)
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    t0 = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    listing = KINDS[kind](root, {**options, "out": out, "workers": workers, "skipped": skipped})
    probes = probe_all([c.path for c in listing.candidates], _policy_for(listing, policy), workers, progress)
    good, report_rows = _sort_probes(listing.candidates, probes, skipped)
    trials = {name: (src, read_trials(src)) for name, src in listing.trials.items()}
    trials_kept = _write_outputs(out, listing, good, report_rows, trials, listing.audio_root or root)
    summary = _summary(kind, root, listing, good, report_rows, trials_kept, time.perf_counter() - t0)
    _write_guarded(out, "prepare.json", lambda path: atomic_write_text(path, json.dumps(summary, indent=2) + "\n"))
    return summary


def _corpus_root(kind: str, root: str | os.PathLike) -> Path:
    """``root`` resolved, once ``kind`` is known and ``root`` is a folder with a UTF-8 name."""
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; choose one of {', '.join(KINDS)}")
    root = Path(root).resolve()
    if root.is_file():
        raise NotADirectoryError(f"{root}: is a file, not a corpus folder")
    if not root.is_dir():
        hint = f" (get it from {WHERE_TO_GET[kind]})" if WHERE_TO_GET.get(kind) else ""
        raise FileNotFoundError(f"{root}: no such folder{hint}")
    _require_utf8(root, "corpus folder")
    return root


def _require_utf8(path: Path, what: str) -> None:
    """Manifests and reports are UTF-8: a path that is not cannot go into them."""
    if shown_name(path) != str(path):
        raise ValueError(f"{shown_name(path)}: the {what}'s name is not UTF-8")


def _output_folder(out: str | os.PathLike) -> Path:
    """``out``, created if needed; raises naming it when it is a file or cannot be written."""
    out = Path(out)
    _require_utf8(out.resolve(), "output folder")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"output folder {out}: cannot be created ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {out}: not writable")
    return out


def _policy_for(listing: Listing, policy: Policy | None) -> Policy:
    policy = policy or Policy()
    if listing.min_duration is None:
        return policy
    return Policy(listing.min_duration, policy.sample_rate, policy.allow_upsample, policy.check_content)


def _sort_probes(candidates: list[Candidate], probes: list[Probe],
                 skipped: list[tuple[str, str]]) -> tuple[list[Entry], list[tuple[str, str, str]]]:
    """(manifest entries, report rows): the scan's skips, then rejected and altered files."""
    good: list[Entry] = []
    rows = [(name, "skipped", reason) for name, reason in dict.fromkeys(skipped)]
    for cand, pr in zip(candidates, probes):
        if pr.reason:
            rows.append((cand.path, "rejected", pr.reason))
            continue
        if pr.note:
            rows.append((cand.path, "kept", pr.note))
        good.append(Entry(cand.path, cand.speaker, pr.duration, cand.category))
    return good, rows


def _write_outputs(out: Path, listing: Listing, good: list[Entry], report_rows, trials: dict,
                   audio_root: Path) -> dict:
    """Write manifest, report, subsets and trial lists (each atomically); returns the trials kept."""
    _write_guarded(out, "manifest.csv", lambda path: write_manifest(path, good))
    _write_guarded(out, "report.csv", lambda path: _write_report(path, report_rows))
    by_path = {e.path: e for e in good}
    for name, paths in listing.subsets.items():
        subset = [by_path[p] for p in paths if p in by_path]
        _write_guarded(out, name, lambda path, subset=subset: write_manifest(path, subset))
    counts = {}
    for name, (src, items) in trials.items():
        kept = _kept_trials(items, audio_root, by_path)
        _write_guarded(out, name, lambda path, kept=kept: write_trials(path, kept))
        counts[name] = {"source": str(src), "trials": len(items), "kept": len(kept)}
    if listing.extra is not None:
        counts["enrolment"] = listing.extra(out, by_path)
    return counts


def _write_guarded(out: Path, name: str, write: Callable[[Path], object]) -> None:
    """Run ``write(out / name)`` after removing temporary files killed runs left for ``name``;
    an ``OSError`` is raised again naming the output."""
    remove_stale_temps(out, name)
    try:
        write(out / name)
    except OSError as exc:
        raise OSError(f"{out / name}: cannot be written ({exc.strerror or exc})") from None


def _write_report(path: Path, rows) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("path", "action", "reason"))
        w.writerows(rows)


def _kept_trials(trials: list[Trial], audio_root: Path, good: dict[str, Entry]) -> list[Trial]:
    """The trials whose two files were both kept (paths as given)."""
    base = audio_root.resolve()
    return [t for t in trials if str(base / t.a) in good and str(base / t.b) in good]


def _summary(kind: str, root: Path, listing: Listing, good: list[Entry], report_rows, trials_kept: dict,
             elapsed: float) -> dict:
    return {
        "kind": kind, "root": str(root), "files": len(listing.candidates), "kept": len(good),
        "rejected": sum(r[1] == "rejected" for r in report_rows),
        "skipped": sum(r[1] == "skipped" for r in report_rows),
        "speakers": len({e.speaker for e in good if e.speaker}),
        "hours": round(sum(e.duration for e in good) / 3600, 3), "seconds": round(elapsed, 2),
        "files_per_second": round(len(listing.candidates) / elapsed, 1) if elapsed else None,
        "subsets": sorted(listing.subsets), "trials": trials_kept,
        "trials_audio_root": str((listing.audio_root or root).resolve()) if listing.trials else None,
    }


__all__ = ["prepare", "KINDS", "Policy", "scan", "AUDIO_EXTENSIONS", "Trial"]
