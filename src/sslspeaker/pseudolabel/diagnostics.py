"""How well clusters match true speakers: NMI, ARI and purity, for the report only.

Nothing in the pseudo-label stage decides anything from these: they are computed after the
labels are final, and only where the pool's manifest names real speakers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["ari", "cluster_agreement", "nmi", "purity"]


def nmi(true: Sequence, pred: Sequence) -> float:
    """Normalised mutual information I(T; C) / ((H(T) + H(C)) / 2) (scikit-learn, arithmetic mean)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(true, pred))


def ari(true: Sequence, pred: Sequence) -> float:
    """Adjusted Rand index of the two partitions (Hubert & Arabie 1985; scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(true, pred))


def purity(true: Sequence, pred: Sequence) -> float:
    """Purity = (1/N) Σ_c max_t |c ∩ t|: the share of members that belong to their cluster's main speaker."""
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(true, pred, sparse=True).tocsc()  # rows: true speakers, columns: clusters
    return float(table.max(axis=0).sum() / table.sum())


def cluster_agreement(true: Sequence, pred: Sequence) -> dict:
    """NMI, ARI and purity of clusters ``pred`` against speakers ``true`` over the members given."""
    true, pred = np.asarray(true), np.asarray(pred)
    return {"utterances": int(len(true)), "speakers": int(len(np.unique(true))),
            "clusters": int(len(np.unique(pred))), "nmi": nmi(true, pred), "ari": ari(true, pred),
            "purity": purity(true, pred)}
