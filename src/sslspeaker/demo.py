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

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .config import Config, ConfigError, build_dataclass, config_from_dict, merge_trees, parse_overrides
from .fileio import atomic_write_text, utc_now

RECIPE = "demo.yaml"
REQUIRED_KEYS = ("eer", "eer_threshold", "min_dcf_0.01")
RUN = "run"  # the training run's folder in the output folder
RESULT_KEYS = ("eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.05")  # what the report keeps of each evaluation


class DemoError(ValueError):
    """A demo that cannot run as asked (bad data folder, bad settings); the message says why."""


@dataclass
class DemoSettings:
    """The recipe's ``demo`` section (see ``configs/demo.yaml``)."""

    train_speakers: int = 200  # synthetic training speakers, indices 0..train_speakers-1
    train_utterances: int = 8
    test_speakers: int = 40  # held-out synthetic speakers, from index test_first_speaker on
    test_utterances: int = 10
    test_first_speaker: int = 100000
    min_duration: float = 2.0  # synthetic utterance lengths, seconds
    max_duration: float = 4.0
    max_trials: int = 4000  # balanced: half same-speaker pairs
    minutes: float = 5.0  # training budget, a hard cap
    examples_per_second: float = 40.0  # nominal training speed: the first plan of steps
    test_fraction: float = 0.2  # --data: share of speakers held out for the trials
    min_seconds: float = 1.0  # --data: shorter files are left out
    workers: int = 0  # corpus generation processes (0 = one per core)


# Checks beyond the types, each with what it asks for.
BOUNDS: tuple[tuple[Callable[[DemoSettings], bool], str], ...] = (
    (lambda s: s.train_speakers >= 1 and s.train_utterances >= 1, "train_speakers and train_utterances must be >= 1"),
    (lambda s: s.test_speakers >= 2, "test_speakers must be >= 2 (different-speaker trials)"),
    (lambda s: s.test_utterances >= 2, "test_utterances must be >= 2 (same-speaker trials)"),
    (lambda s: s.test_first_speaker >= s.train_speakers,
     "test_first_speaker must be >= train_speakers (disjoint speakers)"),
    (lambda s: 0 < s.min_duration <= s.max_duration, "need 0 < min_duration <= max_duration"),
    (lambda s: s.max_trials >= 2, "max_trials must be >= 2"),
    (lambda s: s.minutes > 0 and s.examples_per_second > 0, "minutes and examples_per_second must be > 0"),
    (lambda s: 0 < s.test_fraction < 1, "test_fraction must be in (0, 1)"),
)


@dataclass
class Corpus:
    """The demo's data: training entries (speakers unused), test entries, the test audio root, its source."""

    train: list
    test: list
    audio_root: Path
    source: dict
    manifest: Path  # the training manifest, written without a speaker column

    @property
    def train_speakers(self) -> set[str]:
        return {e.speaker for e in self.train if e.speaker}

    @property
    def test_speakers(self) -> set[str]:
        return {e.speaker for e in self.test}


@dataclass
class TrialList:
    """The demo's trial list and where it is written."""

    path: Path
    trials: list

    @property
    def targets(self) -> int:
        return sum(t.label for t in self.trials)


@dataclass
class Plan:
    """The training run: its config, and the numbers the demo chose it by."""

    cfg: Config
    batch: int
    crop: float
    epochs: int
    steps_per_epoch: int


# ---- settings ------------------------------------------------------------------------------
def recipe_text() -> str:
    """The packaged demo recipe (``sslspeaker/configs/demo.yaml``)."""
    return resources.files("sslspeaker").joinpath("configs", RECIPE).read_text()


def _settings(values: Any) -> DemoSettings:
    """The ``demo`` section, typed by the shared strict loader, then bounds-checked."""
    if not isinstance(values, dict):
        raise ConfigError("demo: expected a mapping of settings")
    s = build_dataclass(DemoSettings, values, "demo")
    for ok, why in BOUNDS:
        if not ok(s):
            raise ConfigError(f"demo: {why}")
    return s


def load_demo_config(overrides: list[str] | None = None) -> tuple[DemoSettings, dict]:
    """(demo settings, training-recipe tree) from the packaged recipe plus ``key=value`` overrides."""
    tree = yaml.safe_load(recipe_text()) or {}
    tree = merge_trees(tree, parse_overrides(list(overrides or [])))
    settings = _settings(tree.pop("demo", None) or {})
    _recipe_config(tree)  # unknown keys / wrong types fail now, before minutes of work
    return settings, tree


def _recipe_config(tree: dict) -> Config:
    """The training recipe's config, checked, with no training data yet."""
    try:
        return config_from_dict(merge_trees(tree, {"data": {"train": []}}))
    except ConfigError as exc:
        raise ConfigError(f"demo recipe: {exc}") from None


def _settings_for_run(overrides: list[str] | None, minutes: float | None) -> tuple[DemoSettings, dict]:
    """``load_demo_config``, with ``--minutes`` (when given) over the recipe's budget."""
    settings, tree = load_demo_config(overrides)
    if minutes is not None:
        if minutes <= 0:
            raise ConfigError(f"--minutes must be > 0, got {minutes}")
        settings.minutes = float(minutes)
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
    workers = s.workers or os.cpu_count() or 1
    parts = {"train": (s.train_speakers, s.train_utterances, 0),
             "test": (s.test_speakers, s.test_utterances, s.test_first_speaker)}
    result = {}
    for name, (n_spk, n_utt, first) in parts.items():
        folder = out / "corpus" / name
        stamp = {"seed": seed, "speakers": n_spk, "utterances": n_utt, "first_speaker": first,
                 "min_duration": s.min_duration, "max_duration": s.max_duration}
        if _stamp_matches(folder, stamp):
            say(f"  {name}: {n_spk} speakers x {n_utt} utterances already in {folder} (same settings), reused")
        else:
            _generate_part(folder, stamp, workers, say)
        result[name] = _entries(folder / "manifest.csv")
    # resolved like the manifests' paths, so trial paths come out relative (corpus may be a symlink)
    return result["train"], result["test"], (out / "corpus" / "test").resolve()


def _generate_part(folder: Path, stamp: dict, workers: int, say: Callable[[str], None]) -> None:
    """One part of the synthetic corpus into an emptied ``folder``, with the stamp that lets a rerun reuse it."""
    from .data.synth import generate_corpus

    t0 = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    n_spk, n_utt, first = stamp["speakers"], stamp["utterances"], stamp["first_speaker"]
    manifest = generate_corpus(folder, n_speakers=n_spk, utterances_per_speaker=n_utt, seed=stamp["seed"],
                               min_duration=stamp["min_duration"], max_duration=stamp["max_duration"],
                               workers=workers, first_speaker=first)
    atomic_write_text(folder / "demo-corpus.json", json.dumps(stamp))
    hours = sum(e.duration for e in _entries(manifest)) / 3600
    say(f"  {folder.name}: {n_spk} speakers (ids {first}..{first + n_spk - 1}) x {n_utt} utterances, "
        f"{60 * hours:.1f} min of audio, {time.perf_counter() - t0:.0f} s -> {folder}")


def folder_corpus(data: str | os.PathLike, s: DemoSettings, say: Callable[[str], None]) -> tuple[list, list, Path]:
    """(training entries without speakers, test entries with speakers, test audio root) of ``--data``."""
    from .data.folders import speaker_entries, speaker_folders
    from .data.manifest import Entry

    try:
        speaker_root, groups, loose = speaker_folders(data)
    except ValueError as exc:
        raise DemoError(f"--data {exc}") from None
    train_spk, test_spk = _split_folder_speakers(data, speaker_root, groups, s.test_fraction)
    entries, dropped = speaker_entries(groups, s.min_seconds)
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


def _split_folder_speakers(data, speaker_root: Path, groups: dict, test_fraction: float) -> tuple[list, list]:
    """(training speakers, test speakers) of a speech folder, or a ``DemoError`` saying what a speaker is."""
    from .data.trials import split_speakers

    if len(groups) < 2:
        found = ", ".join(list(groups)[:3]) or "none"
        raise DemoError(f"--data {data}: found {len(groups)} speaker folder(s) under {speaker_root} ({found}); the "
                        "demo needs at least 3 (a speaker = a sub-folder of audio files): 2 or more held out for "
                        "the trial list and 1 or more for training")
    try:
        return split_speakers(groups, test_fraction)
    except ValueError as exc:
        raise DemoError(f"--data {data}: {exc}; a speaker = a sub-folder of audio files") from None


def _corpus(out: Path, data, settings: DemoSettings, seed: int, say: Callable[[str], None]) -> Corpus:
    """Stage 1: the synthetic corpus or the ``--data`` folder, and the label-free training manifest."""
    if data is None:
        say(f"[1/5] synthetic corpus (seed {seed}): training speakers and disjoint, unseen test speakers")
        train, test, audio_root = synthetic_corpus(out, settings, seed, say)
        first = settings.test_first_speaker
        source = {"kind": "synthetic", "generator": "sslspeaker.data.synth", "seed": seed,
                  "train_speakers": f"0..{settings.train_speakers - 1}",
                  "test_speakers": f"{first}..{first + settings.test_speakers - 1}"}
    else:
        say(f"[1/5] speech folder {data}: speaker = sub-folder, used only to hold speakers out for the trials")
        train, test, audio_root = folder_corpus(data, settings, say)
        source = {"kind": "folder", "path": str(Path(data).resolve()), "speaker_root": str(audio_root.resolve()),
                  "test_fraction": settings.test_fraction}
    return _label_free(Corpus(train, test, audio_root, source, out / "train.csv"))


def _label_free(corpus: Corpus) -> Corpus:
    """Write the training manifest without a speaker column (the run cannot see labels); check speakers are unseen."""
    from .data.manifest import Entry, write_manifest

    write_manifest(corpus.manifest, [Entry(e.path, None, e.duration) for e in corpus.train], relative=False)
    shared = corpus.train_speakers & corpus.test_speakers
    if shared:  # cannot happen by construction; a demo that claims "unseen" checks it
        raise DemoError(f"test speakers also in training: {sorted(shared)[:5]}")
    return corpus


def _trial_list(out: Path, corpus: Corpus, max_trials: int, seed: int, say: Callable[[str], None]) -> TrialList:
    """Stage 2: a balanced, seeded trial list over the test speakers only."""
    from .data.manifest import write_trials
    from .data.trials import build_trials

    n_spk = len(corpus.test_speakers)
    try:
        trials = build_trials(corpus.test, max_trials, seed, relative_to=corpus.audio_root)
    except ValueError as exc:
        raise DemoError(f"cannot build a trial list over the {n_spk} test speakers: {exc}") from None
    listed = TrialList(out / "trials.txt", trials)
    write_trials(listed.path, trials)
    say(f"[2/5] trials: {len(trials)} ({listed.targets} same-speaker, {len(trials) - listed.targets} "
        f"different-speaker) over {n_spk} test speakers -> {listed.path}")
    return listed


# ---- training and evaluation ---------------------------------------------------------------
def _plan(tree: dict, corpus: Corpus, s: DemoSettings, seed: int, say: Callable[[str], None]) -> Plan:
    """Steps from the time budget, the batch no larger than the pool, the method's options fitted to the pool."""
    from .methods import fit_options_to_pool

    recipe = _recipe_config(tree)
    n = len(corpus.train)
    batch = recipe.train.batch_size
    if n < batch:
        say(f"  note: {n} training files < batch size {batch}: batch size set to {n}")
        batch = n
    steps_per_epoch = n // batch
    target_steps = s.minutes * 60.0 * s.examples_per_second / batch
    epochs = max(1, int(round(target_steps / steps_per_epoch)))
    options = fit_options_to_pool(recipe.method.name, recipe.method.options, n, batch)
    run_tree = merge_trees(tree, {"data": {"train": [str(corpus.manifest.resolve())]},
                                  "train": {"batch_size": batch, "epochs": epochs, "seed": seed},
                                  "validation": {"trials": None}, "method": {"options": options}})
    return Plan(config_from_dict(run_tree), batch, recipe.data.crop_seconds, epochs, steps_per_epoch)


def _fresh_trainer(cfg: Config, out: Path):
    """(trainer in a fresh ``out/run``, the untrained model): step 0, the random init, kept as the baseline."""
    from .training.export import export_model
    from .training.trainer import Trainer

    run_dir = out / RUN
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own run folder: always a fresh run
    trainer = Trainer(cfg, run_dir)
    trainer.save()
    return trainer, export_model(run_dir, out / "model_untrained.safetensors")


@contextlib.contextmanager
def _timed(timings: dict, key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - t0, 1)


def _evaluate(model, trials: TrialList, corpus: Corpus, results: Path, progress: bool, system: str) -> dict:
    from .evaluation.evaluate import evaluate

    return evaluate(model, trials.path, corpus.audio_root, out=results, cache=False, progress=progress, system=system)


def _det_overlay(out: Path, r0: dict, r1: dict) -> str | None:
    """``det_untrained_vs_trained.png``: both DET curves on one pair of axes (None without matplotlib)."""
    from .errors import MissingExtraError
    from .evaluation.plots import plot_det_overlay

    systems = [{"name": r["system"], "eer": r["eer"] / 100.0, **r["det"]} for r in (r0, r1)]
    try:
        return str(plot_det_overlay(systems, out / "det_untrained_vs_trained.png",
                                    title=f"DET: {Path(r0['trials']['path']).name} · {r0['protocol']['name']}"))
    except MissingExtraError:
        return None


def _train(trainer, plan: Plan, corpus: Corpus, s: DemoSettings, timings: dict, say: Callable[[str], None]) -> dict:
    """Stage 4: label-free training, capped by the budget; the trainer's result."""
    say(f"[4/5] training {plan.cfg.method.name} without labels: {len(corpus.train)} files, batch {plan.batch}, "
        f"{plan.crop:g}-s crops, {plan.epochs} epochs x {plan.steps_per_epoch} steps (budget {s.minutes:g} min)")
    with _timed(timings, "train_s"):
        result = trainer.train(max_minutes=s.minutes)
    capped = not result["finished"]
    say(f"  {result['step']} steps in {timings['train_s'] / 60:.1f} min"
        + (f" (stopped by the {s.minutes:g}-min cap before the planned {trainer.total_steps})" if capped else ""))
    return result


def _export(run_dir: Path, out: Path, r1: dict, trials: TrialList, corpus: Corpus) -> tuple[Path, str]:
    """Stage 5: the trained model with the test trials' own EER threshold (said so); (its path, that statement)."""
    from .training.export import export_model

    threshold_source = (f"EER threshold computed on the demo's own test trials ({trials.path.resolve()}, "
                        f"{len(trials.trials)} trials over {len(corpus.test_speakers)} held-out speakers): the "
                        "evaluation set itself, not a separate development set, so it is optimistic for those trials")
    model_path = export_model(run_dir, out / "model.safetensors", threshold=float(r1["eer_threshold"]),
                              threshold_source=threshold_source)
    return Path(model_path), threshold_source


# ---- the demo ------------------------------------------------------------------------------
def run_demo(out: str | os.PathLike = "sslspeaker-demo", data: str | os.PathLike | None = None,
             minutes: float | None = None, seed: int = 0, overrides: list[str] | None = None,
             progress: bool = True, say: Callable[[str], None] | None = None) -> dict:
    """Run the demo into ``out``; returns the report (also written to ``out/report.json``)."""
    from .training.trainer import CHECKPOINT

    say = say or (lambda msg: print(msg, flush=True))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    settings, tree = _settings_for_run(overrides, minutes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _timed(timings, "data_s"):
        corpus = _corpus(out, data, settings, seed, say)
    trials = _trial_list(out, corpus, settings.max_trials, seed, say)
    plan = _plan(tree, corpus, settings, seed, say)
    trainer, untrained_model = _fresh_trainer(plan.cfg, out)
    say(f"[3/5] evaluating the untrained encoder ({plan.cfg.model.encoder}, random init, seed {seed})")
    with _timed(timings, "eval_untrained_s"):
        r0 = _evaluate(untrained_model, trials, corpus, out / "results_untrained.json", progress,
                       f"untrained {plan.cfg.model.encoder}")
    say(f"  EER {r0['eer']:.2f} %, minDCF(0.01) {r0['min_dcf_0.01']:.3f}")
    result = _train(trainer, plan, corpus, settings, timings, say)
    say("[5/5] evaluating the trained encoder on the same trials (speakers never seen in training)")
    with _timed(timings, "eval_trained_s"):
        r1 = _evaluate(out / RUN / CHECKPOINT, trials, corpus, out / "results_trained.json", progress,
                       f"{plan.cfg.method.name}-trained {plan.cfg.model.encoder}")
        r1["det_overlay"] = _det_overlay(out, r0, r1)
    model_path, threshold_source = _export(out / RUN, out, r1, trials, corpus)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    report = {
        "demo": "sslspeaker demo",
        **_scores(out, r0, r1, untrained_model, model_path),
        "model": _model_record(model_path, r1, threshold_source, trials, corpus),
        "data": _data_record(corpus),
        "trials": _trials_record(trials, corpus, seed),
        "training": _training_record(out / RUN, trainer.total_steps, plan, result, settings),
        "settings": dataclasses.asdict(settings),
        "config": json.loads(json.dumps(dataclasses.asdict(plan.cfg))),
        "seed": seed, "overrides": list(overrides or []), "timings": timings,
        "torch_threads": _torch_threads(), "date": utc_now(),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    _tell(out, model_path, report, (r0, r1, result), say)
    return report


def _scores(out: Path, r0: dict, r1: dict, untrained_model: Path, model_path: Path) -> dict:
    """The report's ``untrained`` and ``trained`` entries, and the EER reduction between them."""
    def entry(r: dict, name: str, model: Path) -> dict:
        return {**{k: r[k] for k in RESULT_KEYS}, "results": str((out / f"results_{name}.json").resolve()),
                "plots": r["plots"], "model": str(Path(model).resolve())}

    return {"untrained": entry(r0, "untrained", untrained_model), "trained": entry(r1, "trained", model_path),
            "eer_reduction": round(1.0 - r1["eer"] / r0["eer"], 4) if r0["eer"] > 0 else None,
            "det_overlay": r1.get("det_overlay")}


def _model_record(model_path: Path, r1: dict, threshold_source: str, trials: TrialList, corpus: Corpus) -> dict:
    a, b = _pick_example(trials.trials, corpus.audio_root)
    return {"path": str(model_path.resolve()), "threshold": float(r1["eer_threshold"]),
            "threshold_source": threshold_source,
            "verify_example": f"sslspeaker verify --model {_rel(model_path)} {_rel(a)} {_rel(b)}"}


def _data_record(corpus: Corpus) -> dict:
    train_spk, test_spk = corpus.train_speakers, corpus.test_speakers
    return {**corpus.source, "train_files": len(corpus.train), "train_manifest": str(corpus.manifest.resolve()),
            "train_speakers_count": len(train_spk) if train_spk else None,
            "test_files": len(corpus.test), "test_speakers_count": len(test_spk),
            "test_speakers": sorted(test_spk), "speakers_disjoint": True, "labels_used_in_training": False}


def _trials_record(trials: TrialList, corpus: Corpus, seed: int) -> dict:
    n = len(trials.trials)
    return {"path": str(trials.path.resolve()), "audio_root": str(Path(corpus.audio_root).resolve()),
            "n_trials": n, "targets": trials.targets, "nontargets": n - trials.targets,
            "seed": seed, "builder": "sslspeaker.data.trials.build_trials"}


def _training_record(run_dir: Path, planned_steps: int, plan: Plan, result: dict, s: DemoSettings) -> dict:
    return {"run": str(run_dir.resolve()), "steps": result["step"], "planned_steps": planned_steps,
            "epochs": plan.epochs, "steps_per_epoch": plan.steps_per_epoch,
            "stopped_by_time_cap": not result["finished"], "budget_minutes": s.minutes,
            "minutes": result["minutes"], "examples_per_second_nominal": s.examples_per_second}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _tell(out: Path, model_path: Path, report: dict, outcome: tuple[dict, dict, dict],
          say: Callable[[str], None]) -> None:
    """The closing summary: both encoders' figures, where everything is, the verify line, the timings;
    ``outcome``: (untrained results, trained results, the trainer's result)."""
    r0, r1, result = outcome
    n_spk, n_trials, timings = report["data"]["test_speakers_count"], report["trials"]["n_trials"], report["timings"]
    say("")
    say(f"Speaker verification on {n_spk} speakers never seen in training "
        f"({n_trials} trials, cosine scoring; no labels used in training):")
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
    say(f"         DET curves          {_rel(r0['plots']['det'])}, {_rel(r1['plots']['det'])}"
        + (f", both: {_rel(report['det_overlay'])}" if report.get("det_overlay") else ""))
    say(f"model:   {_rel(model_path)}  (threshold {report['model']['threshold']:.4f}: the EER "
        "threshold of these test trials, so optimistic on them)")
    say(f"try:     {report['model']['verify_example']}")
    say(f"done in {timings['total_s'] / 60:.1f} min (data {timings['data_s']:.0f} s, training "
        f"{timings['train_s']:.0f} s, evaluation {timings['eval_untrained_s'] + timings['eval_trained_s']:.0f} s)")


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'encoder':<34}{'EER %':>8}{'minDCF(0.01)':>14}", "-" * 56]
    for name, r in rows:
        lines.append(f"{name:<34}{r['eer']:>8.2f}{r['min_dcf_0.01']:>14.3f}")
    return "\n".join(lines)


def _pick_example(trials, audio_root: Path) -> tuple[str, str]:
    from .data.manifest import resolve

    t = next((t for t in trials if t.label == 1), trials[0])
    return resolve(t.a, str(audio_root)), resolve(t.b, str(audio_root))


def _rel(p: str | os.PathLike | None) -> str:
    """A path as the user can type it from the current folder (None: a figure not drawn without matplotlib)."""
    if p is None:
        return "(not drawn: pip install 'sslspeaker[plots]')"
    try:
        r = os.path.relpath(p)
    except ValueError:
        return str(p)
    return r if not r.startswith("../../") else str(Path(p).resolve())


__all__ = ["run_demo", "load_demo_config", "DemoSettings", "DemoError", "folder_corpus", "synthetic_corpus",
           "recipe_text", "REQUIRED_KEYS"]
