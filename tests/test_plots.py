"""Result figures: system names in titles and legends, DET overlays of several results files,
uncrowded ticks, PNG/PDF/SVG, the score density bounded at cosine 1; the numbers behind them
(probit, reflected density, thinned DET) against direct computations; the numpy PAV and PLDA basis."""

import json
import math
import statistics

import numpy as np
import pytest

from sslspeaker.cli import main
from sslspeaker.evaluation import plots
from sslspeaker.evaluation.metrics import compute_eer, det_curve

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plots draw, kept open for inspection (and still written)."""
    kept = []
    save = plots._save

    def keep(plt, fig, path):
        kept.append({"title": fig.axes[0].get_title(), "legend": [t.get_text() for t in fig.axes[0].get_legend().get_texts()],
                     "xlim": fig.axes[0].get_xlim(), "lines": [l.get_xydata() for l in fig.axes[0].get_lines()]})
        return save(plt, fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _scores(n=400, seed=0, shift=1.5):
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], n // 2)
    s = np.tanh(0.4 * (rng.standard_normal(n) + shift * labels))  # cosine-like, some near 1
    return s, labels


def test_probit_is_the_normal_quantile():
    p = [0.001, 0.02, 0.3, 0.5, 0.9, 0.999]
    np.testing.assert_allclose(plots.probit(p), [statistics.NormalDist().inv_cdf(v) for v in p], rtol=1e-12)


def test_density_matches_a_direct_sum_and_the_reflected_one_stays_inside_its_bounds():
    x = np.array([0.2, 0.5, 0.55, 0.9, 0.97])
    grid = np.linspace(-1.5, 1.5, 301)
    h = x.std(ddof=1) * x.size ** -0.2
    direct = [sum(math.exp(-0.5 * ((g - xi) / h) ** 2) for xi in x) / (x.size * h * math.sqrt(2 * math.pi))
              for g in grid]
    np.testing.assert_allclose(plots.density(x, grid), direct, rtol=1e-10)
    bounded = plots.density(x, grid, (-1.0, 1.0))
    assert np.all(bounded[grid > 1.0] == 0) and np.all(bounded[grid < -1.0] == 0)
    step = grid[1] - grid[0]
    assert bounded.sum() * step == pytest.approx(1.0, abs=0.02)  # reflected mass kept inside [-1, 1]
    assert np.trapezoid(plots.density(x, grid)[grid > 1.0], dx=step) > 0.05  # unbounded: spills past 1


def test_det_points_thin_the_curve_keeping_its_ends_and_its_eer():
    s, labels = _scores(20000)
    fa, miss, _ = det_curve(s, labels)
    pts = plots.det_points(s, labels, max_points=300)
    assert len(pts["p_fa"]) <= 302 and len(fa) > 10000
    assert (pts["p_fa"][0], pts["p_miss"][0]) == (fa[0], miss[0]) and (pts["p_fa"][-1], pts["p_miss"][-1]) == (fa[-1], miss[-1])
    on_curve = set(zip(fa.tolist(), miss.tolist()))
    assert all(p in on_curve for p in zip(pts["p_fa"], pts["p_miss"]))
    eer, _ = compute_eer(s, labels)
    near = min(max(a, b) for a, b in zip(pts["p_fa"], pts["p_miss"]))
    assert near == pytest.approx(eer, abs=0.01)


def test_det_ticks_do_not_crowd():
    for lim in ((0.0001, 0.999), (0.001, 0.5), (0.01, 0.7)):
        ticks = plots.det_ticks(lim)
        gaps = np.diff(plots.probit(ticks))
        span = plots.probit(lim[1]) - plots.probit(lim[0])
        assert len(ticks) >= 4 and gaps.min() >= span / 8 - 1e-12, (lim, ticks)
        assert all(lim[0] <= t <= lim[1] for t in ticks)
    assert plots.det_ticks((0.001, 0.5)) == [0.001, 0.01, 0.1, 0.2, 0.5]  # round ones first


def test_det_limits_follow_the_curves():
    s, labels = _scores(2000)
    fa, miss, _ = det_curve(s, labels)
    lo, hi = plots.det_limits([(fa, miss)])
    assert hi == 0.5 and lo <= min(fa[(fa > 0) & (miss < 0.5)].min(), miss[(miss > 0) & (fa < 0.5)].min())
    tiny = (np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0]))  # 2 + 2 trials: rates 0, 1/2, 1 only
    assert plots.det_limits([tiny]) == (0.01, 0.8)  # EER 50 %: the axes reach past it
    bad = det_curve(*_scores(2000, shift=0.0))[:2]  # chance-level: the EER region is near 50 %
    assert plots.det_limits([bad])[1] >= 0.7


def test_score_plot_is_bounded_at_cosine_one_and_names_system_and_curves(tmp_path, figures):
    s, labels = _scores()
    s[0] = 0.999
    plots.plot_score_distributions(s, labels, 0.3, tmp_path / "s.png", title="Scores: sysA · trials.txt · full")
    fig = figures[-1]
    assert fig["title"] == "Scores: sysA · trials.txt · full" and fig["xlim"][1] <= 1.0
    assert sorted(fig["legend"]) == ["EER threshold 0.300", "different speakers (200 trials)",
                                     "different speakers: density", "same speaker (200 trials)", "same speaker: density"]
    density_lines = [xy for xy in fig["lines"] if len(xy) == 400]
    assert len(density_lines) == 2 and all(xy[:, 0].max() <= 1.0 for xy in density_lines)
    plots.plot_score_distributions(3 * s, labels, None, tmp_path / "llr.png", score_range=None, xlabel="llr")
    assert figures[-1]["xlim"][1] > 2.5  # log-likelihood ratios are not bounded


def test_figures_are_written_as_png_pdf_or_svg(tmp_path):
    s, labels = _scores()
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}
    for suffix, head in magic.items():
        out = plots.plot_det(s, labels, tmp_path / f"det{suffix}", eer=0.2, system="sysA")
        assert out.read_bytes()[:len(head)] == head
    assert b"<svg" in (tmp_path / "det.svg").read_bytes()
    with pytest.raises(ValueError, match=r"det\.jpg: a figure is written as \.png, \.pdf, \.svg"):
        plots.plot_det(s, labels, tmp_path / "det.jpg")


def test_det_of_one_system_and_the_overlay_name_their_curves(tmp_path, figures):
    s, labels = _scores()
    plots.plot_det(s, labels, tmp_path / "one.png", eer=0.2, dcf_points=[(0.01, 0.5, 0.4)], title="DET: sysA",
                   system="sysA")
    assert figures[-1]["title"] == "DET: sysA" and figures[-1]["legend"] == ["sysA", "EER 20.00%",
                                                                            "minDCF(p=0.01) 0.500"]
    a = {"name": "trained", "eer": 0.1, **plots.det_points(s, labels)}
    b = {"name": "untrained", "eer": 0.3, **plots.det_points(*_scores(shift=0.3))}
    plots.plot_det_overlay([a, b], tmp_path / "both.pdf", title="two systems")
    assert figures[-1]["title"] == "two systems"
    assert figures[-1]["legend"] == ["trained (EER 10.00%)", "untrained (EER 30.00%)"]


def _results(tmp_path, name, system, shift):
    s, labels = _scores(shift=shift)
    eer, _ = compute_eer(s, labels)
    path = tmp_path / name
    path.write_text(json.dumps({"system": system, "eer": 100 * eer, "det": plots.det_points(s, labels)}))
    return path


def test_plot_command_overlays_results_files(tmp_path, figures, capsys):
    a, b = _results(tmp_path, "a.json", "moco", 1.5), _results(tmp_path, "b.json", "simclr", 0.8)
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "det.svg")]) == 0
    assert capsys.readouterr().out.strip() == f"DET curves of 2 systems -> {tmp_path / 'det.svg'}"
    legend = figures[-1]["legend"]
    assert [t.split(" (EER")[0] for t in legend] == ["moco", "simclr"] and figures[-1]["title"] == "DET curves"
    assert main(["plot", str(a), str(b), "--label", "A", "--label", "B", "--out", str(tmp_path / "d.png"),
                 "--title", "T"]) == 0
    assert [t.split(" (EER")[0] for t in figures[-1]["legend"]] == ["A", "B"] and figures[-1]["title"] == "T"


@pytest.mark.parametrize("args, message", [
    (["old.json", "--out", "d.png"], "old.json: holds no DET curve"),
    (["a.json", "--out", "d.jpg"], "d.jpg: a figure is written as .png, .pdf, .svg"),
    (["a.json", "--label", "x", "--label", "y", "--out", "d.png"], "--label: give one per results file (1), got 2"),
    (["missing.json", "--out", "d.png"], "missing.json: No such file or directory"),
])
def test_plot_command_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    _results(tmp_path, "a.json", "moco", 1.5)
    (tmp_path / "old.json").write_text(json.dumps({"eer": 5.0}))
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_evaluate_plots_are_titled_by_the_system_in_each_format(tmp_path, figures):
    from sslspeaker.evaluation.evaluate import write_plots

    s, labels = _scores()
    results = {"system": "untrained fast_resnet34", "protocol": {"name": "full"}, "trials": {"path": "/x/trials.txt"},
               "eer": 20.0, "eer_threshold": 0.3, "backend": "cosine", "backend_info": {"calibrated": False},
               "score_norm": None, "embedding_norm": None,
               **{f"min_dcf_{p}": 0.5 for p in ("0.01", "0.05")}, **{f"min_dcf_{p}_threshold": 0.4 for p in ("0.01", "0.05")}}
    write_plots(results, tmp_path / "r.json", s, labels, formats=("png", "pdf"))
    titles = [f["title"] for f in figures]
    assert titles == ["Scores: untrained fast_resnet34 · trials.txt · full", "DET: untrained fast_resnet34 · trials.txt · full"] * 2
    assert results["plots"] == {"scores": str(tmp_path / "r_scores.png"), "det": str(tmp_path / "r_det.png")}
    assert results["plot_files"][2:] == [str(tmp_path / "r_scores.pdf"), str(tmp_path / "r_det.pdf")]
    assert all((tmp_path / f).is_file() for f in ("r_scores.pdf", "r_det.pdf"))
    assert figures[0]["xlim"][1] <= 1.0 and figures[1]["legend"][0] == "untrained fast_resnet34"


def test_system_name_defaults_to_the_model_file_or_run():
    from types import SimpleNamespace

    from sslspeaker.evaluation.evaluate import system_name

    assert system_name(SimpleNamespace(source="/m/moco.safetensors")) == "moco"
    assert system_name(SimpleNamespace(source="/runs/simclr/checkpoints/last.pt")) == "simclr"
    assert system_name(SimpleNamespace(source="/runs/dino")) == "dino"
    assert system_name(SimpleNamespace(source=None)) == "model"
    assert system_name(SimpleNamespace(source="/m/x.safetensors"), "given") == "given"


def test_numpy_pav_matches_isotonic_regression_with_ties():
    sklearn_isotonic = pytest.importorskip("sklearn.isotonic")
    from sslspeaker.evaluation.llr_metrics import pav

    rng = np.random.default_rng(1)
    scores = np.round(rng.standard_normal(3000), 1)  # many ties
    target = rng.random(3000) < 1 / (1 + np.exp(-2 * scores))
    expected = sklearn_isotonic.IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(scores, target.astype(float))
    np.testing.assert_allclose(pav(scores, target), expected, atol=1e-12)


def test_plda_basis_matches_the_generalised_eigenproblem():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    from sslspeaker.backends.plda import diagonalise

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    between, within = a @ a.T, b @ b.T + 6 * np.eye(6)
    basis = diagonalise(between, within)
    psi, vectors = scipy_linalg.eigh(between, within)
    np.testing.assert_allclose(basis.psi, psi, rtol=1e-9)
    np.testing.assert_allclose(np.abs(basis.T), np.abs(vectors.T), rtol=1e-7, atol=1e-9)  # rows up to sign
    np.testing.assert_allclose(basis.T @ within @ basis.T.T, np.eye(6), atol=1e-9)
    with pytest.raises(ValueError, match="not positive definite"):
        diagonalise(between, -within)
