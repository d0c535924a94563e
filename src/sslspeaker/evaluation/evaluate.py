"""Speaker-verification evaluation: a model, a trial list and a scoring protocol -> metrics, JSON, plots.

``evaluate`` runs four stages:

1. **embed**: every trial utterance through the protocol, once, via the embedding cache
   (``cache``), into one vector per utterance (``protocols.utterance_vector``);
2. **normalise**: optional embedding normalisation, (v − μ)/σ over unlabelled in-domain
   speech (``normalise``);
3. **score**: the back-end's score of each trial (``scoring``), then optional AS-norm against
   a cohort. The back-end is the model file's own when it carries one, else cosine; or one
   forced by name ("cosine"), or a ``BackendChain`` preset fitted here on the embeddings of a
   labelled manifest (``backend_data``, real or pseudo speaker labels), or any object;
4. **record**: EER/minDCF, Cllr/min Cllr/actual DCF for calibrated log-likelihood ratios (min
   Cllr only otherwise), and everything needed to reproduce them, as a dict; with ``out``, the
   two plots and the JSON file (written once).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backends import PRESETS, BackendChain
from ..data.manifest import (Entry, Trial, read_enrolment, read_manifest, read_scp, read_trials, resolve,
                             write_trial_scores)
from ..fileio import atomic_write_text, file_sha256, utc_now
from .cache import EmbeddingCache, default_cache_dir, embed_utterances
from .enrolment import enrolled_vectors
from .normalise import EMBEDDING_NORMS, adapt_embeddings, as_norm, cohort_statistics, set_statistics
from .protocols import Protocol, get_protocol, utterance_vector
from .scoring import P_TARGETS, Backend, CosineBackend, metrics_from_scores, score_trials, trial_labels


# ---- options ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalOptions:
    """How ``evaluate`` scores a trial list; each field is also an ``evaluate`` keyword.

    ``cache``: a folder (None: the default cache folder; False: no cache). ``score_norm="asnorm"``
    needs ``cohort`` (a manifest of other speakers' utterances) and uses each side's top
    ``top_k`` cohort scores. ``embedding_norm`` ("mean" or "zscore") adapts the embeddings to
    ``norm_data``: None or "trials" (the trial list's own utterances, unlabelled) or a manifest.
    ``backend`` scores the trials: None or "model" (the model file's back-end, else cosine),
    "cosine", a ``BackendChain`` preset name (fitted on ``backend_data``, a manifest whose
    speaker column labels every file) or an object with ``score_pairs`` and ``name``. ``system`` names
    the system in the results and the plots' titles and legends (default: from the model's file or
    run folder); ``plot_formats`` are the figures' formats (png, pdf, svg).
    """

    protocol: str | Protocol = "full"
    cache: str | os.PathLike | None | bool = None
    score_norm: str | None = None
    cohort: str | os.PathLike | None = None
    top_k: int = 200
    embedding_norm: str | None = None
    norm_data: str | os.PathLike | None = None
    backend: Backend | str | None = None
    backend_data: str | os.PathLike | None = None
    system: str | None = None
    plot_formats: tuple[str, ...] = ("png",)

    def checked(self) -> "EvalOptions":
        """The same options with "none" read as None, the protocol looked up and the back-end name checked."""
        score_norm = None if self.score_norm in (None, "none") else self.score_norm
        if score_norm not in (None, "asnorm"):
            raise ValueError(f"score_norm={self.score_norm!r}: expected none or asnorm")
        if score_norm and self.cohort is None:
            raise ValueError("score normalisation asnorm needs a cohort manifest (--cohort MANIFEST)")
        embedding_norm = None if self.embedding_norm in (None, "none") else self.embedding_norm
        if embedding_norm is not None and embedding_norm not in EMBEDDING_NORMS:
            raise ValueError(f"embedding_norm={self.embedding_norm!r}: expected none, mean or zscore")
        backend = _backend_spec(self.backend, self.backend_data)
        if score_norm and backend != "model":
            _check_asnorm(backend)
        for fmt in self.plot_formats:
            if fmt not in ("png", "pdf", "svg"):
                raise ValueError(f"plot format {fmt!r}: expected png, pdf or svg")
        return dataclasses.replace(self, protocol=get_protocol(self.protocol), score_norm=score_norm,
                                   embedding_norm=embedding_norm, backend=backend)


BACKEND_NAMES = ("model", "cosine", *PRESETS)


def _backend_spec(backend, backend_data) -> Backend | str:
    """``backend`` checked: "cosine" as a ``CosineBackend``, None as "model", a preset only with ``backend_data``."""
    backend = "model" if backend is None else backend
    if not isinstance(backend, str):
        return backend
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKEND_NAMES)} or a back-end object")
    if backend in PRESETS and backend_data is None:
        raise ValueError(f"backend {backend!r} is fitted on labelled embeddings: give backend_data "
                         "(--backend-data MANIFEST, whose speaker column labels every file)")
    return CosineBackend() if backend == "cosine" else backend


def _check_asnorm(backend) -> None:
    if not isinstance(backend, CosineBackend):
        name = backend if isinstance(backend, str) else backend.name
        raise ValueError(f"score_norm=asnorm scores the cohort by cosine; back-end {name!r} "
                         "has no cohort scoring (--backend cosine)")


def _model_backend(opts: EvalOptions, model) -> EvalOptions:
    """``opts`` with "model" replaced by the model's back-end (or cosine when it has none)."""
    if opts.backend != "model":
        return opts
    backend = model.backend if model.backend is not None else CosineBackend()
    if opts.score_norm:
        _check_asnorm(backend)
    return dataclasses.replace(opts, backend=backend)


def _options(options: EvalOptions | None, settings: dict) -> EvalOptions:
    known = [f.name for f in dataclasses.fields(EvalOptions)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TypeError(f"evaluate: unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return dataclasses.replace(options or EvalOptions(), **settings).checked()


# ---- inputs ----------------------------------------------------------------------------------
@dataclass
class TrialSet:
    """A checked trial list: its trials, labels, audio root and utterances (resolved path -> as written).

    With a ``wav.scp`` or an enrolment list, ``trials`` name resolved paths and enrolment-model
    keys (``models``: key -> its utterances' resolved paths) and ``written`` keeps them as written.
    """

    path: Path
    trials: list[Trial]
    root: str
    labels: np.ndarray
    utterances: dict[str, str]
    written: list[Trial] | None = None
    models: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def _read_list(path: str | os.PathLike, reader, what: str, empty: str) -> tuple[Path, list]:
    """``reader(path)`` of an existing file that lists something; errors name ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    items = reader(path)
    if items:
        return path, items
    raise ValueError(f"{path}: {empty}")


def _check_files(paths: list[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(paths)} audio files not found: {shown}")


def read_trial_set(trials_path: str | os.PathLike, audio_root: str | os.PathLike | None,
                   scp: str | os.PathLike | None = None, enrolment: str | os.PathLike | None = None) -> TrialSet:
    """The trial list, relative to ``audio_root`` (default: its folder), with both classes and every file present.

    ``scp``: a Kaldi ``wav.scp`` whose ids the trials (and enrolment lists) may name instead of
    paths. ``enrolment``: a ``spk2utt``-style list; a trial side naming one of its models is
    scored as that enrolled speaker (``evaluation.enrolment``).
    """
    path, trials = _read_list(trials_path, read_trials, "trial list", "no trials")
    root = str(audio_root) if audio_root is not None else str(path.resolve().parent)
    labels = trial_labels(trials)
    n_target = int(labels.sum())
    if n_target in (0, len(labels)):
        raise ValueError(f"{path}: needs both target (1) and non-target (0) trials; "
                         f"has {n_target} targets of {len(labels)}")
    if scp is None and enrolment is None:
        utterances: dict[str, str] = {}
        for t in trials:
            for p in (t.a, t.b):
                utterances.setdefault(resolve(p, root), p)
        _check_files(list(utterances), f"{path} (audio root {root})")
        return TrialSet(path, trials, root, labels, utterances)
    return _named_trial_set(path, trials, root, labels, scp, enrolment)


def _named_trial_set(path: Path, trials: list[Trial], root: str, labels: np.ndarray, scp, enrolment) -> TrialSet:
    """The trial set whose names go through ``scp`` ids and ``enrolment`` models (either may be None)."""
    ids = _read_list(scp, read_scp, "scp list", "no utterances")[1] if scp is not None else {}
    listed = _read_list(enrolment, read_enrolment, "enrolment list", "no models")[1] if enrolment is not None else {}
    utterances: dict[str, str] = {}

    def utterance(name: str) -> str:
        p = ids[name] if name in ids else resolve(name, root)
        utterances.setdefault(p, name)
        return p

    keys = {m: f"{Path(enrolment).resolve()}#{m}" for m in listed}  # absolute, so ``resolve`` keeps them
    models = {keys[m]: [utterance(u) for u in utts] for m, utts in listed.items()}
    named = [Trial(t.label, keys.get(t.a) or utterance(t.a), keys.get(t.b) or utterance(t.b)) for t in trials]
    _check_files(list(utterances), f"{path} (audio root {root}{', scp ' + str(scp) if scp else ''})")
    return TrialSet(path, named, root, labels, utterances, written=trials, models=models)


def _load_model(model, device: str | None):
    from ..inference.model import SpeakerEncoder

    if not hasattr(model, "embed_waves"):  # a path: SpeakerEncoder.load (an ONNX file gives the ONNX encoder)
        return SpeakerEncoder.load(model, device or "cpu")
    if device is not None:
        model.to(device)
    return model


def _open_cache(cache, model, protocol: Protocol) -> EmbeddingCache | None:
    if cache is False:
        return None
    return EmbeddingCache(default_cache_dir() if cache in (None, True) else cache, model.fingerprint, protocol,
                          embed_dim=model.embed_dim, vad=getattr(model, "vad", False))


# ---- stage 1: embed --------------------------------------------------------------------------
def embed_trial_set(model, protocol: Protocol, trial_set: TrialSet, store, progress: bool) -> tuple[dict, dict]:
    """({resolved path: utterance vector [D]}, embedding statistics) of the trial utterances."""
    emb, stats = embed_utterances(model, protocol, list(trial_set.utterances.items()), store, progress)
    return {p: utterance_vector(e) for p, e in emb.items()}, stats


def _manifest_entries(manifest, desc: str) -> tuple[Path, dict[str, Entry]]:
    """(the manifest's path, its entries by path, first one kept), non-empty."""
    path, entries = _read_list(manifest, read_manifest, f"{desc} manifest", f"empty {desc} manifest")
    unique: dict[str, Entry] = {}
    for e in entries:
        unique.setdefault(e.path, e)
    return path, unique


def _embed_files(model, protocol: Protocol, path: Path, files: list[str], store, progress: bool,
                 desc: str) -> tuple[np.ndarray, dict]:
    base = path.resolve().parent
    items = [(p, os.path.relpath(p, base)) for p in files]
    _check_files(files, f"{desc} {path}")
    emb, stats = embed_utterances(model, protocol, items, store, progress, desc=desc)
    info = {"manifest": str(path.resolve()), "sha256": file_sha256(path), "utterances": len(items), "embedding": stats}
    return np.stack([utterance_vector(emb[p]) for p in files]), info


def embed_manifest(model, protocol: Protocol, manifest, store, progress: bool, desc: str) -> tuple[np.ndarray, dict]:
    """Utterance vectors [M, D] of a manifest's files (cached like the trials') and a record of the set."""
    path, entries = _manifest_entries(manifest, desc)
    return _embed_files(model, protocol, path, list(entries), store, progress, desc)


def embed_labelled_manifest(model, protocol: Protocol, manifest, store, progress: bool,
                            desc: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(utterance vectors [M, D], speaker labels [M], record) of a manifest whose every file has a speaker."""
    path, entries = _manifest_entries(manifest, desc)
    unlabelled = [p for p, e in entries.items() if not e.speaker]
    if unlabelled:
        raise ValueError(f"{path}: {desc} needs a speaker for every file (real or pseudo labels); "
                         f"{len(unlabelled)} of {len(entries)} have none, e.g. {unlabelled[0]}")
    vectors, info = _embed_files(model, protocol, path, list(entries), store, progress, desc)
    labels = np.array([e.speaker for e in entries.values()])
    return vectors, labels, {**info, "speakers": int(len(set(labels.tolist())))}


# ---- stage 2: normalise ----------------------------------------------------------------------
def _norm_data(model, opts: EvalOptions, trial_matrix: np.ndarray, store, progress: bool) -> tuple[np.ndarray, dict]:
    if opts.norm_data in (None, "trials"):
        return trial_matrix, {"data": "trials", "utterances": len(trial_matrix)}
    data, info = embed_manifest(model, opts.protocol, opts.norm_data, store, progress, "norm data")
    return data, {"data": "manifest", **info}


def normalise_embeddings(model, opts: EvalOptions, vectors: dict[str, np.ndarray], store,
                         progress: bool) -> tuple[dict[str, np.ndarray], Any, dict | None]:
    """(vectors adapted to the norm data's statistics, the adaptation function, its record); unchanged without one."""
    if not opts.embedding_norm:
        return vectors, None, None
    paths, matrix = list(vectors), np.stack(list(vectors.values()))
    data, info = _norm_data(model, opts, matrix, store, progress)
    if len(data) < 2:
        raise ValueError(f"embedding normalisation needs at least 2 utterances of norm data, got {len(data)}")
    adapt = functools.partial(adapt_embeddings, **dict(zip(("mu", "sd"), set_statistics(data, opts.embedding_norm))))
    sd_note = " (sd: population std per dimension)" if opts.embedding_norm == "zscore" else " (sd = 1)"
    record = {"name": opts.embedding_norm, **info, "formula": "cosine of (v - mu)/sd" + sd_note}
    return dict(zip(paths, adapt(matrix))), adapt, record


# ---- stage 3: score --------------------------------------------------------------------------
def fit_backend(model, opts: EvalOptions, adapt, store, progress: bool) -> tuple[BackendChain, dict]:
    """The preset ``opts.backend`` fitted on ``opts.backend_data``'s embeddings (adapted like the trials'), and its record."""
    vectors, labels, info = embed_labelled_manifest(model, opts.protocol, opts.backend_data, store, progress,
                                                    "back-end data")
    if adapt is not None:
        vectors = adapt(vectors)
    try:
        chain = BackendChain.build(opts.backend).fit(vectors, labels)
    except ValueError as exc:
        raise ValueError(f"back-end {opts.backend!r} on {info['manifest']}: {exc}") from None
    return chain, {"name": chain.name, "source": f"fitted here (preset {opts.backend})", "calibrated": False,
                   "data": info}


def backend_stage(model, opts: EvalOptions, adapt, store, progress: bool) -> tuple[Backend, dict]:
    """(the back-end that scores the trials, its record: name, where it came from, calibrated)."""
    if isinstance(opts.backend, str):
        return fit_backend(model, opts, adapt, store, progress)
    backend = opts.backend
    source = "model file" if backend is model.backend else ("cosine" if isinstance(backend, CosineBackend) else "given")
    return backend, {"name": backend.name, "source": source, "calibrated": bool(getattr(backend, "calibrated", False))}


def score_stage(model, opts: EvalOptions, trial_set: TrialSet, vectors: dict[str, np.ndarray], adapt, store,
                progress: bool) -> tuple[np.ndarray, dict | None]:
    """(trial scores by the back-end, AS-normalised when asked; the AS-norm record or None)."""
    raw = np.asarray(score_trials(trial_set.trials, vectors, trial_set.root, opts.backend), dtype=np.float64)
    if opts.score_norm != "asnorm":
        return raw, None
    cohort, info = embed_manifest(model, opts.protocol, opts.cohort, store, progress, "cohort")
    if adapt is not None:
        cohort = adapt(cohort)
    return asnorm_scores(raw, trial_set, vectors, cohort, opts.top_k), _asnorm_record(info, len(cohort), opts.top_k)


def asnorm_scores(raw: np.ndarray, trial_set: TrialSet, vectors: dict[str, np.ndarray], cohort: np.ndarray,
                  top_k: int) -> np.ndarray:
    """AS-norm of each trial's raw score with both sides' top-``top_k`` statistics against ``cohort``."""
    paths = list(vectors)
    mu, sd = cohort_statistics(np.stack([vectors[p] for p in paths]), cohort, top_k)
    index = {p: i for i, p in enumerate(paths)}
    ia = np.array([index[resolve(t.a, trial_set.root)] for t in trial_set.trials])
    ib = np.array([index[resolve(t.b, trial_set.root)] for t in trial_set.trials])
    return as_norm(raw, mu[ia], sd[ia], mu[ib], sd[ib])


def _asnorm_record(cohort_info: dict, cohort_size: int, top_k: int) -> dict:
    return {"name": "asnorm", "cohort": cohort_info["manifest"], "cohort_sha256": cohort_info["sha256"],
            "cohort_size": cohort_size, "top_k": int(top_k), "effective_top_k": min(int(top_k), cohort_size),
            "std": "population (ddof=0)", "cohort_embedding": cohort_info["embedding"],
            "formula": "0.5*((s-mu_a)/sd_a + (s-mu_b)/sd_b) over each side's top-k cohort scores"}


# ---- stage 4: record -------------------------------------------------------------------------
def _json_float(x: float) -> float | str:
    return float(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf")


def _trials_record(ts: TrialSet) -> dict:
    n_target = int(ts.labels.sum())
    return {"path": str(ts.path.resolve()), "sha256": file_sha256(ts.path), "n_trials": len(ts.trials),
            "targets": n_target, "nontargets": len(ts.trials) - n_target, "utterances": len(ts.utterances),
            "audio_root": str(Path(ts.root).resolve())}


def _model_record(model) -> dict:
    source = Path(model.source) if model.source else None
    return {"path": str(source.resolve()) if source else None,
            "sha256": file_sha256(source) if source and source.is_file() else None,
            "fingerprint": model.fingerprint, "metadata": model.metadata}


def system_name(model, given: str | None = None) -> str:
    """``given``, else the model's name: its run folder for a checkpoint in ``RUN/checkpoints/``, else the
    file's stem (``moco.safetensors`` -> ``moco``) or the folder's name."""
    if given:
        return given
    if not model.source:
        return "model"
    source = Path(model.source)
    if source.suffix == ".pt" and source.parent.name == "checkpoints":
        return source.parent.parent.name or source.stem
    return source.stem if source.suffix else source.name


def _score_summary(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {"target_mean": float(scores[labels == 1].mean()), "target_std": float(scores[labels == 1].std()),
            "nontarget_mean": float(scores[labels == 0].mean()), "nontarget_std": float(scores[labels == 0].std())}


def llr_figures(scores: np.ndarray, labels: np.ndarray, calibrated: bool) -> dict:
    """min Cllr of any scores; with calibrated LLRs also Cllr and the actual DCF at the Bayes threshold (p = 0.01)."""
    from .llr_metrics import actual_dcf, cllr, min_cllr

    figures = {"min_cllr": min_cllr(scores, labels)}
    if calibrated:
        figures = {"cllr": cllr(scores, labels), **figures, "act_dcf_0.01": actual_dcf(scores, labels, 0.01)}
    return figures


def results_record(model, opts: EvalOptions, trial_set: TrialSet, scores: np.ndarray, norms: dict,
                   embedding: dict) -> dict:
    """The results dict: metrics, then what produced them (``norms``: "score_norm", "embedding_norm" and
    "backend" records)."""
    from .. import __version__

    calibrated = norms["backend"]["calibrated"] and norms["score_norm"] is None
    from .plots import det_points

    metrics = {**metrics_from_scores(scores, trial_set.labels), **llr_figures(scores, trial_set.labels, calibrated)}
    return {**{k: _json_float(v) for k, v in metrics.items()}, "n_trials": len(trial_set.trials),
            "system": system_name(model, opts.system), "det": det_points(scores, trial_set.labels),
            "protocol": opts.protocol.to_dict(), "score_norm": norms["score_norm"],
            "embedding_norm": norms["embedding_norm"], "backend": norms["backend"]["name"],
            "backend_info": norms["backend"],
            "trials": _trials_record(trial_set), "model": _model_record(model), "config": model.config,
            "scores": _score_summary(scores, trial_set.labels), "embedding": embedding, "sslspeaker": __version__,
            "date": utc_now(), "seconds": None, "plots": None}


# ---- the whole evaluation ----------------------------------------------------------------
def evaluate(model, trials_path: str | os.PathLike, audio_root: str | os.PathLike | None = None, *,
             out: str | os.PathLike | None = None, device: str | None = None, progress: bool = True,
             options: EvalOptions | None = None, scp: str | os.PathLike | None = None,
             enrolment: str | os.PathLike | None = None, scores_file: str | os.PathLike | None = None,
             **settings: Any) -> dict:
    """Evaluate ``model`` (a ``SpeakerEncoder`` or a model/checkpoint/run path) on a trial list.

    ``audio_root`` defaults to the trial list's folder. ``options`` (an ``EvalOptions``) and/or
    its fields as keywords (``protocol=``, ``cache=``, ``score_norm=``, ...; keywords win) say
    how to score. ``scp`` / ``enrolment``: see ``read_trial_set``. Writes ``out`` (JSON) and its
    two PNGs when ``out`` is given, ``scores_file`` (``A B SCORE LABEL`` per trial) when given;
    returns the results dict.
    """
    t_start = time.perf_counter()
    check_out_path(out)
    check_out_path(scores_file, "--scores")
    opts = _options(options, settings)
    model = _load_model(model, device)
    opts = _model_backend(opts, model)
    trial_set = read_trial_set(trials_path, audio_root, scp, enrolment)
    store = _open_cache(opts.cache, model, opts.protocol)
    vectors, emb_stats = embed_trial_set(model, opts.protocol, trial_set, store, progress)
    vectors, adapt, emb_norm = normalise_embeddings(model, opts, vectors, store, progress)
    vectors.update(enrolled_vectors(trial_set.models, vectors))
    backend, backend_record = backend_stage(model, opts, adapt, store, progress)
    opts = dataclasses.replace(opts, backend=backend)
    scores, score_norm = score_stage(model, opts, trial_set, vectors, adapt, store, progress)
    embedding = {**emb_stats, "cache": str(store.path) if store else None, "device": str(model.device)}
    norms = {"score_norm": score_norm, "embedding_norm": emb_norm, "backend": backend_record}
    results = results_record(model, opts, trial_set, scores, norms, embedding)
    if scores_file is not None:
        write_trial_scores(scores_file, trial_set.written or trial_set.trials, scores)
        results["scores_file"] = str(Path(scores_file).resolve())
    if out is not None:
        write_plots(results, out, scores, trial_set.labels, opts.plot_formats)
    results["seconds"] = round(time.perf_counter() - t_start, 2)
    if out is not None:
        write_json(results, out)
    return results


def check_out_path(out: str | os.PathLike | None, option: str = "--out") -> None:
    """Refuse, before any work, an output path (given as ``option``) that is a folder or cannot be written."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        what, example = ("results file", "results.json") if option == "--out" else ("file", "scores.txt")
        raise ValueError(f"{option} {out}: is a folder; give the {what} to write (e.g. {out / example})")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: cannot write there ({parent} is not a writable folder)")


def plot_paths(out: str | os.PathLike, fmt: str = "png") -> tuple[Path, Path]:
    """``results.json`` -> (``results_scores.png``, ``results_det.png``) (or another format's suffix)."""
    out = Path(out)
    return out.with_name(f"{out.stem}_scores.{fmt}"), out.with_name(f"{out.stem}_det.{fmt}")


def plot_title(results: dict) -> str:
    """``SYSTEM · TRIALS · PROTOCOL[ + normalisation]``: what a figure of ``results`` shows."""
    proto = results.get("protocol", {}).get("name", "")
    en = results.get("embedding_norm")
    norm = (f" + {en['name']} over {en['data']}" if en else "") + (" + AS-norm" if results.get("score_norm") else "")
    system = f"{results['system']} · " if results.get("system") else ""
    return f"{system}{Path(results.get('trials', {}).get('path', '')).name} · {proto}{norm}"


def write_plots(results: dict, out: str | os.PathLike, scores, labels, formats: Sequence[str] = ("png",)) -> dict:
    """The score-distribution and DET plots next to ``out`` in each of ``formats``, recorded in
    ``results['plots']`` (the first format's two files) and ``results['plot_files']`` (all). Without
    matplotlib (the ``plots`` extra) no figure is drawn: a warning says so, the paths are None and
    ``results['plots_missing']`` names the extra."""
    from ..errors import MissingExtraError
    from .plots import plot_det, plot_score_distributions

    title, eer_thr = plot_title(results), results.get("eer_threshold")
    calibrated = results.get("backend_info", {}).get("calibrated") and not results.get("score_norm")
    cosine = results.get("backend", "cosine") == "cosine" and not results.get("score_norm")
    points = [(p, results[f"min_dcf_{p:g}"], float(results[f"min_dcf_{p:g}_threshold"])) for p in P_TARGETS]
    files = []
    try:
        for fmt in formats:
            scores_path, det_path = plot_paths(out, fmt)
            plot_score_distributions(scores, labels, eer_thr if isinstance(eer_thr, float) else None, scores_path,
                                     title=f"Scores: {title}", score_range=(-1.0, 1.0) if cosine else None,
                                     xlabel="score (cosine similarity)" if cosine else
                                     "log-likelihood ratio" if calibrated else f"score ({results.get('backend')})")
            plot_det(scores, labels, det_path, eer=results["eer"] / 100.0, dcf_points=points, title=f"DET: {title}",
                     system=results.get("system") or "DET")
            files += [str(scores_path), str(det_path)]
    except MissingExtraError as exc:
        logging.getLogger(__name__).warning("no plots: %s", exc)
        results.update(plots={"scores": None, "det": None}, plot_files=[], plots_missing=str(exc))
        return results
    results.update(plots={"scores": files[0], "det": files[1]}, plot_files=files)
    return results


def write_json(results: dict, out: str | os.PathLike) -> Path:
    """``results`` as indented JSON at ``out``, written atomically."""
    return atomic_write_text(out, json.dumps(results, indent=2, sort_keys=False) + "\n")


def write_results(results: dict, out: str | os.PathLike, scores, labels, formats: Sequence[str] = ("png",)) -> dict:
    """Plots next to ``out`` (recorded in ``results['plots']``), then the JSON itself."""
    write_plots(results, out, scores, labels, formats)
    write_json(results, out)
    return results


__all__ = ["EvalOptions", "TrialSet", "evaluate", "read_trial_set", "embed_trial_set", "embed_manifest",
           "embed_labelled_manifest", "fit_backend", "backend_stage", "llr_figures", "check_out_path", "BACKEND_NAMES",
           "normalise_embeddings", "score_stage", "asnorm_scores", "results_record", "embed_utterances",
           "score_trials", "cohort_statistics", "as_norm", "set_statistics", "adapt_embeddings",
           "metrics_from_scores", "EmbeddingCache", "default_cache_dir", "plot_paths", "write_plots", "write_json",
           "write_results"]
