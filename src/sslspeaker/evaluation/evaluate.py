"""Speaker-verification evaluation: a model, a trial list and a scoring protocol -> metrics, JSON, plots.

Embeddings are computed once per utterance (all of an utterance's segments in one batch,
audio read ahead by a small thread pool) and cached on disk: one ``.npz`` per (model,
protocol) in the cache folder (default ``$XDG_CACHE_HOME/sslspeaker`` or
``~/.cache/sslspeaker``), named by the model's fingerprint (a hash of its weights and
feature/encoder metadata) and the protocol's name+parameters hash; inside, each utterance is
keyed by a hash of its absolute path, mtime and size (and, for randomly placed segments, the
seed key). A changed model or protocol uses another file; a changed audio file another key.

Score normalisation: adaptive s-norm (AS-norm, Matějka et al. 2017; Cumani et al. 2011) with
a cohort of other speakers' utterances: for a trial (a, b) with raw score s,

    s' = ½ · [ (s − μ_a) / σ_a  +  (s − μ_b) / σ_b ]

where μ_x, σ_x are the mean and (population) standard deviation of the top-K highest scores
of utterance x against the cohort (the same protocol scores it against each cohort utterance).

Embedding normalisation (before scoring, and before AS-norm): label-free adaptation to the
evaluated domain. Each utterance vector v becomes (v − μ)/σ, scored by cosine, where μ is the
mean of a set of unlabelled in-domain utterances' vectors (the trial list's own utterances,
or a manifest) and σ their per-dimension standard deviation ("zscore") or 1 ("mean"). A model
trained on one domain gives every recording of another (say, 8-kHz telephone speech) a shared
offset that compresses all cosines; removing it is what z-scoring does for MFCC statistics.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ..data.manifest import Trial, read_manifest, read_trials, resolve
from .metrics import compute_eer, compute_min_dcf
from .protocols import Protocol, get_protocol, utterance_vector

log = logging.getLogger(__name__)
P_TARGETS = (0.01, 0.05)


# ---- cache -----------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslspeaker"


class EmbeddingCache:
    """Per-utterance embeddings [n, D] of one (model, protocol) pair in one ``.npz`` file."""

    def __init__(self, folder: str | os.PathLike, model_fingerprint: str, protocol: Protocol):
        self.folder = Path(folder)
        self.protocol = protocol
        self.path = self.folder / f"{model_fingerprint[:20]}-{protocol.tag}.npz"
        self.info = {"model_fingerprint": model_fingerprint, "protocol": protocol.to_dict()}
        self.entries: dict[str, np.ndarray] = {}
        self.dirty = 0
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as z:
                keys, emb = z["keys"], z["embeddings"]
            self.entries = {str(k): emb[i] for i, k in enumerate(keys)}
        except Exception as exc:  # a damaged cache is only a cache: start again
            log.warning("ignoring unreadable embedding cache %s (%s)", self.path, exc)
            self.entries = {}

    def key(self, path: str, seed_key: str | None) -> str:
        st = os.stat(path)
        blob = f"{os.path.abspath(path)}\0{st.st_mtime_ns}\0{st.st_size}"
        if self.protocol.seeded:
            blob += f"\0{seed_key if seed_key is not None else path}"
        return hashlib.sha1(blob.encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        return self.entries.get(key)

    def put(self, key: str, emb: np.ndarray) -> None:
        self.entries[key] = np.asarray(emb, dtype=np.float32)
        self.dirty += 1

    def save(self) -> None:
        if not self.dirty:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():  # keep what another process added meanwhile
            other = EmbeddingCache.__new__(EmbeddingCache)
            other.path, other.entries = self.path, {}
            other._load()
            self.entries = {**other.entries, **self.entries}
        keys = np.array(sorted(self.entries), dtype="U40")
        emb = np.stack([self.entries[k] for k in keys]) if len(keys) else np.zeros((0, 0, 0), np.float32)
        tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, keys=keys, embeddings=emb, info=np.array(json.dumps(self.info)))
        os.replace(tmp, self.path)
        self.dirty = 0


# ---- embedding many utterances ------------------------------------------------------------
def _read_ahead(fn, items: Iterable, workers: int = 2, depth: int = 8) -> Iterator[tuple[Any, Any]]:
    """(item, future of fn(item)) in order, with at most ``depth`` reads in flight."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        pending = deque((item, ex.submit(fn, item)) for item in islice(it, depth))
        while pending:
            item, fut = pending.popleft()
            for nxt in islice(it, 1):
                pending.append((nxt, ex.submit(fn, nxt)))
            yield item, fut


def embed_utterances(model, protocol: Protocol, items: list[tuple[str, str]], cache: EmbeddingCache | None = None,
                     progress: bool = True, desc: str = "embedding") -> tuple[dict[str, np.ndarray], dict]:
    """``{path: [n, D] embeddings}`` for ``items`` = [(path, seed_key)], using and filling ``cache``."""
    out: dict[str, np.ndarray] = {}
    todo: list[tuple[str, str, str | None]] = []
    for path, seed_key in items:
        key = cache.key(path, seed_key) if cache is not None else None
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            out[path] = hit
        else:
            todo.append((path, seed_key, key))
    t0 = time.perf_counter()
    if todo:
        bar = tqdm(total=len(todo), desc=desc, unit="utt", disable=not progress, mininterval=1.0, dynamic_ncols=True)
        try:
            for (path, seed_key, key), fut in _read_ahead(lambda it: protocol.load(it[0], it[1]), todo):
                emb = model.embed_waves(fut.result())
                out[path] = emb
                if cache is not None:
                    cache.put(key, emb)
                    if cache.dirty >= 2000:
                        cache.save()
                bar.update(1)
        finally:
            bar.close()
            if cache is not None:
                cache.save()
    stats = {"utterances": len(items), "computed": len(todo), "from_cache": len(items) - len(todo),
             "seconds": round(time.perf_counter() - t0, 2)}
    return out, stats


# ---- scoring ---------------------------------------------------------------------------------
def _check_files(paths: list[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(paths)} audio files not found: {shown}")


def score_trials(trials: list[Trial], vectors: dict[str, np.ndarray], audio_root) -> np.ndarray:
    """Protocol score of each trial: dot product of the two utterances' mean embeddings."""
    a = np.stack([vectors[resolve(t.a, audio_root)] for t in trials])
    b = np.stack([vectors[resolve(t.b, audio_root)] for t in trials])
    return np.einsum("nd,nd->n", a, b)


def embed_manifest(model, protocol: Protocol, manifest, store, progress: bool, desc: str) -> tuple[np.ndarray, dict]:
    """Utterance vectors [M, D] of a manifest's files (cached like the trials') and a record of the set."""
    from ..inference.model import file_sha256

    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {desc} manifest")
    entries = read_manifest(path)
    if not entries:
        raise ValueError(f"{path}: empty {desc} manifest")
    base = path.resolve().parent
    items = list({e.path: os.path.relpath(e.path, base) for e in entries}.items())
    _check_files([p for p, _ in items], f"{desc} {path}")
    emb, stats = embed_utterances(model, protocol, items, store, progress, desc=desc)
    info = {"manifest": str(path.resolve()), "sha256": file_sha256(path), "utterances": len(items), "embedding": stats}
    return np.stack([utterance_vector(emb[p]) for p, _ in items]), info


def cohort_statistics(vectors: np.ndarray, cohort: np.ndarray, top_k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``vectors`` [U, D]: mean and population std of its top-``top_k`` scores against ``cohort`` [M, D]."""
    vectors, cohort = np.asarray(vectors, np.float64), np.asarray(cohort, np.float64)
    m = cohort.shape[0]
    k = max(1, min(int(top_k), m))
    mu, sd = np.empty(len(vectors)), np.empty(len(vectors))
    for i in range(0, len(vectors), chunk):
        s = vectors[i:i + chunk] @ cohort.T
        top = np.partition(s, m - k, axis=1)[:, m - k:]
        mu[i:i + chunk], sd[i:i + chunk] = top.mean(1), top.std(1)
    return mu, sd


def as_norm(scores: np.ndarray, mu_a: np.ndarray, sd_a: np.ndarray, mu_b: np.ndarray, sd_b: np.ndarray,
            eps: float = 1e-8) -> np.ndarray:
    """Adaptive s-norm: ½·((s − μ_a)/σ_a + (s − μ_b)/σ_b)."""
    s = np.asarray(scores, np.float64)
    return 0.5 * ((s - mu_a) / np.maximum(sd_a, eps) + (s - mu_b) / np.maximum(sd_b, eps))


EMBEDDING_NORMS = ("mean", "zscore")


def set_statistics(vectors: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """μ = mean of the rows of ``vectors`` [N, D]; σ = their per-dimension population std ("zscore") or 1 ("mean")."""
    v = np.asarray(vectors, np.float64)
    return v.mean(0), (v.std(0) if kind == "zscore" else np.ones(v.shape[1]))


def adapt_embeddings(vectors: np.ndarray, mu: np.ndarray, sd: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """v' = (v − μ)/σ scaled to unit length, so a dot product of two is the cosine of the adapted embeddings."""
    v = (np.asarray(vectors, np.float64) - mu) / np.maximum(sd, eps)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def metrics_from_scores(scores, labels) -> dict:
    """EER (percent) with its threshold, minDCF at p_target 0.01 and 0.05 (C_miss = C_fa = 1)."""
    eer, thr = compute_eer(scores, labels)
    out = {"eer": 100.0 * eer, "eer_threshold": thr}
    for p in P_TARGETS:
        dcf, t = compute_min_dcf(scores, labels, p)
        out[f"min_dcf_{p:g}"] = dcf
        out[f"min_dcf_{p:g}_threshold"] = t
    return out


def _json_float(x: float) -> float | str:
    return float(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf")


def plot_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``results.json`` -> (``results_scores.png``, ``results_det.png``)."""
    out = Path(out)
    return out.with_name(out.stem + "_scores.png"), out.with_name(out.stem + "_det.png")


# ---- the whole evaluation ----------------------------------------------------------------
def evaluate(model, trials_path: str | os.PathLike, audio_root: str | os.PathLike | None = None,
             protocol: str | Protocol = "full", out: str | os.PathLike | None = None,
             cache: str | os.PathLike | None | bool = None, score_norm: str | None = None,
             cohort: str | os.PathLike | None = None, top_k: int = 200, device: str | None = None,
             progress: bool = True, embedding_norm: str | None = None,
             norm_data: str | os.PathLike | None = None) -> dict:
    """Evaluate ``model`` (a ``SpeakerEncoder`` or a model/checkpoint/run path) on a trial list.

    ``audio_root`` defaults to the trial list's folder; ``cache`` is a folder (None: the default
    cache folder; False: no cache). ``score_norm="asnorm"`` needs ``cohort`` (a manifest of other
    speakers' utterances). ``embedding_norm`` ("mean" or "zscore") adapts the embeddings to the
    statistics of ``norm_data``: None or "trials" (the trial list's own utterances, unlabelled) or
    a manifest of in-domain utterances. Writes ``out`` (JSON) and its two PNGs when ``out`` is
    given; returns the results dict.
    """
    from .. import __version__
    from ..inference.model import SpeakerEncoder, file_sha256

    t_start = time.perf_counter()
    if not isinstance(model, SpeakerEncoder):
        model = SpeakerEncoder.load(model, device or "cpu")
    elif device is not None:
        model.to(device)
    protocol = get_protocol(protocol)
    if score_norm in (None, "none"):
        score_norm = None
    elif score_norm != "asnorm":
        raise ValueError(f"score_norm={score_norm!r}: expected none or asnorm")
    elif cohort is None:
        raise ValueError("score normalisation asnorm needs a cohort manifest (--cohort MANIFEST)")
    if embedding_norm in (None, "none"):
        embedding_norm = None
    elif embedding_norm not in EMBEDDING_NORMS:
        raise ValueError(f"embedding_norm={embedding_norm!r}: expected none, mean or zscore")
    trials_path = Path(trials_path)
    if not trials_path.is_file():
        raise FileNotFoundError(f"{trials_path}: no such trial list")
    trials = read_trials(trials_path)
    if not trials:
        raise ValueError(f"{trials_path}: no trials")
    root = str(audio_root) if audio_root is not None else str(trials_path.resolve().parent)
    labels = np.array([t.label for t in trials])
    n_target = int(labels.sum())
    if n_target in (0, len(labels)):
        raise ValueError(f"{trials_path}: needs both target (1) and non-target (0) trials; "
                         f"has {n_target} targets of {len(labels)}")

    seen: dict[str, str] = {}
    for t in trials:
        for p in (t.a, t.b):
            seen.setdefault(resolve(p, root), p)
    _check_files(list(seen), f"{trials_path} (audio root {root})")
    store = None
    if cache is not False:
        store = EmbeddingCache(default_cache_dir() if cache in (None, True) else cache, model.fingerprint, protocol)
    emb, emb_stats = embed_utterances(model, protocol, list(seen.items()), store, progress)
    vectors = {p: utterance_vector(e) for p, e in emb.items()}
    emb_norm_info, adapt = None, None
    if embedding_norm:
        upaths, umat = list(vectors), np.stack(list(vectors.values()))
        if norm_data in (None, "trials"):
            data, emb_norm_info = umat, {"data": "trials", "utterances": len(upaths)}
        else:
            data, info = embed_manifest(model, protocol, norm_data, store, progress, "norm data")
            emb_norm_info = {"data": "manifest", **info}
        if len(data) < 2:
            raise ValueError(f"embedding normalisation needs at least 2 utterances of norm data, got {len(data)}")
        adapt = functools.partial(adapt_embeddings, **dict(zip(("mu", "sd"), set_statistics(data, embedding_norm))))
        vectors = dict(zip(upaths, adapt(umat)))
        emb_norm_info = {"name": embedding_norm, **emb_norm_info,
                         "formula": "cosine of (v - mu)/sd" + (" (sd: population std per dimension)"
                                                              if embedding_norm == "zscore" else " (sd = 1)")}
    raw = np.asarray(score_trials(trials, vectors, root), dtype=np.float64)
    scores = raw
    norm_info = None
    if score_norm == "asnorm":
        cmat, cinfo = embed_manifest(model, protocol, cohort, store, progress, "cohort")
        if adapt is not None:
            cmat = adapt(cmat)
        upaths = list(vectors)
        mu, sd = cohort_statistics(np.stack([vectors[p] for p in upaths]), cmat, top_k)
        index = {p: i for i, p in enumerate(upaths)}
        ia = np.array([index[resolve(t.a, root)] for t in trials])
        ib = np.array([index[resolve(t.b, root)] for t in trials])
        scores = as_norm(raw, mu[ia], sd[ia], mu[ib], sd[ib])
        norm_info = {"name": "asnorm", "cohort": cinfo["manifest"], "cohort_sha256": cinfo["sha256"],
                     "cohort_size": len(cmat), "top_k": int(top_k), "effective_top_k": min(int(top_k), len(cmat)),
                     "std": "population (ddof=0)", "cohort_embedding": cinfo["embedding"],
                     "formula": "0.5*((s-mu_a)/sd_a + (s-mu_b)/sd_b) over each side's top-k cohort scores"}

    metrics = metrics_from_scores(scores, labels)
    source = Path(model.source) if model.source else None
    results: dict[str, Any] = {
        **{k: _json_float(v) for k, v in metrics.items()},
        "n_trials": len(trials),
        "protocol": protocol.to_dict(),
        "score_norm": norm_info,
        "embedding_norm": emb_norm_info,
        "trials": {"path": str(trials_path.resolve()), "sha256": file_sha256(trials_path), "n_trials": len(trials),
                   "targets": n_target, "nontargets": len(trials) - n_target, "utterances": len(seen),
                   "audio_root": str(Path(root).resolve())},
        "model": {"path": str(source.resolve()) if source else None,
                  "sha256": file_sha256(source) if source and source.is_file() else None,
                  "fingerprint": model.fingerprint, "metadata": model.metadata},
        "config": model.config,
        "scores": {"target_mean": float(scores[labels == 1].mean()), "target_std": float(scores[labels == 1].std()),
                   "nontarget_mean": float(scores[labels == 0].mean()),
                   "nontarget_std": float(scores[labels == 0].std())},
        "embedding": {**emb_stats, "cache": str(store.path) if store else None, "device": str(model.device)},
        "sslspeaker": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "seconds": None,
        "plots": None,
    }
    if out is not None:
        write_results(results, out, scores, labels)
    results["seconds"] = round(time.perf_counter() - t_start, 2)
    if out is not None:
        _write_json(results, out)
    return results


def write_results(results: dict, out: str | os.PathLike, scores, labels) -> dict:
    """Plots next to ``out`` (recorded in ``results['plots']``), then the JSON itself."""
    from .plots import plot_det, plot_score_distributions

    out = Path(out)
    scores_png, det_png = plot_paths(out)
    proto = results.get("protocol", {}).get("name", "")
    en = results.get("embedding_norm")
    norm = (f" + {en['name']} over {en['data']}" if en else "") + (" + AS-norm" if results.get("score_norm") else "")
    title = f"{Path(results.get('trials', {}).get('path', '')).name} · {proto}{norm}"
    eer_thr = results.get("eer_threshold")
    plot_score_distributions(scores, labels, eer_thr if isinstance(eer_thr, float) else None, scores_png,
                             title=f"Scores: {title}")
    points = [(p, results[f"min_dcf_{p:g}"], results[f"min_dcf_{p:g}_threshold"]) for p in P_TARGETS]
    points = [(p, d, float(t)) for p, d, t in points]
    plot_det(scores, labels, det_png, eer=results["eer"] / 100.0, dcf_points=points, title=f"DET: {title}")
    results["plots"] = {"scores": str(scores_png), "det": str(det_png)}
    _write_json(results, out)
    return results


def _write_json(results: dict, out: str | os.PathLike) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, out)


__all__ = ["evaluate", "embed_utterances", "embed_manifest", "score_trials", "cohort_statistics", "as_norm",
           "set_statistics", "adapt_embeddings", "metrics_from_scores",
           "EmbeddingCache", "default_cache_dir", "plot_paths", "write_results"]
