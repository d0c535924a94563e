"""Result figures: same/different-speaker score distributions, the DET curve of one system and the
DET curves of several systems on one set of axes (PNG, PDF or SVG by the file's suffix; Agg backend).

Only the drawing needs matplotlib (the ``plots`` extra); the numbers (``det_points``, ``probit``,
``density``, ``det_ticks``) need numpy and torch alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..fileio import atomic_path

FORMATS = (".png", ".pdf", ".svg")
COSINE_RANGE = (-1.0, 1.0)
# Candidate DET ticks (error rates) in order of preference: powers of ten and 50 %, then 2s and 5s, then
# the rest; det_ticks keeps, in this order, those inside the axes that do not crowd the ones kept.
_TICK_PREFERENCE = (0.5, 0.1, 0.01, 0.001, 0.0001, 0.9, 0.99, 0.999, 0.2, 0.05, 0.02, 0.005, 0.002, 0.0005, 0.0002,
                    0.8, 0.95, 0.98, 0.995, 0.998, 0.3, 0.4, 0.6, 0.7)
_TICKS = tuple(sorted(_TICK_PREFERENCE))


def _pyplot():
    from ..errors import require_extra

    matplotlib = require_extra("matplotlib", "plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_format(path: str | os.PathLike) -> Path:
    """``path`` when its suffix is .png, .pdf or .svg, else ``ValueError`` naming it."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: a figure is written as {', '.join(FORMATS)} (by the suffix), not "
                         f"{path.suffix or 'a file without a suffix'}")
    return path


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating its folder; format by suffix) and close it."""
    path = check_format(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=path.suffix[1:].lower())
    finally:
        plt.close(fig)
    return path


def probit(p) -> np.ndarray:
    """Φ⁻¹(p), the standard normal quantile (the DET axes' scale)."""
    return torch.special.ndtri(torch.as_tensor(np.asarray(p, dtype=np.float64))).numpy()


def density(x: np.ndarray, grid: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Gaussian kernel density of ``x`` on ``grid`` (Scott's bandwidth σ n^(-1/5)); with ``bounds`` the
    kernels are reflected at them, so no density lies past a bound and the total stays 1."""
    x = np.asarray(x, dtype=np.float64)
    h = max(float(x.std(ddof=1)) * x.size ** -0.2, 1e-12)
    centres = [x] if bounds is None else [x, 2 * bounds[0] - x, 2 * bounds[1] - x]
    d = sum(np.exp(-0.5 * ((grid[:, None] - c[None, :]) / h) ** 2).sum(axis=1) for c in centres)
    d = d / (x.size * h * math.sqrt(2 * math.pi))
    if bounds is not None:
        d[(grid < bounds[0]) | (grid > bounds[1])] = 0.0
    return d


def plot_score_distributions(scores, labels, threshold: float | None, path: str | os.PathLike,
                             title: str | None = None, score_range: tuple[float, float] | None = COSINE_RANGE,
                             xlabel: str = "score (cosine similarity)") -> Path:
    """Histograms (as densities) of target and non-target scores, with a smoothed density curve
    for each and the decision threshold as a vertical line (cf. MoCoVox Fig. 2). ``score_range``:
    the values a score can take (cosine: [-1, 1]); nothing is drawn past them (None: unbounded)."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    tgt, non = scores[labels], scores[~labels]
    lo, hi = float(scores.min()), float(scores.max())
    pad = 0.02 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    if score_range is not None:
        lo, hi = max(lo, score_range[0]), min(hi, score_range[1])
    bins = np.linspace(lo, hi, 61)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for x, colour, name in ((non, "tab:red", "different speakers"), (tgt, "tab:blue", "same speaker")):
        ax.hist(x, bins=bins, density=True, alpha=0.35, color=colour, label=f"{name} ({x.size} trials)")
        if x.size > 2 and np.ptp(x) > 0:
            grid = np.linspace(bins[0], bins[-1], 400)
            ax.plot(grid, density(x, grid, score_range), color=colour, lw=1.5, label=f"{name}: density")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"EER threshold {threshold:.3f}")
    ax.set_xlim(bins[0], bins[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title or "Score distributions")
    ax.legend(loc="upper left", fontsize=8)
    return _save(plt, fig, path)


def det_points(scores, labels, max_points: int = 400) -> dict:
    """The DET curve thinned to at most ``max_points`` points evenly spaced along it on the probit axes,
    first and last kept: ``{"p_fa": [...], "p_miss": [...]}`` (what a results file stores for overlays)."""
    from .metrics import det_curve

    p_fa, p_miss, _ = det_curve(scores, labels)
    x, y = probit(np.clip(p_fa, 1e-6, 1 - 1e-6)), probit(np.clip(p_miss, 1e-6, 1 - 1e-6))
    along = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    keep = np.unique(np.searchsorted(along, np.linspace(0.0, along[-1], max_points), side="left"))
    keep = np.unique(np.concatenate(([0], np.minimum(keep, len(x) - 1), [len(x) - 1])))
    return {"p_fa": [float(v) for v in p_fa[keep]], "p_miss": [float(v) for v in p_miss[keep]]}


def det_limits(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Axis range (both axes) of DET curves: from the candidate tick below the smallest error rate any
    curve reaches while the other rate is below 50 % (between 0.01 % and 1 %) to 50 %, or further when a
    curve's EER-like region lies above it (to at most 99.9 %)."""
    rates = [np.concatenate((fa[(fa > 0) & (miss < 0.5)], miss[(miss > 0) & (fa < 0.5)])) for fa, miss in curves]
    rates = np.concatenate(rates) if rates else np.array([])
    smallest = float(rates.min()) if rates.size else 0.001
    lo = min(max([t for t in _TICKS if t <= smallest] or [_TICKS[0]]), 0.01)  # at least 1 % to 50 %
    crossing = max((float(np.max(np.minimum(fa, miss))) for fa, miss in curves), default=0.0)
    hi = min([t for t in _TICKS if t >= max(0.5, 1.6 * crossing)] or [_TICKS[-1]])
    return lo, hi


def det_ticks(lim: tuple[float, float], min_gap: float | None = None) -> list[float]:
    """Candidate ticks inside ``lim`` at least ``min_gap`` probit units apart (default: an eighth of
    the axis), the less round ones giving way, so labels never crowd."""
    span = float(probit(lim[1]) - probit(lim[0]))
    gap = span / 8 if min_gap is None else min_gap
    kept: list[float] = []
    for t in (t for t in _TICK_PREFERENCE if lim[0] <= t <= lim[1]):
        if all(abs(float(probit(t) - probit(k))) >= gap for k in kept):
            kept.append(t)
    return sorted(kept)


def _det_axes(ax, lim: tuple[float, float], title: str) -> None:
    """Probit axes over ``lim`` with uncrowded percentage ticks, the EER diagonal, labels and a grid."""
    ticks = det_ticks(lim)
    labels = [f"{100 * t:g}" for t in ticks]
    ax.plot(probit(lim), probit(lim), color="0.7", lw=0.8, ls=":", label="_EER diagonal")
    ax.set_xticks(probit(ticks), labels)
    ax.set_yticks(probit(ticks), labels)
    ax.set_xlim(probit(lim[0]), probit(lim[1]))
    ax.set_ylim(probit(lim[0]), probit(lim[1]))
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("false rejection rate (%)")
    ax.set_title(title)
    ax.grid(True, color="0.9")


def _curve(p: np.ndarray, lim: tuple[float, float]) -> np.ndarray:
    return probit(np.clip(p, lim[0] / 2, 1 - (1 - lim[1]) / 2))


def plot_det(scores, labels, path: str | os.PathLike, eer: float | None = None,
             dcf_points: list[tuple[float, float, float]] | None = None, title: str | None = None,
             system: str = "DET") -> Path:
    """DET curve of one system (named ``system`` in the legend) on probit axes, with the EER point and
    the minDCF operating points.

    ``eer`` is a fraction; ``dcf_points`` are ``(p_target, min_dcf, threshold)``: each is marked at
    the (P_fa, P_miss) of its threshold.
    """
    from .metrics import det_curve

    plt = _pyplot()
    p_fa, p_miss, thr = det_curve(scores, labels)
    lim = det_limits([(p_fa, p_miss)])
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    ax.plot(_curve(p_fa, lim), _curve(p_miss, lim), color="tab:blue", lw=1.5, label=system)
    if eer is not None:
        ax.plot(probit(eer), probit(eer), "o", color="k", label=f"EER {100 * eer:.2f}%")
    for (p_target, dcf, t), marker in zip(dcf_points or [], ("s", "^", "D", "v")):
        k = int(np.searchsorted(thr, t)) if np.isfinite(t) else len(thr) - 1
        k = min(k, len(thr) - 1)
        ax.plot(_curve(p_fa[k], lim), _curve(p_miss[k], lim), marker, ms=7, mfc="none", mew=1.5,
                label=f"minDCF(p={p_target:g}) {dcf:.3f}")
    _det_axes(ax, lim, title or "DET curve")
    ax.legend(loc="upper right", fontsize=8)
    return _save(plt, fig, path)


def plot_det_overlay(systems: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """DET curves of several systems on one pair of axes. Each system is ``{"name", "p_fa", "p_miss"}``
    and optionally ``"eer"`` (a fraction, marked and given in the legend)."""
    plt = _pyplot()
    if not systems:
        raise ValueError("a DET overlay needs at least one system")
    curves = [(np.asarray(s["p_fa"], dtype=np.float64), np.asarray(s["p_miss"], dtype=np.float64)) for s in systems]
    lim = det_limits(curves)
    fig, ax = plt.subplots(figsize=(5.6, 5.6), dpi=110)
    styles = ("-", "--", "-.", ":")
    for i, (s, (fa, miss)) in enumerate(zip(systems, curves)):
        eer = s.get("eer")
        label = s["name"] + (f" (EER {100 * eer:.2f}%)" if eer is not None else "")
        line, = ax.plot(_curve(fa, lim), _curve(miss, lim), lw=1.5, ls=styles[(i // 10) % 4], label=label)
        if eer is not None:
            ax.plot(probit(eer), probit(eer), "o", ms=4, color=line.get_color(), label=f"_{label}")
    _det_axes(ax, lim, title or "DET curves")
    ax.legend(loc="upper right", fontsize=8)
    return _save(plt, fig, path)


__all__ = ["FORMATS", "check_format", "density", "det_limits", "det_points", "det_ticks", "plot_det",
           "plot_det_overlay", "plot_score_distributions", "probit"]
