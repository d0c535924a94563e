"""Pseudo-labels: clustering, the cluster-count estimate, the member filter, the diagnostics, and the
``sslspeaker pseudolabel`` command end to end on a small synthetic corpus."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from sslspeaker.cli import main
from sslspeaker.data.audio import read_audio
from sslspeaker.data.manifest import Entry, read_manifest, write_manifest
from sslspeaker.data.synth import generate_corpus
from sslspeaker.features.mel import LogMel
from sslspeaker.inference import SpeakerEncoder
import sslspeaker.pseudolabel.cluster as cl
from sslspeaker.pseudolabel import PseudoLabelError, PseudoLabelOptions
from sslspeaker.pseudolabel.diagnostics import ari, cluster_agreement, nmi, purity
from sslspeaker.pseudolabel.estimate import (eigengaps, estimate_clusters, knn_affinity, neighbour_grid,
                                             normalized_laplacian, normalized_max_eigengap)
from sslspeaker.pseudolabel.filter import FilterRule, centroid_cosines, filter_members, robust_floor
from sslspeaker.pseudolabel.run import embedding_spread, pseudo_speakers


def speakers_on_sphere(n_speakers: int, per: tuple[int, int], dim: int = 64, noise: float = 0.8, seed: int = 0):
    """Unit embeddings of Gaussian speakers: normalise(centre + noise · g / √dim); sizes uniform in ``per``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_speakers), rng.integers(per[0], per[1] + 1, n_speakers))
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim)) / math.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels, centres


@pytest.fixture(scope="module")
def forty():
    return speakers_on_sphere(40, (15, 35), seed=1)


# ---- clustering -----------------------------------------------------------------------------
def test_kmeans_recovers_gaussian_speakers(forty):
    x, truth, _ = forty
    labels, backend = cl.kmeans_labels(x, 40, seed=0, backend="torch")
    assert backend == "torch"
    assert labels.min() == 0 and len(np.unique(labels)) == labels.max() + 1
    assert nmi(truth, labels) > 0.95


def test_kmeans_large_k_starts_from_a_subsample(monkeypatch):
    calls = []
    real = cl.kmeans

    def spy(x, k, **kw):
        calls.append((k, kw["init"]))
        return real(x, k, **kw)

    monkeypatch.setattr(cl, "kmeans", spy)
    x, _, _ = speakers_on_sphere(8, (5, 5), dim=16)
    cl.kmeans_labels(x, 4, backend="torch")
    monkeypatch.setattr(cl, "LARGE_K", 3)
    cl.kmeans_labels(x, 4, backend="torch")
    assert calls == [(4, "kmeans++"), (4, "random")]  # above LARGE_K: k random points, no O(k²) k-means++


def test_random_start_is_k_distinct_training_points_and_converges():
    from sslspeaker.methods.clustering import _initial_centroids, kmeans

    x = torch.randn(500, 8)
    start = _initial_centroids(x, 20, torch.Generator().manual_seed(0), "random", 8)
    rows = {tuple(r.tolist()) for r in x}
    assert start.shape == (20, 8) and len({tuple(r.tolist()) for r in start}) == 20
    assert all(tuple(r.tolist()) in rows for r in start)
    xs, truth, _ = speakers_on_sphere(6, (10, 10), dim=16)
    _, got = kmeans(torch.from_numpy(xs), 6, init="random", n_iter=50)
    assert nmi(truth, got.numpy()) > 0.9
    with pytest.raises(ValueError, match="init must be"):
        kmeans(x, 3, init="kmeans||")  # not one of auto, kmeans++, random


def test_faiss_kmeans_when_installed(forty):
    pytest.importorskip("faiss")
    x, truth, _ = forty
    labels, backend = cl.kmeans_labels(x, 40, backend="faiss")
    assert backend == "faiss" and nmi(truth, labels) > 0.95


def test_faiss_asked_for_but_missing_is_named():
    if cl.faiss_available():
        pytest.skip("faiss is installed")
    assert cl.kmeans_labels(np.eye(4, dtype=np.float32), 2, backend="auto")[1] == "torch"
    with pytest.raises(PseudoLabelError, match="faiss is not installed"):
        cl.kmeans_labels(np.eye(4, dtype=np.float32), 2, backend="faiss")


@pytest.mark.parametrize("linkage", ["average", "ward"])
def test_ahc_recovers_gaussian_speakers(forty, linkage):
    x, truth, _ = forty
    c = cl.cluster(x, 40, algorithm="ahc", linkage=linkage)
    assert c.algorithm == "ahc" and c.backend == f"scipy-{linkage}" and c.n_clusters == 40
    assert nmi(truth, c.labels) > 0.97


def test_ahc_refuses_a_pool_too_large(monkeypatch):
    monkeypatch.setattr(cl, "MAX_AHC_POINTS", 10)
    with pytest.raises(PseudoLabelError, match=r"pool of 11 utterances is above the 10 AHC takes"):
        cl.ahc_labels(np.eye(11, dtype=np.float32), 2)


def test_cluster_refuses_more_clusters_than_utterances():
    with pytest.raises(PseudoLabelError, match="cannot make 6 clusters of a pool of 5"):
        cl.cluster(np.eye(5, dtype=np.float32), 6)


def test_collapse_checks():
    cl.check_collapse(np.array([30, 25, 20, 20, 5]))  # healthy: nothing raised
    with pytest.raises(PseudoLabelError, match=r"one cluster holds 90 of 100 utterances \(90 %"):
        cl.check_collapse(np.array([90, 4, 3, 3]))
    cl.check_collapse(np.array([90, 10]))  # two clusters: a large one is no collapse
    with pytest.raises(PseudoLabelError, match=r"60 of 100 utterances are alone"):
        cl.check_collapse(np.array([20, 20] + [1] * 60))


# ---- the cluster count ----------------------------------------------------------------------
def test_neighbour_grid():
    grid = neighbour_grid(1000)
    assert grid[0] == 1 and grid[-1] == 250 and len(grid) <= 20 and grid == sorted(set(grid))
    assert neighbour_grid(8) == [1, 2]


def test_knn_affinity_matches_a_direct_computation():
    rng = np.random.default_rng(4)
    sim = rng.standard_normal((7, 7))
    sim = sim + sim.T
    a = knn_affinity(sim, 2)
    b = np.zeros((7, 7))
    for i in range(7):  # B[i, j] = 1 for the 2 largest sim[i, j], j != i
        others = sorted((j for j in range(7) if j != i), key=lambda j: -sim[i, j])
        b[i, others[:2]] = 1
    assert np.array_equal(a, (b + b.T) / 2)


def test_normalized_laplacian_matches_a_direct_computation():
    a = knn_affinity(np.random.default_rng(5).standard_normal((6, 6)), 2)
    d = a.sum(axis=1)
    for i in range(6):
        for j in range(6):
            expected = (1.0 if i == j else 0.0) - a[i, j] / math.sqrt(d[i] * d[j])
            assert normalized_laplacian(a)[i, j] == pytest.approx(expected)


def test_eigengaps_and_their_normalised_maximum():
    lam = np.array([0.0, 0.01, 0.02, 0.5, 0.6, 0.9])
    assert eigengaps(lam) == pytest.approx([0.01, 0.01, 0.48, 0.1, 0.3])
    assert normalized_max_eigengap(lam, 2) == (pytest.approx(0.48 / 0.9), 3)  # e_3 = λ_4 − λ_3: 3 clusters
    assert normalized_max_eigengap(lam, 4) == (pytest.approx(0.3 / 0.9), 5)


@pytest.mark.parametrize("n_speakers,per,max_points", [(40, (15, 35), 600), (100, (8, 16), 3000)])
def test_estimate_finds_the_speaker_count(n_speakers, per, max_points):
    """Within 10 % of the true count (found exactly on these seeds); the 40-speaker pool (~1,000 points)
    is subsampled to 600."""
    x, _, _ = speakers_on_sphere(n_speakers, per, seed=n_speakers)
    est = estimate_clusters(x, max_points=max_points, seed=0)
    assert est.points == min(len(x), max_points)
    assert abs(est.k - n_speakers) <= 0.1 * n_speakers, est.tried
    assert est.tried[est.neighbours] == (est.k, min(r for _, r in est.tried.values()))
    assert est.as_dict()["k"] == est.k


def test_estimate_needs_a_few_utterances():
    with pytest.raises(PseudoLabelError, match="at least 4 utterances, got 3"):
        estimate_clusters(np.eye(3, dtype=np.float32))


# ---- the member filter ----------------------------------------------------------------------
def test_centroid_cosines_match_a_direct_computation():
    x, labels, _ = speakers_on_sphere(4, (3, 6), dim=8, noise=1.0, seed=5)
    own, margin = centroid_cosines(x, labels)
    for i in range(len(x)):
        mus = [x[labels == c].sum(axis=0) for c in range(4)]
        cos = [float(x[i] @ m / np.linalg.norm(m)) for m in mus]
        assert own[i] == pytest.approx(cos[labels[i]], abs=1e-5)
        assert margin[i] == pytest.approx(cos[labels[i]] - max(c for j, c in enumerate(cos) if j != labels[i]),
                                          abs=1e-5)


def test_robust_floor_is_median_minus_scaled_mad():
    v = np.array([0.9, 0.8, 0.85, 0.7, 0.1])
    med = 0.8
    mad = np.median(np.abs(v - med))  # |0.1, 0, 0.05, 0.1, 0.7| -> 0.1
    assert robust_floor(v, 3.0, 0.01) == pytest.approx(med - 3.0 * 1.4826 * mad)
    assert robust_floor(np.full(5, 0.5), 2.0, 0.01) == pytest.approx(0.5 - 0.02)


def test_filter_drops_exactly_the_planted_outliers():
    x, labels, centres = speakers_on_sphere(10, (20, 20), noise=0.8, seed=7)
    rng = np.random.default_rng(8)
    planted = rng.choice(len(x), 6, replace=False)
    noise = rng.standard_normal((6, x.shape[1]))
    x[planted] = noise / np.linalg.norm(noise, axis=1, keepdims=True)  # random directions, labels kept
    res = filter_members(x, labels, FilterRule(min_cluster_size=2, outlier_mads=5.0))
    assert set(np.flatnonzero(~res.keep)) == set(planted)
    assert set(res.reasons[planted]) == {"far_from_centroid"}
    assert res.counts() == {"far_from_centroid": 6, "ambiguous": 0, "small_cluster": 0}


def test_filter_margin_and_small_clusters():
    x, labels, centres = speakers_on_sphere(3, (10, 10), noise=0.5, seed=9)
    mid, lone = centres[0] + centres[1], np.random.default_rng(10).standard_normal(x.shape[1])
    x = np.vstack([x, mid / np.linalg.norm(mid), lone / np.linalg.norm(lone)]).astype(np.float32)
    labels = np.concatenate([labels, [0, 3]])  # a point between speakers 0 and 1; a cluster of one, far away
    res = filter_members(x, labels, FilterRule(min_cluster_size=2, outlier_mads=None, min_margin=0.1))
    assert res.reasons[-2] == "ambiguous" and res.reasons[-1] == "small_cluster"
    assert res.keep[:-2].all()
    res = filter_members(x, labels, FilterRule(min_cluster_size=11, outlier_mads=None))
    assert set(res.reasons[labels == 0]) == {""} and set(res.reasons[labels != 0]) == {"small_cluster"}


def test_filter_rule_names_bad_options():
    with pytest.raises(PseudoLabelError, match="--min-cluster-size"):
        FilterRule(min_cluster_size=0)
    with pytest.raises(PseudoLabelError, match="--drop-mads"):
        FilterRule(outlier_mads=-1.0)


# ---- diagnostics ----------------------------------------------------------------------------
TRUE = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
PRED = [0, 0, 1, 1, 1, 2, 2, 2, 0]


def _entropy(labels):
    p = np.array(list(Counter(labels).values())) / len(labels)
    return float(-(p * np.log(p)).sum())


def test_nmi_matches_its_formula():
    n = len(TRUE)
    joint = Counter(zip(TRUE, PRED))
    pt, pc = Counter(TRUE), Counter(PRED)
    mi = sum(c / n * math.log(c * n / (pt[t] * pc[k])) for (t, k), c in joint.items())
    assert nmi(TRUE, PRED) == pytest.approx(mi / ((_entropy(TRUE) + _entropy(PRED)) / 2))
    assert nmi(TRUE, [5, 5, 5, 7, 7, 9, 9, 9, 9]) == pytest.approx(1.0)


def test_ari_matches_its_formula():
    def pairs(m):
        return m * (m - 1) / 2

    n = len(TRUE)
    index = sum(pairs(c) for c in Counter(zip(TRUE, PRED)).values())
    a = sum(pairs(c) for c in Counter(TRUE).values())
    b = sum(pairs(c) for c in Counter(PRED).values())
    expected = a * b / pairs(n)
    assert ari(TRUE, PRED) == pytest.approx((index - expected) / ((a + b) / 2 - expected))


def test_purity_matches_its_formula():
    # clusters: 0 = {a, a, c} -> 2, 1 = {a, b, b} -> 2, 2 = {c, c, c} -> 3; (2 + 2 + 3) / 9
    assert purity(TRUE, PRED) == pytest.approx(7 / 9)
    assert purity(TRUE, list(range(9))) == pytest.approx(1.0)
    d = cluster_agreement(TRUE, PRED)
    assert (d["utterances"], d["speakers"], d["clusters"]) == (9, 3, 3) and d["purity"] == pytest.approx(7 / 9)


# ---- stage helpers --------------------------------------------------------------------------
def test_embedding_spread_is_the_mean_pairwise_cosine():
    x, _, _ = speakers_on_sphere(3, (4, 4), dim=8, seed=2)
    cos = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    assert embedding_spread(x)["mean_cosine"] == pytest.approx((cos.sum() - np.trace(cos)) / (n * (n - 1)))
    assert embedding_spread(np.tile(x[:1], (5, 1)))["mean_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_pseudo_speakers_number_kept_clusters_by_size():
    labels = np.array([2, 2, 2, 0, 1, 1, 0, 0, 0])
    keep = np.array([True, True, True, False, True, True, True, True, True])
    ids = pseudo_speakers(labels, keep)
    # kept sizes: cluster 0 -> 3, cluster 1 -> 2, cluster 2 -> 3; ties keep the cluster order
    assert list(ids) == ["c00001", "c00001", "c00001", "", "c00002", "c00002", "c00000", "c00000", "c00000"]


def test_options_are_strict():
    assert PseudoLabelOptions(clusters="12").clusters == 12
    assert PseudoLabelOptions(clusters="AUTO").clusters == "auto"
    for bad in ("x", 1, "2.5"):
        with pytest.raises(PseudoLabelError, match="--clusters: expected an integer >= 2 or 'auto'"):
            PseudoLabelOptions(clusters=bad)
    with pytest.raises(PseudoLabelError, match="--algorithm: expected one of kmeans, ahc, got 'dbscan'"):
        PseudoLabelOptions(algorithm="dbscan")
    with pytest.raises(PseudoLabelError, match="--max-cluster-share"):
        PseudoLabelOptions(max_cluster_share=1.5)
    with pytest.raises(PseudoLabelError, match="--encoder: expected one of inference, online, momentum, auto"):
        PseudoLabelOptions(encoder="teacher")


# ---- the command end to end -----------------------------------------------------------------
N_MELS, OFFSET = 24, 10.0
SPEAKERS, UTTERANCES = 8, 6
FEATURES = {"type": "logmel", "sample_rate": 16000, "n_mels": N_MELS, "norm": "global", "preemphasis": 0.97,
            "n_fft": 512, "win_length": 400, "hop_length": 160, "f_min": 20.0, "f_max": 7600.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("pool"), n_speakers=SPEAKERS, utterances_per_speaker=UTTERANCES,
                           seed=3, min_duration=2.5, max_duration=3.0)


def envelope_model(path, centre: np.ndarray, degenerate: bool = False):
    """A ``tiny_test`` model file whose embedding is the utterance's mean log-mel envelope minus ``centre``
    (conv and BatchNorm are identities, the ReLU sees the features + OFFSET > 0); ``degenerate``: a constant."""
    from safetensors.torch import save_file

    from conftest import TinyEncoder

    enc = TinyEncoder(n_mels=N_MELS, channels=N_MELS, embed_dim=N_MELS).eval()
    with torch.no_grad():
        enc.conv.weight.zero_()
        enc.conv.weight[:, :, 1] = torch.eye(N_MELS)
        enc.conv.bias.fill_(OFFSET)
        enc.bn.running_mean.zero_()
        enc.bn.running_var.fill_(1.0 - enc.bn.eps)
        enc.bn.weight.fill_(1.0)
        enc.bn.bias.zero_()
        enc.fc.weight.copy_(torch.zeros(N_MELS, N_MELS) if degenerate else torch.eye(N_MELS))
        enc.fc.bias.copy_(torch.ones(N_MELS) if degenerate else -OFFSET - torch.from_numpy(centre).float())
    meta = {"format": "sslspeaker-model", "format_version": 1,
            "encoder": {"name": "tiny_test", "options": {"channels": N_MELS, "embed_dim": N_MELS}},
            "features": FEATURES, "embed_dim": N_MELS, "threshold": None, "threshold_source": None,
            "provenance": {"method": "test", "step": 0}}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path),
              metadata={"sslspeaker": json.dumps(meta)})
    return path


@pytest.fixture(scope="module")
def model(corpus, tmp_path_factory):
    mel = LogMel(n_mels=N_MELS, norm="global")
    with torch.no_grad():
        envelopes = [mel(torch.from_numpy(read_audio(e.path))[None])[0].mean(-1).numpy() for e in read_manifest(corpus)]
    return envelope_model(tmp_path_factory.mktemp("model") / "envelope.safetensors", np.mean(envelopes, axis=0))


def pseudolabel_cli(capsys, *args):
    rc = main(["pseudolabel", "--device", "cpu", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_command_writes_manifest_report_and_embeddings(corpus, model, tmp_path, capsys):
    out = tmp_path / "labels"
    rc, stdout, err = pseudolabel_cli(capsys, "--model", model, "--data", corpus, "--clusters", SPEAKERS, "--out", out)
    assert rc == 0, err
    assert (out / "manifest.csv").read_text().splitlines()[0] == "path,speaker,duration"
    rows = read_manifest(out / "manifest.csv")
    report = json.loads((out / "report.json").read_text())
    pool = {e.path: e for e in read_manifest(corpus)}
    n = SPEAKERS * UTTERANCES
    assert report["kept"]["utterances"] == len(rows) and report["dropped"]["utterances"] == n - len(rows)
    assert len(rows) >= 0.8 * n
    assert all(re.fullmatch(r"c\d{5}", r.speaker) for r in rows)
    assert all(r.duration == pytest.approx(pool[r.path].duration, abs=2e-3) for r in rows)
    c = report["clustering"]
    assert (c["algorithm"], c["backend"], c["k"], c["k_found_by"]["source"]) == ("kmeans", "torch", SPEAKERS, "given")
    assert sum(int(size) * count for size, count in c["histogram"].items()) == n
    kept = report["diagnostics"]["kept"]
    true, pred = [pool[r.path].speaker for r in rows], [r.speaker for r in rows]
    assert kept["nmi"] == pytest.approx(nmi(true, pred)) and kept["purity"] == pytest.approx(purity(true, pred))
    assert kept["nmi"] > 0.6, kept
    encoder = SpeakerEncoder.load(model)
    assert report["model"]["fingerprint"] == encoder.fingerprint and report["options"]["clusters"] == SPEAKERS
    emb = np.load(out / "embeddings.npy")
    with open(out / "embedding_ids.csv", newline="") as f:
        ids = list(csv.DictReader(f))
    assert emb.shape == (n, N_MELS) and len(ids) == n
    assert np.allclose(emb[5], encoder.embed(ids[5]["path"]), atol=1e-5)
    assert sum(r["status"] == "kept" for r in ids) == len(rows)
    assert f"kept {len(rows)} utterances" in stdout
    assert pseudolabel_cli(capsys, "--model", model, "--data", corpus, "--encoder", "momentum",
                           "--out", tmp_path / "m")[0] == 2  # a model file holds one encoder


def test_command_auto_count_with_ahc_and_no_speakers(corpus, model, tmp_path, capsys):
    anonymous = write_manifest(tmp_path / "anon.csv", [Entry(e.path, None, e.duration) for e in read_manifest(corpus)])
    assert anonymous == SPEAKERS * UTTERANCES
    out = tmp_path / "labels"
    rc, _, err = pseudolabel_cli(capsys, "--model", model, "--data", tmp_path / "anon.csv", "--clusters", "auto",
                                 "--algorithm", "ahc", "--out", out)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert "diagnostics" not in report
    found = report["clustering"]["k_found_by"]
    assert found["source"] == "auto" and found["subsample"] == SPEAKERS * UTTERANCES
    assert found["k"] == found["tried"][str(found["neighbours"])]["k"] == report["clustering"]["k"]
    assert 2 <= report["clustering"]["k"] <= SPEAKERS * UTTERANCES // 2
    assert report["clustering"]["clusters"] == report["clustering"]["k"]  # ahc cut at the estimated count
    assert report["clustering"]["backend"] == "scipy-average"


def _one_error_line(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_command_refuses_a_pool_smaller_than_the_count(corpus, model, tmp_path, capsys):
    rc, _, err = pseudolabel_cli(capsys, "--model", model, "--data", corpus, "--clusters", 100, "--out", tmp_path / "o")
    assert rc == 2
    _one_error_line(err, "the pool has 48 utterances, fewer than --clusters 100")
    assert not (tmp_path / "o" / "report.json").exists()


def test_command_refuses_a_collapsed_clustering(corpus, model, tmp_path, capsys):
    rc, _, err = pseudolabel_cli(capsys, "--model", model, "--data", corpus, "--clusters", 40, "--out", tmp_path / "o")
    assert rc == 2
    _one_error_line(err, "collapsed clustering", "alone in their cluster", "lower --clusters")


def test_command_refuses_a_degenerate_model(corpus, tmp_path, capsys):
    flat = envelope_model(tmp_path / "flat.safetensors", np.zeros(N_MELS), degenerate=True)
    rc, _, err = pseudolabel_cli(capsys, "--model", flat, "--data", corpus, "--clusters", 8, "--out", tmp_path / "o")
    assert rc == 2
    _one_error_line(err, "almost no spread", "mean pairwise cosine 1.000")


def test_command_keeps_an_existing_result_unless_forced(corpus, model, tmp_path, capsys):
    args = ("--model", model, "--data", corpus, "--clusters", SPEAKERS, "--out", tmp_path / "o")
    assert pseudolabel_cli(capsys, *args)[0] == 0
    rc, _, err = pseudolabel_cli(capsys, *args)
    assert rc == 2
    _one_error_line(err, "already holds a pseudo-label result", "--force")
    assert pseudolabel_cli(capsys, *args, "--force")[0] == 0


def test_command_names_a_bad_cluster_count(corpus, model, tmp_path, capsys):
    rc, _, err = pseudolabel_cli(capsys, "--model", model, "--data", corpus, "--clusters", "many", "--out", tmp_path)
    assert rc == 2
    _one_error_line(err, "--clusters: expected an integer >= 2 or 'auto', got 'many'")
