"""The pseudo-label stage: a pool of unlabelled speech and a model in, speaker labels out.

``pseudolabel(model, data, out, options)`` reads the pool's manifest, embeds every utterance
whole with the model (for a run folder of a momentum method, MoCo or DINO, its key / teacher
encoder unless ``encoder`` says otherwise), refuses a degenerate model (see ``embedding_spread``), finds the number of
clusters when asked (``estimate``), clusters (``cluster``), refuses a collapsed clustering,
drops unreliable members (``filter``) and writes into ``out``:

- ``manifest.csv``: the kept utterances, ``path,speaker,duration``, speaker a pseudo id
  ``c00000``, ``c00001``, ... numbered from the largest cluster down;
- ``embeddings.npy``: the [N, D] float32 embeddings of the whole pool, in the manifest's order,
  with ``embedding_ids.csv`` (``path,cluster,speaker,status``) naming each row, for later stages;
- ``report.json`` (written last): the clusters and their sizes, kept and dropped members with
  reasons, how the count was found, the model, the resolved options, the timings, and, when the
  pool's manifest names speakers, NMI/ARI/purity under ``diagnostics`` (reported, never used).

A model whose embeddings have almost no spread is refused: for unit vectors the mean pairwise
cosine is (‖Σ x_i‖² − N) / (N (N − 1)); above ``max_mean_cosine`` (0.95) the utterances all map
to nearly one direction, which is what an untrained or collapsed encoder does.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data.audio import SAMPLE_RATE, read_audio
from ..data.manifest import Entry, read_manifest, write_manifest
from ..fileio import atomic_open, atomic_path, atomic_write_text, file_sha256, utc_now
from ..inference.checkpoint_source import ENCODER_CHOICES
from .cluster import ALGORITHMS, KMEANS_BACKENDS, LINKAGES, Clustering, check_collapse, cluster
from .diagnostics import cluster_agreement
from .errors import PseudoLabelError
from .estimate import estimate_clusters
from .filter import FilterResult, FilterRule, filter_members

__all__ = ["OUTPUTS", "PseudoLabelOptions", "embed_pool", "embedding_spread", "pseudo_speakers", "pseudolabel"]

log = logging.getLogger(__name__)
OUTPUTS = {"manifest": "manifest.csv", "embeddings": "embeddings.npy", "ids": "embedding_ids.csv",
           "report": "report.json"}
FORMAT = "sslspeaker-pseudolabel"


def _bad(option: str, message: str) -> PseudoLabelError:
    return PseudoLabelError(f"--{option.replace('_', '-')}: {message}")


def _cluster_count(value: int | str) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise _bad("clusters", f"expected an integer >= 2 or 'auto', got {value!r}") from None
    if k < 2 or (isinstance(value, float) and value != k):
        raise _bad("clusters", f"expected an integer >= 2 or 'auto', got {value!r}")
    return k


@dataclass(frozen=True)
class PseudoLabelOptions:
    """Every choice of the stage; the command-line option of each is ``--`` + its name with dashes."""

    clusters: int | str = "auto"
    encoder: str = "auto"  # run folders: auto = the momentum (key / teacher) encoder when there is one
    algorithm: str = "kmeans"
    linkage: str = "average"
    kmeans_backend: str = "auto"
    device: str = "auto"
    seed: int = 0
    min_cluster_size: int = 2
    drop_mads: float | None = 3.0
    min_margin: float | None = None
    estimate_points: int = 3000
    max_clusters: int | None = None
    max_cluster_share: float = 0.5
    max_singleton_share: float = 0.5
    max_mean_cosine: float = 0.95
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "clusters", _cluster_count(self.clusters))
        for name, allowed in (("algorithm", ALGORITHMS), ("linkage", LINKAGES), ("kmeans_backend", KMEANS_BACKENDS),
                              ("encoder", ENCODER_CHOICES)):
            if getattr(self, name) not in allowed:
                raise _bad(name, f"expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.estimate_points < 4:
            raise _bad("estimate_points", f"expected an integer >= 4, got {self.estimate_points}")
        if self.max_clusters is not None and self.max_clusters < 2:
            raise _bad("max_clusters", f"expected an integer >= 2, got {self.max_clusters}")
        for name in ("max_cluster_share", "max_singleton_share", "max_mean_cosine"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise _bad(name, f"expected a number in (0, 1], got {getattr(self, name)!r}")
        self.rule()  # checks the filter's options

    def rule(self) -> FilterRule:
        """The member filter these options describe."""
        return FilterRule(min_cluster_size=self.min_cluster_size, outlier_mads=self.drop_mads,
                          min_margin=self.min_margin)


class _Timer(dict):
    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self[stage] = round(time.perf_counter() - t0, 3)


# ---- stages ----------------------------------------------------------------------------------
def _prepare_out(out: str | os.PathLike, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PseudoLabelError(f"--out {out}: exists and is not a folder")
    there = [name for name in OUTPUTS.values() if (out / name).exists()]
    if there and not force:
        raise PseudoLabelError(f"--out {out}: already holds a pseudo-label result ({', '.join(there)}); "
                               "pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUTS["report"]).unlink(missing_ok=True)  # a report describes only the files of a finished run
    return out


def _read_pool(data: str | os.PathLike) -> list[Entry]:
    if not Path(data).is_file():
        raise PseudoLabelError(f"--data {data}: no such manifest")
    entries = read_manifest(data)
    if len(entries) < 2:
        raise PseudoLabelError(f"--data {data}: a pool needs at least 2 utterances, the manifest lists {len(entries)}")
    return entries


def embed_pool(model, entries: list[Entry], log_every: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D] float32 of each whole utterance, durations [N] in seconds) with ``model``."""
    emb = np.empty((len(entries), model.embed_dim), dtype=np.float32)
    durations = np.empty(len(entries), dtype=np.float64)
    for i, entry in enumerate(entries):
        wave = read_audio(entry.path)
        emb[i] = model.embed(wave)
        durations[i] = len(wave) / SAMPLE_RATE
        if (i + 1) % log_every == 0:
            log.info("embedded %d of %d utterances", i + 1, len(entries))
    return emb, durations


def embedding_spread(emb: np.ndarray, chunk: int = 1 << 16) -> dict:
    """Mean pairwise cosine (‖Σ x_i‖² − Σ ‖x_i‖²) / (N (N − 1)) of the rows, and their mean per-dimension std."""
    n = len(emb)
    total, squares = np.zeros(emb.shape[1]), np.zeros(emb.shape[1])
    for s in range(0, n, chunk):
        block = emb[s:s + chunk].astype(np.float64)
        total += block.sum(axis=0)
        squares += (block * block).sum(axis=0)
    std = np.sqrt(np.maximum(squares / n - (total / n) ** 2, 0.0))
    return {"mean_cosine": float((total @ total - squares.sum()) / (n * (n - 1))), "mean_std": float(std.mean())}


def _check_spread(emb: np.ndarray, max_mean_cosine: float, source: str) -> dict:
    if not np.isfinite(emb).all():
        raise PseudoLabelError(f"{source}: the model gives non-finite embeddings (NaN or inf)")
    spread = embedding_spread(emb)
    if spread["mean_cosine"] > max_mean_cosine:
        raise PseudoLabelError(
            f"{source}: the embeddings have almost no spread (mean pairwise cosine {spread['mean_cosine']:.3f} > "
            f"--max-mean-cosine {max_mean_cosine:g}): an untrained or collapsed model, train it first")
    return spread


def _cluster_count_for(emb: np.ndarray, options: PseudoLabelOptions, data) -> tuple[int, dict]:
    if options.clusters == "auto":
        est = estimate_clusters(emb, k_max=options.max_clusters, max_points=options.estimate_points,
                                seed=options.seed)
        return est.k, {"source": "auto", **est.as_dict()}
    if options.clusters > len(emb):
        raise PseudoLabelError(f"--data {data}: the pool has {len(emb)} utterances, fewer than --clusters "
                               f"{options.clusters}")
    return options.clusters, {"source": "given", "k": options.clusters}


def pseudo_speakers(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pseudo speaker id per member, ``c00000`` for the largest kept cluster on; '' where dropped."""
    sizes = np.bincount(labels[keep], minlength=int(labels.max()) + 1)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    ids = np.array([f"c{r:05d}" for r in rank[labels]], dtype=object)
    ids[~keep] = ""
    return ids


# ---- outputs ---------------------------------------------------------------------------------
def _write_outputs(out: Path, entries: list[Entry], durations: np.ndarray, emb: np.ndarray,
                   clustering: Clustering, kept: FilterResult, speakers: np.ndarray) -> None:
    write_manifest(out / OUTPUTS["manifest"],
                   [Entry(path=e.path, speaker=s, duration=float(d))
                    for e, s, d, k in zip(entries, speakers, durations, kept.keep) if k])
    with atomic_path(out / OUTPUTS["embeddings"], suffix=".npy") as tmp:
        np.save(tmp, emb)
    with atomic_open(out / OUTPUTS["ids"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "cluster", "speaker", "status"])
        for e, c, s, r in zip(entries, clustering.labels, speakers, kept.reasons):
            w.writerow([e.path, int(c), s, r or "kept"])


def _histogram(sizes: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(sizes, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def _sizes(sizes: np.ndarray) -> dict:
    sizes = sizes[sizes > 0]
    return {"clusters": int(len(sizes)), "largest": int(sizes.max()), "median": float(np.median(sizes)),
            "smallest": int(sizes.min()), "singletons": int((sizes == 1).sum()), "histogram": _histogram(sizes)}


def _diagnostics(entries: list[Entry], clustering: Clustering, kept: FilterResult, speakers: np.ndarray) -> dict | None:
    known = np.array([e.speaker is not None for e in entries])
    if not known.any():
        return None
    true = np.array([e.speaker or "" for e in entries], dtype=object)
    final = known & kept.keep
    return {"note": "against the pool's speaker column; reported only, never used by the stage",
            "labelled_utterances": int(known.sum()),
            "before_filter": cluster_agreement(true[known].astype(str), clustering.labels[known]),
            "kept": cluster_agreement(true[final].astype(str), speakers[final].astype(str)) if final.any() else None}


def _model_identity(model) -> dict:
    provenance = model.metadata.get("provenance") or {}
    return {"source": model.source, "fingerprint": model.fingerprint, "encoder": model.config["encoder"],
            "embed_dim": model.embed_dim, "device": str(model.device), "method": provenance.get("method"),
            "step": provenance.get("step"), "encoder_weights": provenance.get("encoder_weights"),
            "inference_encoder": provenance.get("inference_encoder")}


def _report(data, model, options: PseudoLabelOptions, durations: np.ndarray, spread: dict, count: dict,
            clustering: Clustering, kept: FilterResult, speakers: np.ndarray, entries: list[Entry],
            timing: dict) -> dict:
    from .. import __version__

    report = {
        "format": FORMAT, "format_version": 1, "created": utc_now(), "sslspeaker": __version__,
        "data": {"manifest": str(Path(data).resolve()), "sha256": file_sha256(data), "utterances": len(entries),
                 "seconds": round(float(durations.sum()), 3)},
        "model": _model_identity(model), "options": asdict(options), "embedding_spread": spread,
        "clustering": {"algorithm": clustering.algorithm, "backend": clustering.backend,
                       "k": clustering.requested_k, "k_found_by": count, **_sizes(clustering.sizes)},
        "kept": {"utterances": int(kept.keep.sum()), **_sizes(np.unique(speakers[kept.keep], return_counts=True)[1])},
        "dropped": {"utterances": int((~kept.keep).sum()), "by_reason": kept.counts(), "rule": asdict(options.rule())},
        "outputs": dict(OUTPUTS), "timing_s": timing,
    }
    diagnostics = _diagnostics(entries, clustering, kept, speakers)
    if diagnostics is not None:
        report["diagnostics"] = diagnostics
    return report


# ---- the stage -------------------------------------------------------------------------------
def _load(model, device: str, encoder: str):
    from ..inference.model import SpeakerEncoder

    if isinstance(model, SpeakerEncoder):
        if encoder not in ("auto", "inference"):
            raise _bad("encoder", f"{encoder!r} needs a run folder or checkpoint, not a loaded model")
        return model.to(device) if device != "auto" else model
    return SpeakerEncoder.load(model, device, encoder)


def pseudolabel(model, data: str | os.PathLike, out: str | os.PathLike,
                options: PseudoLabelOptions = PseudoLabelOptions()) -> dict:
    """Pseudo-label the pool ``data`` (a manifest) with ``model`` (a path, run folder, None for the
    bundled default, or a ``SpeakerEncoder``) into the folder ``out``; returns the report."""
    timing = _Timer()
    with timing("total"):
        out = _prepare_out(out, options.force)
        entries = _read_pool(data)
        encoder = _load(model, options.device, options.encoder)
        device = str(encoder.device)
        with timing("embed"):
            emb, durations = embed_pool(encoder, entries)
        spread = _check_spread(emb, options.max_mean_cosine, encoder.source or "the model")
        with timing("count"):
            k, count = _cluster_count_for(emb, options, data)
        with timing("cluster"):
            clustering = cluster(emb, k, algorithm=options.algorithm, linkage=options.linkage,
                                 backend=options.kmeans_backend, seed=options.seed, device=device)
        check_collapse(clustering.sizes, max_cluster_share=options.max_cluster_share,
                       max_singleton_share=options.max_singleton_share)
        with timing("filter"):
            kept = filter_members(emb, clustering.labels, options.rule())
        if not kept.keep.any():
            raise PseudoLabelError(f"--data {data}: the filter dropped every utterance ({kept.counts()})")
        speakers = pseudo_speakers(clustering.labels, kept.keep)
        _write_outputs(out, entries, durations, emb, clustering, kept, speakers)
    report = _report(data, encoder, options, durations, spread, count, clustering, kept, speakers, entries,
                     dict(timing))
    atomic_write_text(out / OUTPUTS["report"], json.dumps(report, indent=2) + "\n")
    return report
