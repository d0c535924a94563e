"""Cllr, min Cllr (PAV) and actual DCF against hand-made lists and direct computations."""

import math

import numpy as np
import pytest

from sslspeaker.evaluation.llr_metrics import actual_dcf, bayes_threshold, cllr, min_cllr, pav_llr
from sslspeaker.evaluation.metrics import compute_min_dcf

LLR = [2.0, 0.5, -1.0, 3.0, -2.0, 0.0, 1.0]
LABELS = [1, 1, 1, 0, 0, 0, 0]


def test_cllr_by_its_formula_on_a_hand_list():
    targets, nontargets = [2.0, 0.5, -1.0], [3.0, -2.0, 0.0, 1.0]
    direct = 0.5 * (sum(math.log2(1 + math.exp(-s)) for s in targets) / 3
                    + sum(math.log2(1 + math.exp(s)) for s in nontargets) / 4)
    assert cllr(LLR, LABELS) == pytest.approx(direct, rel=1e-12)
    assert cllr(np.zeros(6), [1, 0, 1, 0, 0, 1]) == pytest.approx(1.0, rel=1e-12)  # an uninformative system
    assert cllr([800.0, -800.0], [1, 0]) == pytest.approx(0.0, abs=1e-300)  # no overflow at large |llr|


def test_pav_and_min_cllr_on_a_hand_case():
    # scores 1..4 with labels 0 1 0 1: PAV posteriors 0, 1/2, 1/2, 1; equal class counts -> llr -inf, 0, 0, +inf
    np.testing.assert_array_equal(pav_llr([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1]), [-np.inf, 0.0, 0.0, np.inf])
    # targets (0, +inf) cost (1 + 0) / 2 bits, non-targets (-inf, 0) cost (0 + 1) / 2: min Cllr = 0.5
    assert min_cllr([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1]) == pytest.approx(0.5)
    # tied scores are one PAV block: 2 targets, 2 non-targets at one score -> posterior 1/2; prior odds 2/3
    np.testing.assert_allclose(pav_llr([1.0, 1.0, 1.0, 1.0, 0.0], [1, 0, 1, 0, 0]),
                               [math.log(1.5)] * 4 + [-np.inf])


def test_min_cllr_is_below_cllr_and_ignores_monotone_maps():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(3000), np.zeros(3000)]
    llr = 2 * np.concatenate([rng.normal(1, 1, 3000), rng.normal(-1, 1, 3000)])  # calibrated: llr = 2 s
    good, bad = cllr(llr, labels), cllr(5 * llr + 4, labels)
    best = min_cllr(llr, labels)
    assert best <= good < best + 0.02 and bad > good + 0.5, (best, good, bad)
    assert min_cllr(5 * llr + 4, labels) == pytest.approx(best, rel=1e-12)


def test_bayes_threshold():
    assert bayes_threshold(0.5) == 0.0
    assert bayes_threshold(0.01) == pytest.approx(math.log(99))
    assert bayes_threshold(0.2, c_miss=2.0, c_fa=1.0) == pytest.approx(math.log(0.8 / 0.4))
    with pytest.raises(ValueError, match="p_target"):
        bayes_threshold(1.0)


def test_actual_dcf_on_a_hand_list():
    # p = 0.5: threshold 0; misses: target -1.0 (1 of 3); false alarms: 3.0, 0.0, 1.0 (3 of 4, since llr >= 0)
    assert actual_dcf(LLR, LABELS, p_target=0.5) == pytest.approx((1 / 3 * 0.5 + 3 / 4 * 0.5) / 0.5)
    # p = 0.1: threshold log 9 = 2.197: misses 3 of 3, false alarms 1 of 4 -> (0.1 + 0.9 / 4) / 0.1
    assert actual_dcf(LLR, LABELS, p_target=0.1) == pytest.approx((0.1 * 1 + 0.9 * 0.25) / 0.1)


def test_actual_dcf_of_calibrated_scores_is_near_min_dcf():
    rng = np.random.default_rng(1)
    n = 100_000
    labels = np.r_[np.ones(n), np.zeros(n)]
    llr = 2 * np.concatenate([rng.normal(1, 1, n), rng.normal(-1, 1, n)])
    for p in (0.5, 0.1, 0.01):
        minimum = compute_min_dcf(llr, labels, p_target=p)[0]
        assert minimum <= actual_dcf(llr, labels, p) < minimum + 0.03, p
    shifted = actual_dcf(llr + 3, labels, 0.01)
    assert shifted > compute_min_dcf(llr, labels, 0.01)[0] + 0.3
