"""``sslspeaker demo``: the whole pipeline in a few minutes on a laptop CPU.

1. Data. Without ``--data``: a synthetic corpus from the project's generator
   (``sslspeaker.data.synth``): training speakers ``0..N-1`` and a disjoint set of test
   speakers from index ``test_first_speaker`` on. With ``--data DIR``: a folder of speech whose
   sub-folders are speakers (found by descending while the tree does not branch, so a corpus
   root such as speechocean762's, with ``WAVE/SPEAKERxxxx/*.flac``, works too); speakers are
   split into training and held-out test speakers by sorted name (``split_speakers``).
2. Trials: a balanced, seeded VoxCeleb-format list over the test speakers only.
3. Training: MoCo with the project's trainer, **without labels** (the training manifest has
   no speaker column), for a step count derived from the time budget, capped by that budget.
4. Evaluation on the unseen test speakers: the same architecture at its random initialisation
   (the trainer's step-0 weights) against the trained encoder; results JSON, score-distribution
   and DET plots for each, and ``report.json`` summarising both.
5. Export: ``model.safetensors`` with the EER threshold **of the test trials themselves**
   (said so in the model's ``threshold_source``), and an example ``sslspeaker verify`` line.

Everything lands under the output folder; a run is a function of its settings and ``--seed``
(except where the time cap stops training early, which the report says).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import Config, ConfigError, config_from_dict, merge_trees, parse_overrides

RECIPE = "demo.yaml"
REQUIRED_KEYS = ("eer", "eer_threshold", "min_dcf_0.01")


class DemoError(ValueError):
    """A demo that cannot run as asked (bad data folder, bad settings); the message says why."""


@dataclass
class DemoSettings:
    train_speakers: int = 200
    train_utterances: int = 8
    test_speakers: int = 40
    test_utterances: int = 10
    test_first_speaker: int = 100000
    min_duration: float = 2.0
    max_duration: float = 4.0
    max_trials: int = 4000
    minutes: float = 5.0
    examples_per_second: float = 40.0
    test_fraction: float = 0.2
    min_seconds: float = 1.0
    workers: int = 0


# ---- settings ------------------------------------------------------------------------------
def recipe_text() -> str:
    """The packaged demo recipe (``sslspeaker/configs/demo.yaml``)."""
    return resources.files("sslspeaker").joinpath("configs", RECIPE).read_text()


def _settings(values: dict) -> DemoSettings:
    fields = {f.name: f for f in dataclasses.fields(DemoSettings)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown key demo.{sorted(unknown)[0]} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for k, v in values.items():
        tp = fields[k].type
        if tp == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"demo.{k}: expected an integer, got {v!r}")
        if tp == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"demo.{k}: expected a number, got {v!r}")
            v = float(v)
        kwargs[k] = v
    s = DemoSettings(**kwargs)
    checks = [
        (s.train_speakers >= 1 and s.train_utterances >= 1, "train_speakers and train_utterances must be >= 1"),
        (s.test_speakers >= 2, "test_speakers must be >= 2 (different-speaker trials)"),
        (s.test_utterances >= 2, "test_utterances must be >= 2 (same-speaker trials)"),
        (s.test_first_speaker >= s.train_speakers, "test_first_speaker must be >= train_speakers (disjoint speakers)"),
        (0 < s.min_duration <= s.max_duration, "need 0 < min_duration <= max_duration"),
        (s.max_trials >= 2, "max_trials must be >= 2"),
        (s.minutes > 0 and s.examples_per_second > 0, "minutes and examples_per_second must be > 0"),
        (0 < s.test_fraction < 1, "test_fraction must be in (0, 1)"),
    ]
    for ok, why in checks:
        if not ok:
            raise ConfigError(f"demo: {why}")
    return s


def load_demo_config(overrides: list[str] | None = None) -> tuple[DemoSettings, dict]:
    """(demo settings, training-recipe tree) from the packaged recipe plus ``key=value`` overrides."""
    tree = yaml.safe_load(recipe_text()) or {}
    tree = merge_trees(tree, parse_overrides(list(overrides or [])))
    demo = tree.pop("demo", None) or {}
    if not isinstance(demo, dict):
        raise ConfigError("demo: expected a mapping of settings")
    settings = _settings(demo)
    probe = merge_trees(tree, {"data": {"train": []}})
    try:
        config_from_dict(probe)  # unknown keys / wrong types fail now, before minutes of work
    except ConfigError as exc:
        raise ConfigError(f"demo recipe: {exc}") from None
    return settings, tree


# ---- data ----------------------------------------------------------------------------------
def _entries(manifest: Path):
    from .data.manifest import read_manifest

    return read_manifest(manifest)


def _stamp_matches(folder: Path, stamp: dict) -> bool:
    f = folder / "demo-corpus.json"
    if not f.is_file() or not (folder / "manifest.csv").is_file():
        return False
    try:
        if json.loads(f.read_text()) != stamp:
            return False
        return all(os.path.isfile(e.path) for e in _entries(folder / "manifest.csv"))
    except (ValueError, OSError):
        return False


def synthetic_corpus(out: Path, s: DemoSettings, seed: int, say: Callable[[str], None]) -> tuple[list, list, Path]:
    """(training entries, test entries, test audio root): generated, or reused when already there."""
    from .data.synth import generate_corpus

    workers = s.workers or os.cpu_count() or 1
    parts = {"train": (s.train_speakers, s.train_utterances, 0),
             "test": (s.test_speakers, s.test_utterances, s.test_first_speaker)}
    result = {}
    for name, (n_spk, n_utt, first) in parts.items():
        folder = out / "corpus" / name
        stamp = {"seed": seed, "speakers": n_spk, "utterances": n_utt, "first_speaker": first,
                 "min_duration": s.min_duration, "max_duration": s.max_duration}
        t0 = time.perf_counter()
        if _stamp_matches(folder, stamp):
            say(f"  {name}: {n_spk} speakers x {n_utt} utterances already in {folder} (same settings), reused")
        else:
            if folder.exists():
                shutil.rmtree(folder)
            manifest = generate_corpus(folder, n_speakers=n_spk, utterances_per_speaker=n_utt, seed=seed,
                                       min_duration=s.min_duration, max_duration=s.max_duration, workers=workers,
                                       first_speaker=first)
            (folder / "demo-corpus.json").write_text(json.dumps(stamp))
            hours = sum(e.duration for e in _entries(manifest)) / 3600
            say(f"  {name}: {n_spk} speakers (ids {first}..{first + n_spk - 1}) x {n_utt} utterances, "
                f"{60 * hours:.1f} min of audio, {time.perf_counter() - t0:.0f} s -> {folder}")
        result[name] = _entries(folder / "manifest.csv")
    # resolved like the manifests' paths, so trial paths come out relative (corpus may be a symlink)
    return result["train"], result["test"], (out / "corpus" / "test").resolve()


def speaker_folders(root: str | os.PathLike) -> tuple[Path, dict[str, list[Path]], int]:
    """(speaker root, {speaker: audio files}, loose files ignored) of a folder of speech.

    Speakers are the sub-folders of the first level at which the tree branches: from ``root``,
    descend while every audio file lies in the same sub-folder and that sub-folder itself holds
    speaker folders (so ``speechocean762/`` descends into ``WAVE/``). Files below a speaker
    folder, at any depth, are that speaker's; audio files directly in the speaker root are ignored.
    """
    from .data.prepare import scan

    root = Path(root)
    if not root.is_dir():
        raise DemoError(f"--data {root}: no such folder")
    files = scan(root)
    if not files:
        raise DemoError(f"--data {root}: no audio files found (looked for .wav, .flac, .ogg, .opus, .mp3, .aiff)")
    parts = [f.relative_to(root).parts for f in files]
    depth = 0
    while all(len(p) > depth + 2 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    speaker_root = root.joinpath(*parts[0][:depth]) if depth else root
    groups: dict[str, list[Path]] = {}
    loose = 0
    for f, p in zip(files, parts):
        if len(p) > depth + 1:
            groups.setdefault(p[depth], []).append(f)
        else:
            loose += 1
    return speaker_root, {k: groups[k] for k in sorted(groups)}, loose


def folder_corpus(data: str | os.PathLike, s: DemoSettings, say: Callable[[str], None]) -> tuple[list, list, Path]:
    """(training entries without speakers, test entries with speakers, test audio root) of ``--data``."""
    from .data.audio import AudioError, audio_info
    from .data.manifest import Entry
    from .data.trials import split_speakers

    speaker_root, groups, loose = speaker_folders(data)
    if len(groups) < 2:
        found = ", ".join(list(groups)[:3]) or "none"
        raise DemoError(f"--data {data}: found {len(groups)} speaker folder(s) under {speaker_root} ({found}); the "
                        "demo needs at least 3 (a speaker = a sub-folder of audio files): 2 or more held out for "
                        "the trial list and 1 or more for training")
    try:
        train_spk, test_spk = split_speakers(groups, s.test_fraction)
    except ValueError as exc:
        raise DemoError(f"--data {data}: {exc}; a speaker = a sub-folder of audio files") from None
    entries: dict[str, list[Entry]] = {}
    dropped = {"unreadable": 0, "short": 0}
    for spk, paths in groups.items():
        for p in paths:
            try:
                dur = audio_info(p).duration
            except AudioError:
                dropped["unreadable"] += 1
                continue
            if dur < s.min_seconds:
                dropped["short"] += 1
                continue
            entries.setdefault(spk, []).append(Entry(str(p), spk, dur))
    train = [Entry(e.path, None, e.duration) for spk in train_spk for e in entries.get(spk, [])]
    test = [e for spk in test_spk for e in entries.get(spk, [])]
    say(f"  {speaker_root}: {len(groups)} speakers -> {len(train_spk)} for training ({len(train)} files, "
        f"labels not used), {len(test_spk)} held out for trials ({len(test)} files; every "
        f"{round(1 / s.test_fraction)}th speaker by sorted name)")
    notes = [f"{n} {why}" for why, n in (("unreadable", dropped["unreadable"]),
                                         (f"shorter than {s.min_seconds:g} s", dropped["short"])) if n]
    if loose:
        notes.append(f"{loose} outside speaker folders")
    if notes:
        say(f"  left out: {', '.join(notes)} files")
    if not train:
        raise DemoError(f"--data {data}: no usable training audio in {len(train_spk)} training speakers")
    return train, test, speaker_root


# ---- the demo ------------------------------------------------------------------------------
def _table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'encoder':<34}{'EER %':>8}{'minDCF(0.01)':>14}", "-" * 56]
    for name, r in rows:
        lines.append(f"{name:<34}{r['eer']:>8.2f}{r['min_dcf_0.01']:>14.3f}")
    return "\n".join(lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _pick_example(trials, audio_root: Path) -> tuple[str, str]:
    from .data.manifest import resolve

    t = next((t for t in trials if t.label == 1), trials[0])
    return resolve(t.a, str(audio_root)), resolve(t.b, str(audio_root))


def _rel(p: str | os.PathLike) -> str:
    """A path as the user can type it from the current folder."""
    try:
        r = os.path.relpath(p)
    except ValueError:
        return str(p)
    return r if not r.startswith("../../") else str(Path(p).resolve())


def run_demo(out: str | os.PathLike = "sslspeaker-demo", data: str | os.PathLike | None = None,
             minutes: float | None = None, seed: int = 0, overrides: list[str] | None = None,
             progress: bool = True, say: Callable[[str], None] | None = None) -> dict:
    """Run the demo into ``out``; returns the report (also written to ``out/report.json``)."""
    from .data.manifest import Entry, write_manifest, write_trials
    from .data.trials import build_trials
    from .evaluation.evaluate import evaluate
    from .inference.model import export_model
    from .training.trainer import CHECKPOINT, Trainer

    say = say or (lambda msg: print(msg, flush=True))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    settings, tree = load_demo_config(overrides)
    if minutes is not None:
        if minutes <= 0:
            raise ConfigError(f"--minutes must be > 0, got {minutes}")
        settings.minutes = float(minutes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. data
    t0 = time.perf_counter()
    if data is None:
        say(f"[1/5] synthetic corpus (seed {seed}): training speakers and disjoint, unseen test speakers")
        train_entries, test_entries, audio_root = synthetic_corpus(out, settings, seed, say)
        source = {"kind": "synthetic", "generator": "sslspeaker.data.synth", "seed": seed,
                  "train_speakers": f"0..{settings.train_speakers - 1}",
                  "test_speakers": f"{settings.test_first_speaker}..{settings.test_first_speaker + settings.test_speakers - 1}"}
    else:
        say(f"[1/5] speech folder {data}: speaker = sub-folder, used only to hold speakers out for the trials")
        train_entries, test_entries, audio_root = folder_corpus(data, settings, say)
        source = {"kind": "folder", "path": str(Path(data).resolve()), "speaker_root": str(audio_root.resolve()),
                  "test_fraction": settings.test_fraction}
    train_manifest = out / "train.csv"  # no speaker column: the training run cannot see labels
    write_manifest(train_manifest, [Entry(e.path, None, e.duration) for e in train_entries], relative=False)
    train_spk = {e.speaker for e in train_entries if e.speaker}
    test_spk = {e.speaker for e in test_entries}
    if train_spk & test_spk:  # cannot happen by construction; a demo that claims "unseen" checks it
        raise DemoError(f"test speakers also in training: {sorted(train_spk & test_spk)[:5]}")
    timings["data_s"] = round(time.perf_counter() - t0, 1)

    # 2. trials
    try:
        trials = build_trials(test_entries, settings.max_trials, seed, relative_to=audio_root)
    except ValueError as exc:
        raise DemoError(f"cannot build a trial list over the {len(test_spk)} test speakers: {exc}") from None
    trials_path = out / "trials.txt"
    write_trials(trials_path, trials)
    n_tgt = sum(t.label for t in trials)
    say(f"[2/5] trials: {len(trials)} ({n_tgt} same-speaker, {len(trials) - n_tgt} different-speaker) over "
        f"{len(test_spk)} test speakers -> {trials_path}")

    # 3. training setup: steps from the budget, queue no longer than an epoch of keys
    batch = int(tree.get("train", {}).get("batch_size", 64))
    if len(train_entries) < batch:
        say(f"  note: {len(train_entries)} training files < batch size {batch}: batch size set to {len(train_entries)}")
        batch = len(train_entries)
    crop = float(tree.get("data", {}).get("crop_seconds", 1.8))
    steps_per_epoch = len(train_entries) // batch
    target_steps = settings.minutes * 60.0 * settings.examples_per_second / batch
    epochs = max(1, int(round(target_steps / steps_per_epoch)))
    method = tree.setdefault("method", {})
    opts = dict(method.get("options") or {})
    if method.get("name", "moco") == "moco":
        limit = steps_per_epoch * batch
        if int(opts.get("queue_size", 65536)) > limit:
            opts["queue_size"] = limit
        method["options"] = opts
    run_tree = merge_trees(tree, {"data": {"train": [str(train_manifest.resolve())]},
                             "train": {"batch_size": batch, "epochs": epochs, "seed": seed},
                             "validation": {"trials": None}})
    cfg: Config = config_from_dict(run_tree)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own run folder: always a fresh run
    trainer = Trainer(cfg, run_dir)
    trainer.save()  # step 0: the random initialisation, kept as the untrained baseline
    untrained_model = export_model(run_dir, out / "model_untrained.safetensors")

    # 4a. the untrained encoder
    say(f"[3/5] evaluating the untrained encoder ({cfg.model.encoder}, random init, seed {seed})")
    t0 = time.perf_counter()
    r0 = evaluate(untrained_model, trials_path, audio_root, out=out / "results_untrained.json", cache=False,
                  progress=progress)
    timings["eval_untrained_s"] = round(time.perf_counter() - t0, 1)
    say(f"  EER {r0['eer']:.2f} %, minDCF(0.01) {r0['min_dcf_0.01']:.3f}")

    # 3b. training
    say(f"[4/5] training {cfg.method.name} without labels: {len(train_entries)} files, batch {batch}, "
        f"{crop:g}-s crops, {epochs} epochs x {steps_per_epoch} steps (budget {settings.minutes:g} min)")
    t0 = time.perf_counter()
    result = trainer.train(max_minutes=settings.minutes)
    timings["train_s"] = round(time.perf_counter() - t0, 1)
    capped = not result["finished"]
    say(f"  {result['step']} steps in {timings['train_s'] / 60:.1f} min"
        + (f" (stopped by the {settings.minutes:g}-min cap before the planned {trainer.total_steps})" if capped else ""))

    # 4b. the trained encoder
    say("[5/5] evaluating the trained encoder on the same trials (speakers never seen in training)")
    t0 = time.perf_counter()
    r1 = evaluate(run_dir / CHECKPOINT, trials_path, audio_root, out=out / "results_trained.json", cache=False,
                  progress=progress)
    timings["eval_trained_s"] = round(time.perf_counter() - t0, 1)
    threshold = float(r1["eer_threshold"])
    threshold_source = (f"EER threshold computed on the demo's own test trials ({trials_path.resolve()}, "
                        f"{len(trials)} trials over {len(test_spk)} held-out speakers): the evaluation set "
                        "itself, not a separate development set, so it is optimistic for those trials")
    model_path = export_model(run_dir, out / "model.safetensors", threshold=threshold,
                              threshold_source=threshold_source)
    a, b = _pick_example(trials, audio_root)
    verify_cmd = f"sslspeaker verify --model {_rel(model_path)} {_rel(a)} {_rel(b)}"

    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    keep = ("eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.05")
    summary = {
        "untrained": {**{k: r0[k] for k in keep}, "results": str((out / "results_untrained.json").resolve()),
                      "plots": r0["plots"], "model": str(untrained_model.resolve())},
        "trained": {**{k: r1[k] for k in keep}, "results": str((out / "results_trained.json").resolve()),
                    "plots": r1["plots"], "model": str(Path(model_path).resolve())},
    }
    report: dict[str, Any] = {
        "demo": "sslspeaker demo",
        **summary,
        "eer_reduction": round(1.0 - r1["eer"] / r0["eer"], 4) if r0["eer"] > 0 else None,
        "model": {"path": str(Path(model_path).resolve()), "threshold": threshold,
                  "threshold_source": threshold_source, "verify_example": verify_cmd},
        "data": {**source, "train_files": len(train_entries), "train_manifest": str(train_manifest.resolve()),
                 "train_speakers_count": len(train_spk) if train_spk else None,
                 "test_files": len(test_entries), "test_speakers_count": len(test_spk),
                 "test_speakers": sorted(test_spk), "speakers_disjoint": True, "labels_used_in_training": False},
        "trials": {"path": str(trials_path.resolve()), "audio_root": str(Path(audio_root).resolve()),
                   "n_trials": len(trials), "targets": n_tgt, "nontargets": len(trials) - n_tgt,
                   "seed": seed, "builder": "sslspeaker.data.trials.build_trials"},
        "training": {"run": str(run_dir.resolve()), "steps": result["step"], "planned_steps": trainer.total_steps,
                     "epochs": epochs, "steps_per_epoch": steps_per_epoch, "stopped_by_time_cap": capped,
                     "budget_minutes": settings.minutes, "minutes": result["minutes"],
                     "examples_per_second_nominal": settings.examples_per_second},
        "settings": dataclasses.asdict(settings),
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "seed": seed,
        "overrides": list(overrides or []),
        "timings": timings,
        "torch_threads": __import__("torch").get_num_threads(),
        "date": _now(),
    }
    with open(out / "report.json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    say("")
    say(f"Speaker verification on {len(test_spk)} speakers never seen in training "
        f"({len(trials)} trials, cosine scoring; no labels used in training):")
    say(_table([("untrained (same net, random init)", r0),
                (f"trained ({result['step']} steps, {result['minutes']:.1f} min)", r1)]))
    if report["eer_reduction"] is not None:
        change = report["eer_reduction"]
        say(f"EER {r0['eer']:.1f} % -> {r1['eer']:.1f} % " + (f"({100 * change:.0f} % lower)" if change >= 0 else
                                                            "(higher: this run did not learn; try more --minutes)"))
    say("")
    say(f"report:  {_rel(out / 'report.json')}  (full results: {_rel(out / 'results_untrained.json')}, "
        f"{_rel(out / 'results_trained.json')})")
    say(f"plots:   score distributions {_rel(r0['plots']['scores'])}, {_rel(r1['plots']['scores'])}")
    say(f"         DET curves          {_rel(r0['plots']['det'])}, {_rel(r1['plots']['det'])}")
    say(f"model:   {_rel(model_path)}  (threshold {threshold:.4f}: the EER threshold of these test trials, "
        "so optimistic on them)")
    say(f"try:     {verify_cmd}")
    say(f"done in {timings['total_s'] / 60:.1f} min (data {timings['data_s']:.0f} s, training "
        f"{timings['train_s']:.0f} s, evaluation {timings['eval_untrained_s'] + timings['eval_trained_s']:.0f} s)")
    return report


__all__ = ["run_demo", "load_demo_config", "DemoSettings", "DemoError", "speaker_folders", "folder_corpus",
           "synthetic_corpus", "recipe_text", "REQUIRED_KEYS"]
