"""EER / minDCF / DET: hand-checked cases, tie handling, and brute-force cross-checks."""

import numpy as np
import pytest

from sslspeaker.evaluation import compute_eer, compute_min_dcf, det_curve

# 4 targets / 4 non-targets; accept when score >= t.  Operating points (t: P_miss, P_fa):
# .1: 0,1  .2: 0,3/4  .3: 1/4,3/4  .4: 1/4,1/2  .5: 1/4,1/4  .7: 1/2,1/4  .8: 3/4,1/4  .9: 3/4,0  inf: 1,0
HAND_POS = [0.9, 0.7, 0.5, 0.2]
HAND_NEG = [0.8, 0.4, 0.3, 0.1]


def _trials(pos, neg):
    return np.array(pos + neg, dtype=float), np.array([1] * len(pos) + [0] * len(neg))


def _brute_points(scores, labels):
    """Per threshold (every distinct score, then +inf): P_miss, P_fa by direct counting."""
    thresholds = sorted(set(scores.tolist())) + [np.inf]
    pos, neg = scores[labels == 1], scores[labels == 0]
    return [(t, np.mean(pos < t), np.mean(neg >= t)) for t in thresholds]


def _brute_eer(scores, labels):
    points = _brute_points(scores, labels)
    for (t0, m0, f0), (t1, m1, f1) in zip(points, points[1:]):
        if m0 - f0 < 0 <= m1 - f1:
            # intersect the segment (f0, m0) -> (f1, m1) with the diagonal P_miss = P_fa
            a = (f0 - m0) / ((m1 - m0) - (f1 - f0))
            return m0 + a * (m1 - m0)
    raise AssertionError("no crossing")


def _brute_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    norm = min(c_miss * p_target, c_fa * (1 - p_target))
    return min((c_miss * m * p_target + c_fa * f * (1 - p_target)) / norm for _, m, f in _brute_points(scores, labels))


def test_perfect_separation():
    s, y = _trials([0.9, 0.8, 0.7], [0.1, 0.2])
    eer, thr = compute_eer(s, y)
    assert eer == 0.0 and 0.2 < thr <= 0.7
    assert compute_min_dcf(s, y)[0] == 0.0


def test_fully_inverted_scores():
    s, y = _trials([0.1, 0.2], [0.8, 0.9])
    assert compute_eer(s, y)[0] == pytest.approx(1.0)
    assert compute_min_dcf(s, y)[0] == pytest.approx(1.0)  # best is reject-all (or accept-all)


def test_hand_case_eer_and_min_dcf():
    s, y = _trials(HAND_POS, HAND_NEG)
    assert compute_eer(s, y) == (pytest.approx(0.25), pytest.approx(0.5))
    # p_target = .5: DCF_norm = P_miss + P_fa, minimal (.5) only at t = .5
    assert compute_min_dcf(s, y, p_target=0.5) == (pytest.approx(0.5), pytest.approx(0.5))
    # p_target = .01: DCF_norm = P_miss + 99 P_fa; best is t = .9 with (3/4, 0)
    assert compute_min_dcf(s, y, p_target=0.01) == (pytest.approx(0.75), pytest.approx(0.9))


def test_interpolated_eer():
    # 1 target, 2 non-targets: points .4: (0, 1)  .5: (0, 1/2)  .6: (1, 1/2); crossing halfway from .5 to .6
    s, y = _trials([0.5], [0.4, 0.6])
    eer, thr = compute_eer(s, y)
    assert eer == pytest.approx(0.5) and thr == pytest.approx(0.55)


def test_ties_are_not_split_and_order_does_not_matter():
    # target and non-target tie at .5: points 0: (0, 1)  .5: (0, 1/2)  1: (1/2, 0) -> EER 1/4 at t = .75
    s, y = _trials([1.0, 0.5], [0.5, 0.0])
    assert compute_eer(s, y) == (pytest.approx(0.25), pytest.approx(0.75))
    assert compute_eer(s[::-1], y[::-1]) == (pytest.approx(0.25), pytest.approx(0.75))
    # all scores equal: only accept-all (0, 1) and reject-all (1, 0)
    assert compute_eer(np.zeros(6), [1, 0, 1, 0, 0, 1])[0] == pytest.approx(0.5)
    assert compute_min_dcf(np.zeros(6), [1, 0, 1, 0, 0, 1], p_target=0.5)[0] == pytest.approx(1.0)


def test_det_curve_endpoints_and_monotone():
    s, y = _trials(HAND_POS, HAND_NEG)
    p_fa, p_miss, thr = det_curve(s, y)
    assert (p_fa[0], p_miss[0], p_fa[-1], p_miss[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert np.isinf(thr[-1]) and np.all(np.diff(thr) > 0)
    assert np.all(np.diff(p_fa) <= 0) and np.all(np.diff(p_miss) >= 0)
    np.testing.assert_allclose(p_miss, [0, 0, 0.25, 0.25, 0.25, 0.5, 0.75, 0.75, 1])


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(20, 200, size=2)
    # rounding creates plenty of ties, including across classes
    s = np.round(np.concatenate([rng.normal(1.0, 1, n_pos), rng.normal(0, 1, n_neg)]), 1)
    y = np.array([1] * n_pos + [0] * n_neg)
    perm = rng.permutation(s.size)
    s, y = s[perm], y[perm]
    assert compute_eer(s, y)[0] == pytest.approx(_brute_eer(s, y), abs=1e-12)
    for p_target, c_miss, c_fa in [(0.01, 1, 1), (0.05, 1, 1), (0.5, 1, 1), (0.01, 10, 1)]:
        expected = _brute_min_dcf(s, y, p_target, c_miss, c_fa)
        assert compute_min_dcf(s, y, p_target, c_miss, c_fa)[0] == pytest.approx(expected, abs=1e-12)


def test_million_trials_runs():
    rng = np.random.default_rng(0)
    y = rng.random(1_000_000) < 0.1
    s = rng.normal(size=y.size) + 2.0 * y
    eer, _ = compute_eer(s, y)
    min_dcf, _ = compute_min_dcf(s, y)
    assert 0.1 < eer < 0.2 and 0.0 < min_dcf <= 1.0  # normal(2,1) vs normal(0,1): EER = Phi(-1) ~ 0.159


@pytest.mark.parametrize(
    "scores, labels",
    [([0.1, 0.2], [1, 1]), ([0.1, 0.2], [0, 0]), ([0.1, 0.2], [0, 2]), ([0.1], [0, 1]), ([np.nan, 0.2], [0, 1])],
)
def test_invalid_inputs(scores, labels):
    with pytest.raises(ValueError):
        compute_eer(scores, labels)
    with pytest.raises(ValueError):
        compute_min_dcf(scores, labels)


def test_single_class_message():
    with pytest.raises(ValueError, match="both target and non-target"):
        compute_eer([0.1, 0.2, 0.3], [1, 1, 1])
