"""Back-ends on synthetic Gaussian speakers: each PLDA equation against a direct computation, LDA against
scikit-learn, EM monotone and recovering the generating covariances, back-ends beating cosine, calibration,
and the chain's state round trip and checks."""

import json

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sslspeaker.backends import BackendChain, BackendStateError, LogisticCalibration, build_backend, list_backends
from sslspeaker.backends import plda as P
from sslspeaker.backends.calibration import weighted_cross_entropy
from sslspeaker.backends.preprocess import center, length_normalise, whiten, whitening_matrix
from sslspeaker.backends.stats import scatter, speaker_sums
from sslspeaker.config import ConfigError
from sslspeaker.evaluation.llr_metrics import cllr, min_cllr
from sslspeaker.evaluation.metrics import compute_eer


def random_spd(rng, dim, scales):
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.asarray(scales, dtype=float)) @ q.T


def gaussian_speakers(rng, n_speakers, n_utts, between, within, mean=None):
    """x = μ + y_s + e: y_s ~ N(0, between), e ~ N(0, within); returns (x, labels)."""
    dim = len(between)
    y = rng.multivariate_normal(np.zeros(dim), between, n_speakers)
    labels = np.repeat(np.arange(n_speakers), n_utts)
    e = rng.multivariate_normal(np.zeros(dim), within, len(labels))
    return (0.0 if mean is None else mean) + y[labels] + e, labels


def all_pairs(labels):
    i, j = np.triu_indices(len(labels), k=1)
    return i, j, (labels[i] == labels[j]).astype(int)


def small_model(rng, dim=3):
    between = random_spd(rng, dim, np.linspace(2.0, 0.5, dim))
    within = random_spd(rng, dim, np.linspace(1.0, 0.2, dim))
    return rng.standard_normal(dim), between, within


def stats_of(x, labels):
    index = np.unique(labels, return_inverse=True)[1]
    n, f = speaker_sums(x, index, int(index.max()) + 1)
    return P.Stats(n, f, len(x), scatter(x))


@pytest.fixture(scope="module")
def voices():
    """Train and test sets (disjoint speakers), 32 dims: speaker variability in 8 dims, strong anisotropic noise."""
    rng = np.random.default_rng(0)
    dim = 32
    between = random_spd(rng, dim, [4.0] * 8 + [0.05] * 24)
    within = random_spd(rng, dim, np.geomspace(6.0, 0.1, dim))
    mean = 3.0 * rng.standard_normal(dim)
    train = gaussian_speakers(rng, 50, 10, between, within, mean)
    test = gaussian_speakers(rng, 40, 6, between, within, mean)
    return train, test


def eer_of(scorer, test):
    x, labels = test
    i, j, same = all_pairs(labels)
    return compute_eer(scorer(x[i], x[j]), same)[0]


def cosine(a, b):
    return np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_lists_and_builds_with_checked_options():
    assert {"center", "whiten", "lengthnorm", "lda", "plda"} <= set(list_backends())
    assert build_backend("lda", dim=5).dim == 5
    with pytest.raises(ConfigError, match="unknown back-end 'pdla'"):
        build_backend("pdla")
    with pytest.raises(ConfigError, match="unknown option\\(s\\) dims; known: dim, length_norm, solver"):
        build_backend("lda", dims=5)
    with pytest.raises(ValueError, match="lda: dim must be a positive integer"):
        build_backend("lda", dim=0)
    with pytest.raises(ValueError, match="plda: iterations"):
        build_backend("plda", iterations=-1)


# --- pre-processing -----------------------------------------------------------------------------------------


def test_whitening_is_zca_and_whitens_the_training_set():
    rng = np.random.default_rng(1)
    x = rng.multivariate_normal([1.0, -2.0, 0.5, 3.0], random_spd(rng, 4, [9.0, 1.0, 0.3, 0.01]), 2000)
    cov = np.cov(x, rowvar=False, bias=True)
    w = whitening_matrix(cov)
    np.testing.assert_allclose(w, w.T, atol=1e-12)  # ZCA: symmetric
    np.testing.assert_allclose(w @ cov @ w, np.eye(4), atol=1e-9)
    stage = build_backend("whiten").fit(x, np.zeros(len(x)))
    out = stage.transform(x)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(out, rowvar=False, bias=True), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(out, whiten(x, x.mean(axis=0), w), atol=1e-9)


def test_center_and_length_normalise_by_their_formulas():
    x = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, -2.0]])
    np.testing.assert_allclose(center(x, np.array([1.0, 2.0])), [[2.0, 2.0], [0.0, -1.0], [-1.0, -4.0]])
    np.testing.assert_allclose(length_normalise(x), [[0.6, 0.8], [2**-0.5, 2**-0.5], [0.0, -1.0]])
    stage = build_backend("center").fit(x, [0, 0, 1])
    np.testing.assert_allclose(stage.transform(x), x - x.mean(axis=0))


# --- LDA ----------------------------------------------------------------------------------------------------


def test_lda_matches_sklearn_and_defaults_its_dimension(voices):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    (x, labels), (x_test, _) = voices
    lda = build_backend("lda", dim=8).fit(x, labels)
    direct = LinearDiscriminantAnalysis(n_components=8).fit(x, labels).transform(x_test)
    np.testing.assert_allclose(lda.transform(x_test), direct / np.linalg.norm(direct, axis=1, keepdims=True),
                               atol=1e-9)
    assert build_backend("lda").fit(x, labels).output_dim == 32  # min(200, d = 32, speakers - 1 = 49)
    assert build_backend("lda").fit(x[:40], labels[:40]).output_dim == 3  # 4 speakers


def test_lda_improves_on_raw_cosine_with_anisotropic_noise(voices):
    train, test = voices
    raw = eer_of(cosine, test)
    lda = eer_of(build_backend("lda", dim=8).fit(*train).score_pairs, test)
    assert raw > 0.2 and lda < 0.25 * raw, (raw, lda)  # 0.218, 0.044


# --- statistics -----------------------------------------------------------------------------------------------


def test_statistics_match_direct_sums_across_chunks(monkeypatch):
    from sslspeaker.backends import stats
    from sslspeaker.backends.base import cosine_scores

    monkeypatch.setattr(stats, "CHUNK_ROWS", 4)  # 11 rows: three chunks, the last one short
    rng = np.random.default_rng(10)
    x = rng.standard_normal((11, 3)).astype(np.float32)
    index = np.array([0, 1, 1, 2, 0, 2, 2, 1, 0, 0, 2])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.scatter(x), sum(np.outer(r, r) for r in x64), rtol=1e-12)
    mean, cov = stats.mean_covariance(x)
    np.testing.assert_allclose(cov, np.cov(x64, rowvar=False, bias=True), atol=1e-12)
    n, f = stats.speaker_sums(x, index, 3)
    np.testing.assert_array_equal(n, [4, 3, 4])
    np.testing.assert_allclose(f, [x64[index == s].sum(axis=0) for s in range(3)], rtol=1e-12)
    a, b = x64[:3], x64[3:6]
    direct = [np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(a, b)]
    np.testing.assert_allclose(cosine_scores(a, b), direct, rtol=1e-12)


def test_initial_parameters_are_the_sample_moments():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 3))
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3])
    mean, between, within = P.initial_parameters(stats_of(x, labels))
    speaker_means = np.array([x[labels == s].mean(axis=0) for s in range(4)])
    np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(between, np.cov(speaker_means, rowvar=False, bias=True), atol=1e-12)
    residual = x - speaker_means[labels]
    np.testing.assert_allclose(within, residual.T @ residual / len(x), atol=1e-12)


# --- PLDA equations against direct computations -------------------------------------------------------------


def test_diagonalise_makes_both_covariances_diagonal():
    mean, between, within = small_model(np.random.default_rng(2), dim=4)
    basis = P.diagonalise(between, within)
    np.testing.assert_allclose(basis.T @ within @ basis.T.T, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(basis.T @ between @ basis.T.T, np.diag(basis.psi), atol=1e-10)
    np.testing.assert_allclose(basis.T_inv @ basis.T, np.eye(4), atol=1e-10)


def test_e_step_is_the_gaussian_posterior():
    rng = np.random.default_rng(3)
    mean, between, within = small_model(rng)
    x = rng.standard_normal((9, 3)) * 2
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3])
    stats = stats_of(x, labels)
    basis = P.diagonalise(between, within)
    post = P.e_step(stats, mean, basis)
    B, W = np.linalg.inv(between), np.linalg.inv(within)
    for s in range(4):
        rows = x[labels == s]
        precision = B + len(rows) * W
        np.testing.assert_allclose(post.means[s] - mean, np.linalg.solve(precision, W @ (rows - mean).sum(axis=0)),
                                   atol=1e-10)
        one_hot = np.eye(4)[s]
        np.testing.assert_allclose(P.posterior_covariance_sum(one_hot, post, basis), np.linalg.inv(precision),
                                   atol=1e-10)


def test_m_step_updates_match_direct_sums():
    rng = np.random.default_rng(4)
    mean, between, within = small_model(rng)
    x = rng.standard_normal((9, 3)) * 2 + 1
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3])
    stats = stats_of(x, labels)
    basis = P.diagonalise(between, within)
    post = P.e_step(stats, mean, basis)
    B, W = np.linalg.inv(between), np.linalg.inv(within)
    covs = [np.linalg.inv(B + np.sum(labels == s) * W) for s in range(4)]
    speaker_means = [post.means[s] for s in range(4)]
    mu = np.mean(speaker_means, axis=0)
    direct_b = np.mean([np.outer(m, m) + c for m, c in zip(speaker_means, covs)], axis=0) - np.outer(mu, mu)
    direct_w = sum(np.outer(xi - speaker_means[s], xi - speaker_means[s]) + covs[s] for xi, s in zip(x, labels))
    np.testing.assert_allclose(P.update_mean(post), mu, atol=1e-12)
    np.testing.assert_allclose(P.update_between(post, basis, mu), direct_b, atol=1e-10)
    np.testing.assert_allclose(P.update_within(stats, post, basis), direct_w / len(x), atol=1e-10)


def test_log_likelihood_is_the_stacked_gaussian_density():
    rng = np.random.default_rng(5)
    mean, between, within = small_model(rng)
    x = rng.standard_normal((9, 3)) * 2
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3])
    direct = 0.0
    for s in range(4):
        rows = x[labels == s]
        n = len(rows)
        cov = np.kron(np.eye(n), within) + np.kron(np.ones((n, n)), between)
        direct += multivariate_normal(np.tile(mean, n), cov).logpdf(rows.ravel())
    got = P.log_likelihood(stats_of(x, labels), mean, P.diagonalise(between, within))
    assert got == pytest.approx(direct, rel=1e-10)


@pytest.mark.parametrize("n_enroll", [1, 3])
def test_verification_llr_is_the_ratio_of_stacked_gaussians(n_enroll):
    rng = np.random.default_rng(6 + n_enroll)
    mean, between, within = small_model(rng)
    basis = P.diagonalise(between, within)
    total = between + within

    def same(n):  # n utterances of one speaker, stacked
        return multivariate_normal(np.tile(mean, n), np.kron(np.eye(n), within) + np.kron(np.ones((n, n)), between))

    enroll, tests = rng.standard_normal((5, n_enroll, 3)) * 2, rng.standard_normal((5, 3)) * 2
    direct = [same(n_enroll + 1).logpdf(np.concatenate([e.ravel(), t])) - same(n_enroll).logpdf(e.ravel())
              - multivariate_normal(mean, total).logpdf(t) for e, t in zip(enroll, tests)]
    got = P.verification_llr(enroll.mean(axis=1), n_enroll, tests, mean, basis)
    np.testing.assert_allclose(got, direct, rtol=1e-9, atol=1e-9)


def test_verification_llr_with_mixed_enrolment_counts_matches_one_count_at_a_time():
    rng = np.random.default_rng(9)
    mean, between, within = small_model(rng)
    basis = P.diagonalise(between, within)
    enroll, tests, counts = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), np.array([1, 3, 2, 3, 1, 5])
    one_by_one = [P.verification_llr(e[None], n, t[None], mean, basis)[0] for e, t, n in zip(enroll, tests, counts)]
    np.testing.assert_allclose(P.verification_llr(enroll, counts, tests, mean, basis), one_by_one, rtol=1e-12)


def test_plda_scores_in_chunks_as_in_one_piece(monkeypatch, voices):
    (x, labels), (x_test, _) = voices
    plda = build_backend("plda").fit(x, labels)
    whole = P.verification_llr(x_test[:50], 1, x_test[50:100], plda.mean, plda.basis)
    monkeypatch.setattr(P, "CHUNK_ROWS", 16)  # 50 rows: chunks of 16, 16, 16, 2
    np.testing.assert_allclose(plda.score_pairs(x_test[:50], x_test[50:100]), whole, rtol=1e-12)
    counts = np.arange(50) % 4 + 1
    np.testing.assert_allclose(plda.score_enrolled(x_test[:50], counts, x_test[50:100]),
                               P.verification_llr(x_test[:50], counts, x_test[50:100], plda.mean, plda.basis),
                               rtol=1e-12)


def test_em_never_decreases_the_likelihood_and_recovers_the_covariances():
    rng = np.random.default_rng(7)
    between = random_spd(rng, 4, [3.0, 1.5, 0.6, 0.2])
    within = random_spd(rng, 4, [1.0, 0.5, 0.3, 0.1])
    mean = np.array([1.0, -1.0, 2.0, 0.0])
    x, labels = gaussian_speakers(rng, 3000, rng.integers(1, 6, 3000), between, within, mean)
    stats = stats_of(x, labels)
    mu, b, w, history = P.fit_em(stats, iterations=30)
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * abs(history[0])), steps
    assert history[-1] > history[0] + 1.0  # the initialisation is not the maximum with uneven counts
    rel = lambda a, ref: np.linalg.norm(a - ref) / np.linalg.norm(ref)  # noqa: E731
    assert rel(b, between) < 0.08 and rel(w, within) < 0.05 and np.abs(mu - mean).max() < 0.1, (
        rel(b, between), rel(w, within))


def test_plda_beats_cosine_and_lda(voices):
    train, test = voices
    raw = eer_of(cosine, test)
    lda = eer_of(build_backend("lda", dim=8).fit(*train).score_pairs, test)
    plda = eer_of(BackendChain.build("plda").fit(*train).score_pairs, test)
    assert plda < 0.2 * raw and plda < lda and plda < 0.05, (raw, lda, plda)  # 0.218, 0.044, 0.035


# --- calibration ----------------------------------------------------------------------------------------------


def test_weighted_cross_entropy_formula_and_gradient():
    target, nontarget = np.array([1.0, 2.0, -0.5]), np.array([-1.0, 0.3])
    a, c, prior = 0.7, 0.2, 0.3
    direct = (prior / 3 * sum(np.log1p(np.exp(-(a * s + c))) for s in target)
              + (1 - prior) / 2 * sum(np.log1p(np.exp(a * s + c)) for s in nontarget)) / np.log(2)
    value, grad = weighted_cross_entropy(np.array([a, c]), target, nontarget, prior)
    assert value == pytest.approx(direct, rel=1e-12)
    h = 1e-6
    numeric = [(weighted_cross_entropy(np.array(p1), target, nontarget, prior)[0]
                - weighted_cross_entropy(np.array(p0), target, nontarget, prior)[0]) / (2 * h)
               for p1, p0 in (([a + h, c], [a - h, c]), ([a, c + h], [a, c - h]))]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6)


@pytest.mark.parametrize("prior", [0.5, 0.1])
def test_calibration_recovers_the_true_llr_map(prior):
    # targets s ~ N(1, 1), non-targets s ~ N(-1, 1): the true llr is 2 s; scores given as 3 s + 5
    rng = np.random.default_rng(8)
    s = np.concatenate([rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000)])
    labels = np.r_[np.ones(20000), np.zeros(20000)]
    cal = LogisticCalibration().fit(3 * s + 5, labels, prior=prior)
    assert cal.slope == pytest.approx(2 / 3, rel=0.05) and cal.offset == pytest.approx(-10 / 3, abs=0.1)
    np.testing.assert_allclose(cal.apply(3 * s[:5] + 5), cal.slope * (3 * s[:5] + 5) + cal.offset)


def test_calibration_rejects_bad_trials():
    with pytest.raises(ValueError, match="one 0/1 label per score; got 2 labels for 3 scores"):
        LogisticCalibration().fit([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="got 0 targets of 2 trials"):
        LogisticCalibration().fit([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="prior must be in \\(0, 1\\), got 1.0"):
        LogisticCalibration().fit([0.1, 0.2], [0, 1], prior=1.0)


def test_calibrated_plda_cllr_is_below_one_and_near_min_cllr(voices):
    train, test = voices
    chain = BackendChain.build("plda").fit(*train)
    x, labels = test
    i, j, same = all_pairs(labels)
    half = np.arange(len(i)) % 2 == 0  # calibrate on half the trials, measure on the other half
    chain.calibrate(x[i[half]], x[j[half]], same[half])
    llr = chain.score_pairs(x[i[~half]], x[j[~half]])
    c, m = cllr(llr, same[~half]), min_cllr(llr, same[~half])
    assert c < 0.2 and m <= c < m + 0.02, (c, m)  # 0.115, 0.105


# --- chain state -----------------------------------------------------------------------------------------------


def fitted_chain(voices, spec=("whiten", {"name": "lda", "options": {"dim": 8}}, "lengthnorm", "plda")):
    train, test = voices
    chain = BackendChain.build(list(spec)).fit(*train)
    x, labels = test
    i, j, same = all_pairs(labels)
    return chain.calibrate(x[i[::7]], x[j[::7]], same[::7]), test


def test_chain_round_trip_gives_the_same_scores(voices):
    chain, (x, labels) = fitted_chain(voices)
    config, arrays = chain.to_state()
    assert chain.name == "whiten+lda+lengthnorm+plda"
    assert sorted(arrays) == ["0.whiten.matrix", "0.whiten.mean", "1.lda.mean", "1.lda.projection",
                              "3.plda.between_cov", "3.plda.mean", "3.plda.within_cov"]
    loaded = BackendChain.from_state(json.loads(json.dumps(config)), {k: v.copy() for k, v in arrays.items()})
    i, j, _ = all_pairs(labels)
    np.testing.assert_array_equal(loaded.score_pairs(x[i], x[j]), chain.score_pairs(x[i], x[j]))
    assert loaded.calibration.to_config() == chain.calibration.to_config()
    assert not np.array_equal(chain.score_pairs(x[:5], x[5:10], calibrated=False), chain.score_pairs(x[:5], x[5:10]))


def test_score_sets_uses_the_enrolment_mean_in_plda_space(voices):
    chain, (x, _) = fitted_chain(voices)
    single = chain.score_sets([x[k:k + 1] for k in range(5)], x[5:10], calibrated=False)
    np.testing.assert_allclose(single, chain.score_pairs(x[:5], x[5:10], calibrated=False), rtol=1e-12)
    groups = [x[3 * k:3 * k + 3] for k in range(4)]
    front = [chain._front(g).mean(axis=0) for g in groups]
    plda = chain.stages[-1]
    direct = P.verification_llr(np.array(front), 3, chain._front(x[20:24]), plda.mean, plda.basis)
    np.testing.assert_allclose(chain.score_sets(groups, x[20:24], calibrated=False), direct, rtol=1e-10)


@pytest.fixture(scope="module")
def small_state(voices):
    return fitted_chain(voices, spec=("whiten", "plda"))[0].to_state()


def _broken(state, edit):
    config, arrays = json.loads(json.dumps(state[0])), dict(state[1])
    edit(config, arrays)
    return lambda: BackendChain.from_state(config, arrays)


@pytest.mark.parametrize("edit, message", [
    (lambda c, a: c["stages"][0].update(name="whitening"), "stages\\[0\\].*unknown back-end 'whitening'"),
    (lambda c, a: c["stages"][1]["options"].update(iters=3), "stages\\[1\\].*unknown option\\(s\\) iters"),
    (lambda c, a: c.update(extra=1), "keys calibration, input_dim, stages, version"),
    (lambda c, a: c.update(input_dim=31), "stages\\[0\\] 'whiten'.*'mean' has shape \\(32,\\), expected 31"),
    (lambda c, a: a.pop("1.plda.within_cov"), "stages\\[1\\] 'plda'.*'within_cov' is missing"),
    (lambda c, a: a.update({"1.plda.mean": np.full(32, np.nan)}), "'mean' holds NaN"),
    (lambda c, a: a.update({"2.lda.mean": np.zeros(32)}), "not used by any stage: 2.lda.mean"),
    (lambda c, a: a.update({"1.plda.within_cov": -np.eye(32)}), "'within_cov'.*not positive definite"),
    (lambda c, a: c["calibration"].update(slope=float("nan")), "calibration 'slope' must be a finite number"),
])
def test_from_state_rejects_bad_state_naming_the_field(small_state, edit, message):
    with pytest.raises(BackendStateError, match=message):
        _broken(small_state, edit)()
    assert _broken(small_state, lambda c, a: None)().name == "whiten+plda"  # the unedited state loads
