"""Result figures: same/different-speaker score distributions and the DET curve (PNG, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating its folder) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def plot_score_distributions(scores, labels, threshold: float | None, path: str | os.PathLike,
                             title: str | None = None) -> Path:
    """Histograms (as densities) of target and non-target scores, with a smoothed density curve
    for each and the decision threshold as a vertical line (cf. MoCoVox Fig. 2)."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    tgt, non = scores[labels], scores[~labels]
    lo, hi = float(scores.min()), float(scores.max())
    pad = 0.02 * (hi - lo or 1.0)
    bins = np.linspace(lo - pad, hi + pad, 61)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for x, colour, name in ((non, "tab:red", "different speakers"), (tgt, "tab:blue", "same speaker")):
        ax.hist(x, bins=bins, density=True, alpha=0.35, color=colour, label=f"{name} ({x.size})")
        if x.size > 2 and np.ptp(x) > 0:
            from scipy.stats import gaussian_kde

            grid = np.linspace(bins[0], bins[-1], 400)
            ax.plot(grid, gaussian_kde(x)(grid), color=colour, lw=1.5)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"EER threshold {threshold:.3f}")
    ax.set_xlabel("score (cosine similarity)")
    ax.set_ylabel("density")
    ax.set_title(title or "Score distributions")
    ax.legend(loc="upper left", fontsize=8)
    return _save(plt, fig, path)


_TICKS = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999]


def plot_det(scores, labels, path: str | os.PathLike, eer: float | None = None,
             dcf_points: list[tuple[float, float, float]] | None = None, title: str | None = None) -> Path:
    """DET curve on probit (normal-deviate) axes, with the EER point and the minDCF operating points.

    ``eer`` is a fraction; ``dcf_points`` are ``(p_target, min_dcf, threshold)``: each is marked at
    the (P_fa, P_miss) of its threshold.
    """
    from scipy.stats import norm

    from .metrics import det_curve

    plt = _pyplot()
    p_fa, p_miss, thr = det_curve(scores, labels)
    lim = (0.0005, 0.9995)
    probit = lambda p: norm.ppf(np.clip(p, *lim))  # noqa: E731
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    ax.plot(probit(p_fa), probit(p_miss), color="tab:blue", lw=1.5, label="DET")
    ax.plot(probit([lim[0], lim[1]]), probit([lim[0], lim[1]]), color="0.7", lw=0.8, ls=":")
    if eer is not None:
        ax.plot(probit(eer), probit(eer), "o", color="k", label=f"EER {100 * eer:.2f}%")
    for (p_target, dcf, t), marker in zip(dcf_points or [], ("s", "^", "D", "v")):
        k = int(np.searchsorted(thr, t)) if np.isfinite(t) else len(thr) - 1
        k = min(k, len(thr) - 1)
        ax.plot(probit(p_fa[k]), probit(p_miss[k]), marker, ms=7, mfc="none", mew=1.5,
                label=f"minDCF(p={p_target:g}) {dcf:.3f}")
    ticks = [t for t in _TICKS if lim[0] <= t <= lim[1]]
    labels_ = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(probit(ticks), labels_)
    ax.set_yticks(probit(ticks), labels_)
    ax.set_xlim(probit(lim[0]), probit(lim[1]))
    ax.set_ylim(probit(lim[0]), probit(lim[1]))
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("false rejection rate (%)")
    ax.set_title(title or "DET curve")
    ax.grid(True, color="0.9")
    ax.legend(loc="upper right", fontsize=8)
    return _save(plt, fig, path)


__all__ = ["plot_score_distributions", "plot_det"]
