"""Balanced verification trial lists and speaker splits (deterministic, from a seed).

``build_trials`` takes utterances with their speakers and returns VoxCeleb-format trials
(``LABEL PATH_A PATH_B``): as many different-speaker pairs (label 0) as same-speaker pairs
(label 1), never an utterance against itself, no pair twice (in either order). The result
depends only on the *set* of (path, speaker) items, the size asked for and the seed, not on
the order the items come in.

``split_speakers`` splits sorted speaker names into training and held-out test speakers by
position (evenly spaced over the sorted list), so a corpus whose ids encode a group (age,
gender, recording batch) puts every group on both sides.
"""

from __future__ import annotations

import os
from collections import defaultdict
from itertools import combinations
from typing import Iterable, Sequence

import numpy as np

from .manifest import Entry, Trial


def group_by_speaker(items: Iterable[Entry | tuple[str, str]]) -> dict[str, list[str]]:
    """``{speaker: sorted unique paths}`` in sorted speaker order; items without a speaker are dropped."""
    groups: dict[str, set[str]] = defaultdict(set)
    for it in items:
        path, speaker = (it.path, it.speaker) if isinstance(it, Entry) else (it[0], it[1])
        if speaker:
            groups[str(speaker)].add(str(path))
    return {s: sorted(groups[s]) for s in sorted(groups)}


def build_trials(items: Iterable[Entry | tuple[str, str]], max_trials: int | None = None, seed: int = 0,
                 relative_to: str | os.PathLike | None = None) -> list[Trial]:
    """Balanced trials over ``items`` (``Entry`` or ``(path, speaker)``): half targets, half non-targets.

    Targets: every same-speaker pair, or ``max_trials // 2`` of them drawn without replacement
    (speakers take turns, so each contributes as evenly as its utterances allow). Non-targets:
    the same number of distinct different-speaker pairs, drawn by picking two different speakers
    uniformly, then one utterance of each. ``relative_to``: write paths relative to this folder.
    Raises ``ValueError`` when no balanced list is possible (fewer than two speakers, or no
    speaker with two utterances).
    """
    groups = group_by_speaker(items)
    speakers = list(groups)
    if len(speakers) < 2:
        raise ValueError(f"a trial list needs at least 2 speakers, got {len(speakers)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7121A15]))

    # Targets: per speaker, its pairs in a seeded order; then round-robin over speakers.
    per_speaker = []
    for s in speakers:
        pairs = list(combinations(groups[s], 2))
        per_speaker.append([pairs[i] for i in rng.permutation(len(pairs))])
    n_target_all = sum(len(p) for p in per_speaker)
    if n_target_all == 0:
        raise ValueError("a trial list needs a speaker with at least 2 utterances (no same-speaker pair possible)")
    n_nontarget_all = sum(len(groups[a]) * len(groups[b]) for a, b in combinations(speakers, 2))
    n = min(n_target_all, n_nontarget_all)
    if max_trials is not None:
        if max_trials < 2:
            raise ValueError(f"max_trials must be >= 2, got {max_trials}")
        n = min(n, max_trials // 2)
    targets: list[tuple[str, str]] = []
    depth = 0
    while len(targets) < n:
        for pairs in per_speaker:
            if depth < len(pairs) and len(targets) < n:
                targets.append(pairs[depth])
        depth += 1

    # Non-targets: distinct unordered pairs of utterances of two different speakers.
    nontargets: set[tuple[str, str]] = set()
    if n > n_nontarget_all // 2:  # dense: enumerate them all and draw without replacement
        every = [(a, b) for s, t in combinations(speakers, 2) for a in groups[s] for b in groups[t]]
        nontargets = {every[i] for i in rng.choice(len(every), size=n, replace=False)}
    else:  # sparse: rejection sampling needs few retries
        while len(nontargets) < n:
            i, j = rng.choice(len(speakers), size=2, replace=False)
            a = groups[speakers[i]][rng.integers(len(groups[speakers[i]]))]
            b = groups[speakers[j]][rng.integers(len(groups[speakers[j]]))]
            nontargets.add((a, b) if a < b else (b, a))

    def rel(p: str) -> str:
        return os.path.relpath(p, relative_to) if relative_to is not None else p

    trials = [Trial(1, rel(a), rel(b)) for a, b in targets]
    trials += [Trial(0, rel(a), rel(b)) for a, b in sorted(nontargets)]
    return [trials[i] for i in rng.permutation(len(trials))]


def split_speakers(speakers: Iterable[str], test_fraction: float = 0.2, min_test: int = 2,
                   min_train: int = 1) -> tuple[list[str], list[str]]:
    """(train, test) speaker names: ``max(min_test, round(test_fraction * n))`` test speakers evenly
    spaced over the sorted names (e.g. every 5th for 20 %), the rest for training."""
    names = sorted(set(speakers))
    n = len(names)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(min_test, int(round(test_fraction * n)))
    if n - n_test < min_train:
        raise ValueError(f"{n} speakers cannot give {min_test}+ held-out test speakers and {min_train}+ "
                         f"training speakers (need at least {min_test + min_train})")
    picks = {int((j + 0.5) * n / n_test) for j in range(n_test)}
    test = [s for i, s in enumerate(names) if i in picks]
    train = [s for i, s in enumerate(names) if i not in picks]
    return train, test


def trial_speakers(trials: Sequence[Trial], speaker_of: dict[str, str]) -> set[str]:
    """Speakers named by a trial list, given ``{path: speaker}`` for its paths as written."""
    return {speaker_of[p] for t in trials for p in (t.a, t.b)}


__all__ = ["build_trials", "split_speakers", "group_by_speaker", "trial_speakers"]
