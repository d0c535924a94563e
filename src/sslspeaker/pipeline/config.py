"""The pipeline recipe: a pool of unlabelled speech and the stages that take it to a verifier.

A recipe lists stages in order. Each stage reads what an earlier stage made: by default the
latest earlier stage of the kind it needs (a ``pseudolabel`` stage embeds with the latest model,
trained or averaged; a ``train`` stage starts from the latest model's encoder and learns the latest
pseudo-labels), or the stage named by ``model_from`` / ``init_from`` / ``labels_from``. An
``average`` stage averages the encoders of the model stages its ``models`` lists. Training
stages split the time budget by their ``share``; the other stages take what they take, and the
split follows what is left (see ``runner.plan_minutes``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (ConfigError, ManifestRef, build_dataclass, find_recipe, merge_trees, parse_overrides,
                      read_recipe)

KINDS = ("train", "pseudolabel", "backend", "calibrate", "average")
MODEL_KINDS = ("train", "average")  # stages whose output is a model (a run folder)


@dataclass
class StageConfig:
    name: str = ""  # unique; also the stage's folder under the pipeline's output folder
    kind: str = ""  # train | pseudolabel | backend | calibrate | average
    # train
    recipe: str | None = None  # a training recipe, relative to the pipeline recipe's folder
    overrides: list[str] = field(default_factory=list)  # key=value overrides of that recipe
    share: float = 0.0  # share of the training budget
    init_from: str | None = None  # stage whose encoder starts this one (default: the latest model stage)
    init: bool = True  # false: train from scratch even after earlier train stages
    labels_from: str | None = None  # pseudolabel stage whose manifest this trains on / the back-end fits on
    # pseudolabel, backend, calibrate
    model_from: str | None = None  # stage whose model embeds (default: the latest model stage)
    # average
    models: list[str] = field(default_factory=list)  # the earlier model stages whose encoders are averaged
    clusters: str = "auto"  # pseudolabel: a cluster count or "auto"
    algorithm: str = "kmeans"  # pseudolabel: kmeans | ahc
    options: dict = field(default_factory=dict)  # extra options of the stage's kind (see stages.py)
    # backend
    chain: list[str] = field(default_factory=lambda: ["lda", "plda"])
    # calibrate
    prior: float = 0.01  # target prior of the calibrated decision (verify's default threshold)


@dataclass
class DevConfig:
    """Trials scored after every stage for the report only: nothing in the pipeline reads them to decide."""

    trials: str | None = None
    audio_root: str | None = None


@dataclass
class PipelineConfig:
    pool: list[ManifestRef] = field(default_factory=list)  # the unlabelled speech
    dev: DevConfig = field(default_factory=DevConfig)
    budget_minutes: float = 90.0
    overhead_minutes: float = 3.0  # time kept back for each stage that does not train
    device: str = "auto"
    stages: list[StageConfig] = field(default_factory=list)
    recipe_dir: str = ""  # filled by the loader: where stage recipes are looked up


def load_pipeline(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """A checked pipeline recipe (a file or a packaged recipe's name; + ``key=value`` overrides of its top-level keys)."""
    path = find_recipe(path)
    tree = merge_trees(read_recipe(path), parse_overrides(list(overrides or [])))
    try:
        cfg = build_dataclass(PipelineConfig, tree, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg.recipe_dir = str(Path(path).resolve().parent)
    check_pipeline(cfg, str(path))
    return cfg


def check_pipeline(cfg: PipelineConfig, where: str) -> None:
    """Stage names unique, kinds known, references to earlier stages of the right kind, numbers in range."""
    if not cfg.pool:
        raise ConfigError(f"{where}: pool: no manifest of unlabelled speech")
    if not cfg.stages:
        raise ConfigError(f"{where}: stages: empty")
    if cfg.budget_minutes <= 0 or cfg.overhead_minutes < 0:
        raise ConfigError(f"{where}: budget_minutes must be > 0 and overhead_minutes >= 0")
    seen: dict[str, str] = {}
    for i, st in enumerate(cfg.stages):
        at = f"{where}: stages[{i}]"
        _check_stage(st, at, seen)
        seen[st.name] = st.kind
    if sum(s.share for s in cfg.stages if s.kind == "train") <= 0:
        raise ConfigError(f"{where}: the train stages' shares add up to 0")


def _check_stage(st: StageConfig, at: str, seen: dict[str, str]) -> None:
    if not st.name or not st.name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"{at}.name: {st.name!r} (letters, digits, '_' and '-')")
    if st.name in seen:
        raise ConfigError(f"{at}.name: {st.name!r} is used twice")
    if st.kind not in KINDS:
        raise ConfigError(f"{at}.kind: {st.kind!r} (known: {', '.join(KINDS)})")
    if st.kind == "train" and not st.recipe:
        raise ConfigError(f"{at}.recipe: a train stage needs a training recipe")
    if st.kind == "train" and not 0 < st.share <= 1:
        raise ConfigError(f"{at}.share: {st.share} (a train stage's share is in (0, 1])")
    if st.kind == "pseudolabel" and st.clusters != "auto" and not (st.clusters.isdigit() and int(st.clusters) > 1):
        raise ConfigError(f"{at}.clusters: {st.clusters!r} (a count > 1, or auto)")
    if st.kind == "pseudolabel" and st.algorithm not in ("kmeans", "ahc"):
        raise ConfigError(f"{at}.algorithm: {st.algorithm!r} (kmeans | ahc)")
    if not 0 < st.prior < 1:
        raise ConfigError(f"{at}.prior: {st.prior} (in (0, 1))")
    for key, kinds in (("init_from", MODEL_KINDS), ("model_from", MODEL_KINDS), ("labels_from", ("pseudolabel",))):
        ref = getattr(st, key)
        if ref is not None and seen.get(ref) not in kinds:
            raise ConfigError(f"{at}.{key}: {ref!r} is not an earlier {' or '.join(kinds)} stage")
    _check_average(st, at, seen)
    source = st.options.get("hold_out_from") if st.kind == "pseudolabel" else None
    if source is not None and seen.get(source) != "pseudolabel":
        raise ConfigError(f"{at}.options.hold_out_from: {source!r} is not an earlier pseudolabel stage")
    if st.kind != "train" and "train" not in seen.values():
        raise ConfigError(f"{at}: a {st.kind} stage needs a train stage before it")


def _check_average(st: StageConfig, at: str, seen: dict[str, str]) -> None:
    if st.kind != "average":
        if st.models:
            raise ConfigError(f"{at}.models: only an average stage takes models")
        return
    if len(st.models) < 2 or len(set(st.models)) != len(st.models):
        raise ConfigError(f"{at}.models: {st.models} (an average stage needs 2 or more distinct model stages)")
    for ref in st.models:
        if seen.get(ref) not in MODEL_KINDS:
            raise ConfigError(f"{at}.models: {ref!r} is not an earlier train or average stage")


def latest(cfg: PipelineConfig, index: int, kind: str, named: str | None) -> StageConfig | None:
    """The stage named ``named``, or the latest stage of ``kind`` before stage ``index`` (kind ``model``:
    any of ``MODEL_KINDS``)."""
    before = cfg.stages[:index]
    if named is not None:
        return next(s for s in before if s.name == named)
    kinds = MODEL_KINDS if kind == "model" else (kind,)
    return next((s for s in reversed(before) if s.kind in kinds), None)


__all__ = ["StageConfig", "DevConfig", "PipelineConfig", "load_pipeline", "check_pipeline", "latest", "KINDS", "MODEL_KINDS"]
