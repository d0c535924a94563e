"""One function per stage kind: train, pseudolabel, backend, calibrate, average; and the final model.

Each takes a ``StageContext`` and returns the stage's outputs (paths and figures) for the report.

- ``train``: a training recipe with the stage's overrides, started from the latest trained
  encoder (``train.init_from``) and, for a method that reads labels, trained on the latest
  pseudo-labels (``data.train`` and the class count replaced); resumed from its checkpoint when
  the folder holds one.
- ``pseudolabel``: ``sslspeaker pseudolabel`` on the pool with the latest trained model.
- ``backend``: embeds the latest pseudo-labelled utterances with the latest model, holds out
  ``options.calibration_share`` of the pseudo-speakers (whole clusters: unseen speakers, as in a
  test) and fits the back-end chain on the rest.
- ``calibrate``: scores pairs among the held-out pseudo-speakers (same cluster = target) and
  fits the logistic calibration, so no labelled trial is needed.
- ``average``: the uniform average of the encoders of the stages listed in ``models``
  (``training.average``: rounds that all started from one encoder), a model like a train stage's.

Held out of training too: a pseudolabel stage with ``options.hold_out`` moves that share of its
pseudo-speakers from its training manifest (``train.csv``) to ``held_out.csv``, and a backend
stage with ``options.calibration_from`` naming it calibrates on those utterances only: speakers
the following training round never saw, as the test speakers will be (``calibration_share``
holds out speakers the encoder was trained on, whose target scores run higher than a test's).
A later pseudolabel stage with ``options.hold_out_from`` naming that stage leaves the same
utterances out of its own training manifest, so that they stay unseen by every later round (and
by an average of the rounds).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, build_dataclass, merge_trees, parse_overrides, read_recipe
from ..data.manifest import read_manifest, write_manifest
from .config import MODEL_KINDS, latest
from .runner import StageContext

log = logging.getLogger(__name__)

BACKEND_FILE = "backend.safetensors"


# ---- shared pieces ---------------------------------------------------------------------------
def pool_manifest(ctx: StageContext) -> Path:
    """The pool as one manifest of absolute paths (``OUT/pool.csv``), written once."""
    from ..training.build import load_all

    path = ctx.state.out / "pool.csv"
    if not path.is_file():
        entries = load_all(ctx.cfg.pool)
        if len(entries) < 2:
            raise ConfigError(f"pool: {len(entries)} usable utterance(s)")
        write_manifest(path, entries, relative=False)
    return path


def stage_run(ctx: StageContext, kind: str, named: str | None) -> tuple[str, dict]:
    """(name, outputs) of the latest earlier stage of ``kind`` (or the one ``named``)."""
    st = latest(ctx.cfg, ctx.index, kind, named)
    if st is None:
        raise ConfigError(f"stage {ctx.stage.name}: no earlier {kind} stage")
    return st.name, ctx.output_of(st.name)


def recipe_path(ctx: StageContext) -> Path:
    p = Path(ctx.stage.recipe)
    return p if p.is_absolute() else Path(ctx.cfg.recipe_dir) / p


# ---- train -----------------------------------------------------------------------------------
def training_config(ctx: StageContext) -> Config:
    """The stage's training config: its recipe, its overrides, then what the pipeline wires in."""
    from ..methods.registry import method_class
    from ..runs import run_checkpoint

    path = recipe_path(ctx)
    tree = merge_trees(read_recipe(path), parse_overrides(list(ctx.stage.overrides)))
    wired: dict = {"validation": {"trials": None}, "train": {}}
    if ctx.cfg.device != "auto":
        wired["train"]["device"] = ctx.cfg.device
    if ctx.stage.init and any(s.kind in MODEL_KINDS for s in ctx.cfg.stages[:ctx.index]):
        wired["train"]["init_from"] = str(run_checkpoint(stage_run(ctx, "model", ctx.stage.init_from)[1]["run"]))
    if method_class(tree.get("method", {}).get("name", "moco")).needs_labels:
        _, labels = stage_run(ctx, "pseudolabel", ctx.stage.labels_from)
        wired["data"] = {"train": [labels["manifest"]]}
        wired["method"] = {"options": {"n_classes": labels["speakers"]}}
    else:
        wired["data"] = {"train": [str(pool_manifest(ctx))]}
    try:
        return build_dataclass(Config, merge_trees(tree, wired), "")
    except ConfigError as exc:
        raise ConfigError(f"stage {ctx.stage.name} ({path}): {exc}") from None


def run_train(ctx: StageContext) -> dict:
    from ..runs import run_checkpoint
    from ..training.trainer import train

    cfg = training_config(ctx)
    resume = run_checkpoint(ctx.folder).is_file()
    result = train(cfg, ctx.folder, resume=resume, max_minutes=ctx.minutes)
    return {"run": str(ctx.folder), "steps": result["step"], "epochs": result["epoch"],
            "planned_minutes": round(ctx.minutes or 0.0, 2), "method": cfg.method.name,
            "encoder": cfg.model.encoder, "init_from": cfg.train.init_from}


# ---- pseudolabel -----------------------------------------------------------------------------
HOLD_OUT_OPTIONS = ("hold_out", "hold_out_seed", "hold_out_from")  # the pipeline's own options of a pseudolabel stage


def run_pseudolabel(ctx: StageContext) -> dict:
    from ..pseudolabel.run import PseudoLabelOptions, pseudolabel

    st = ctx.stage
    _, model = stage_run(ctx, "model", st.model_from)
    clusters = st.clusters if st.clusters == "auto" else int(st.clusters)
    options = {k: v for k, v in st.options.items() if k not in HOLD_OUT_OPTIONS}
    try:
        opts = PseudoLabelOptions(clusters=clusters, algorithm=st.algorithm, device=ctx.cfg.device, force=True,
                                  **options)
    except TypeError as exc:
        raise ConfigError(f"stage {st.name}.options: {exc}") from None
    report = pseudolabel(model["run"], pool_manifest(ctx), ctx.folder, opts)
    manifest, held_out = split_off_held_out(ctx.folder, float(st.options.get("hold_out", 0.0)),
                                           int(st.options.get("hold_out_seed", 0)))
    manifest, left_out = leave_out_earlier_held_out(ctx, manifest)
    speakers = len({e.speaker for e in read_manifest(manifest)})
    weights = report["model"].get("encoder_weights")
    return {"manifest": str(manifest), "model": model["run"], "speakers": speakers, "held_out": held_out,
            "left_out": left_out,
            "inference_embeddings": weights is None or weights == report["model"].get("inference_encoder"),
            "k": report["clustering"]["k"], "k_found_by": report["clustering"].get("k_found_by"),
            "kept": report["kept"]["utterances"], "dropped": report["dropped"]["utterances"],
            "diagnostics": report.get("diagnostics")}


def split_off_held_out(folder: Path, share: float, seed: int) -> tuple[Path, str | None]:
    """(training manifest, held-out manifest or None): with ``share`` > 0, that share of the pseudo-speakers
    (whole clusters) leaves the training manifest (``train.csv``) for ``held_out.csv``, so that the next
    training round never sees them and a later calibration scores speakers its encoder has not seen."""
    manifest = folder / "manifest.csv"
    if share <= 0:
        return manifest, None
    entries = read_manifest(manifest)
    held = held_out_speakers(np.array([e.speaker for e in entries]), share, seed, "hold_out")
    write_manifest(folder / "train.csv", [e for e, h in zip(entries, held) if not h], relative=False)
    write_manifest(folder / "held_out.csv", [e for e, h in zip(entries, held) if h], relative=False)
    return folder / "train.csv", str(folder / "held_out.csv")


def leave_out_earlier_held_out(ctx: StageContext, manifest: Path) -> tuple[Path, int]:
    """(training manifest, utterances left out): with ``options.hold_out_from``, the utterances that stage
    held out leave this stage's training manifest too (``train.csv``; pseudo-speakers left empty vanish)."""
    source = ctx.stage.options.get("hold_out_from")
    if source is None:
        return manifest, 0
    unseen = held_out_paths(ctx, source, "hold_out_from")
    entries = read_manifest(manifest)
    kept = [e for e in entries if e.path not in unseen]
    if len({e.speaker for e in kept}) < 2:
        raise ConfigError(f"stage {ctx.stage.name}: fewer than 2 pseudo-speakers left after leaving out what "
                          f"stage {source} held out")
    write_manifest(ctx.folder / "train.csv", kept, relative=False)
    return ctx.folder / "train.csv", len(entries) - len(kept)


def held_out_paths(ctx: StageContext, source: str, option: str) -> set[str]:
    """The utterances pseudolabel stage ``source`` held out of training (named in ``options.<option>``)."""
    _, labels = stage_run(ctx, "pseudolabel", source)
    if not labels.get("held_out"):
        raise ConfigError(f"stage {ctx.stage.name}.options.{option}: stage {source} held nothing out "
                          "(give it options.hold_out)")
    return {e.path for e in read_manifest(labels["held_out"])}


# ---- backend and calibration -----------------------------------------------------------------
def held_out_speakers(speakers: np.ndarray, share: float, seed: int, option: str = "calibration_share") -> np.ndarray:
    """A seeded mask of utterances whose pseudo-speaker is among the held-out ``share`` of speakers."""
    names = np.unique(speakers)
    rng = np.random.default_rng(seed)
    n_out = int(round(share * len(names)))
    if share > 0 and not 2 <= n_out < len(names) - 1:
        raise ConfigError(f"{option}={share}: {n_out} of {len(names)} pseudo-speakers held out "
                          "(needs at least 2 held out and 2 kept)")
    out = set(rng.choice(names, size=n_out, replace=False)) if n_out else set()
    return np.array([s in out for s in speakers])


def stored_pool_embeddings(labels: dict, model_run: str) -> dict[str, np.ndarray] | None:
    """The pool embeddings a pseudolabel stage wrote (path -> vector), when it embedded with ``model_run``'s
    inference encoder (not the momentum encoder it may cluster with)."""
    import csv

    from ..pseudolabel.run import OUTPUTS

    folder = Path(labels["manifest"]).parent
    if labels.get("model") != model_run or not labels.get("inference_embeddings", True) \
            or not (folder / OUTPUTS["embeddings"]).is_file():
        return None
    with open(folder / OUTPUTS["ids"], newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    emb = np.load(folder / OUTPUTS["embeddings"])
    return dict(zip(paths, emb)) if len(paths) == len(emb) else None


def embed_labelled(ctx: StageContext, model_run: str, manifest: str,
                   stored: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and pseudo-speakers of a pseudo-label manifest's utterances: taken from ``stored`` (the
    pseudolabel stage's own embeddings by the same model) where it has them, else computed."""
    from ..inference.model import SpeakerEncoder
    from ..pseudolabel.run import embed_pool

    entries = read_manifest(manifest)
    speakers = np.array([e.speaker for e in entries])
    if stored is not None and all(e.path in stored for e in entries):
        return np.stack([stored[e.path] for e in entries]), speakers
    encoder = SpeakerEncoder.load(model_run, ctx.cfg.device)
    emb, _ = embed_pool(encoder, entries)
    return emb, speakers


def save_chain(chain, folder: Path) -> Path:
    from safetensors.numpy import save_file

    from ..fileio import atomic_path

    config, arrays = chain.to_state()
    path = folder / BACKEND_FILE
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
                  metadata={"backend": json.dumps(config)})
    return path


def load_chain(path: str | Path):
    from safetensors import safe_open

    from ..backends import BackendChain

    with safe_open(str(path), framework="numpy") as f:
        config = json.loads(f.metadata()["backend"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return BackendChain.from_state(config, arrays)


def run_backend(ctx: StageContext) -> dict:
    from ..backends import BackendChain

    st = ctx.stage
    _, model = stage_run(ctx, "model", st.model_from)
    _, labels = stage_run(ctx, "pseudolabel", st.labels_from)
    emb, speakers = embed_labelled(ctx, model["run"], labels["manifest"], stored_pool_embeddings(labels, model["run"]))
    held = calibration_speakers(ctx, labels["manifest"], speakers)
    chain = BackendChain.build(list(st.chain)).fit(emb[~held], speakers[~held])
    path = save_chain(chain, ctx.folder)
    write_manifest(ctx.folder / "held_out.csv", [e for e, h in zip(read_manifest(labels["manifest"]), held) if h],
                   relative=False)
    return {"backend": str(path), "name": chain.name, "model": model["run"], "labels": labels["manifest"],
            "labels_model": labels["model"], "labels_inference_embeddings": labels.get("inference_embeddings", True),
            "fit_utterances": int((~held).sum()),
            "fit_speakers": int(len(np.unique(speakers[~held]))), "held_out": str(ctx.folder / "held_out.csv"),
            "held_out_utterances": int(held.sum())}


def calibration_speakers(ctx: StageContext, manifest: str, speakers: np.ndarray) -> np.ndarray:
    """A mask of the utterances held out of the back-end's fit for calibration: those an earlier pseudolabel
    stage held out of training (``options.calibration_from``: its name), or ``calibration_share`` of the
    pseudo-speakers drawn here (seen in training, then)."""
    st = ctx.stage
    source = st.options.get("calibration_from")
    if source is None:
        share, seed = float(st.options.get("calibration_share", 0.2)), int(st.options.get("seed", 0))
        return held_out_speakers(speakers, share, seed)
    unseen = held_out_paths(ctx, source, "calibration_from")
    held = np.array([e.path in unseen for e in read_manifest(manifest)])
    if len(np.unique(speakers[held])) < 2 or len(np.unique(speakers[~held])) < 2:
        raise ConfigError(f"stage {st.name}: the utterances stage {source} held out fall into fewer than 2 "
                          "pseudo-speakers (or leave fewer than 2 to fit on)")
    return held


def calibration_pairs(speakers: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, label) index pairs (i < j) among utterances: every same-speaker pair up to ``max_pairs``, and as
    many different-speaker pairs drawn at random; memory grows with the pairs kept, not with n^2."""
    rng = np.random.default_rng(seed)
    tar = np.concatenate([g[np.stack(np.triu_indices(len(g), k=1), axis=1)].reshape(-1, 2)
                          for g in (np.flatnonzero(speakers == s) for s in np.unique(speakers))])
    tar = tar[rng.choice(len(tar), size=min(len(tar), max_pairs), replace=False)]
    non = different_speaker_pairs(speakers, max(len(tar), 1), rng)
    pairs = np.concatenate([tar, non]).astype(int)
    return pairs[:, 0], pairs[:, 1], np.r_[np.ones(len(tar), int), np.zeros(len(non), int)]


def different_speaker_pairs(speakers: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct random (i, j), i < j, pairs of utterances of different speakers (fewer if there are
    fewer), drawn by rejection."""
    n = len(speakers)
    total = n * (n - 1) // 2 - sum(c * (c - 1) // 2 for c in np.unique(speakers, return_counts=True)[1])
    count = min(count, total)
    seen: set[tuple[int, int]] = set()
    while len(seen) < count:
        i, j = rng.integers(n, size=(2, 2 * (count - len(seen)) + 16))
        for a, b in zip(np.minimum(i, j), np.maximum(i, j)):
            if a != b and speakers[a] != speakers[b] and len(seen) < count:
                seen.add((int(a), int(b)))
    return np.array(sorted(seen), dtype=int).reshape(-1, 2)


def run_calibrate(ctx: StageContext) -> dict:
    st = ctx.stage
    name, backend = stage_run(ctx, "backend", None)
    chain = load_chain(backend["backend"])
    stored = stored_pool_embeddings({"manifest": backend["labels"], "model": backend["labels_model"],
                                     "inference_embeddings": backend.get("labels_inference_embeddings", True)},
                                    backend["model"])
    emb, speakers = embed_labelled(ctx, backend["model"], backend["held_out"], stored)
    i, j, y = calibration_pairs(speakers, int(st.options.get("max_pairs", 20000)), int(st.options.get("seed", 0)))
    if y.sum() == 0 or y.sum() == len(y):
        raise ConfigError(f"stage {st.name}: the held-out pseudo-speakers give no target or no non-target pair")
    fit_prior = float(st.options.get("fit_prior", 0.5))
    chain.calibrate(emb[i], emb[j], y, prior=fit_prior)
    path = save_chain(chain, ctx.folder)
    return {"backend": str(path), "name": chain.name, "model": backend["model"], "from": name,
            "pairs": int(len(y)), "target_pairs": int(y.sum()), "fit_prior": fit_prior, "prior": st.prior,
            "calibration": chain.to_state()[0]["calibration"]}


# ---- average ---------------------------------------------------------------------------------
def run_average(ctx: StageContext) -> dict:
    from ..training.average import average_runs

    runs = [ctx.output_of(name)["run"] for name in ctx.stage.models]
    average_runs(runs, ctx.folder)
    return {"run": str(ctx.folder), "averaged": list(ctx.stage.models), "runs": runs}


# ---- dev figures and the final model ---------------------------------------------------------
def dev_figures(ctx: StageContext, outputs: dict) -> dict | None:
    """The dev trials scored after a stage that changes the verifier (report only; None without dev trials)."""
    from ..evaluation.evaluate import evaluate

    dev = ctx.cfg.dev
    if not dev.trials or ctx.stage.kind == "pseudolabel":
        return None
    backend = load_chain(outputs["backend"]) if "backend" in outputs else None
    model = outputs.get("run") or outputs["model"]
    res = evaluate(model, dev.trials, dev.audio_root, out=ctx.folder / "dev.json", device=ctx.cfg.device,
                   progress=False, backend=backend, cache=ctx.state.out / "cache")
    keep = ("eer", "min_dcf_0.01", "min_dcf_0.05", "cllr", "min_cllr", "act_dcf_0.01", "backend")
    return {k: res[k] for k in keep if k in res}


def finish(cfg, state) -> dict:
    """``OUT/model.safetensors``: the last model stage's encoder with the last (calibrated) back-end, if any."""
    from ..training.export import export_model

    stages = state.report["stages"]
    last_train = next(s for s in reversed(cfg.stages) if s.kind in MODEL_KINDS)
    chain_stage = next((s for s in reversed(cfg.stages) if s.kind in ("backend", "calibrate")), None)
    run = stages[last_train.name]["outputs"]["run"]
    chain = load_chain(stages[chain_stage.name]["outputs"]["backend"]) if chain_stage else None
    prior = chain_stage.prior if chain_stage is not None and chain_stage.kind == "calibrate" else None
    path = export_model(run, state.out / "model.safetensors", backend=chain, prior=prior)
    return {"model": str(path), "encoder_from": last_train.name,
            "backend_from": chain_stage.name if chain_stage else None}


RUNNERS = {"train": run_train, "pseudolabel": run_pseudolabel, "backend": run_backend, "calibrate": run_calibrate,
           "average": run_average}
