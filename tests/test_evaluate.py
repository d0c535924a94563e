"""Evaluation: scoring protocols, embedding cache, results JSON and plots, AS-norm, the evaluate command."""

from __future__ import annotations

import hashlib
import math
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_audio
from sslspeaker.cli import main
from sslspeaker.data.crops import tile_to
from sslspeaker.evaluation.protocols import EvenCrops, FullUtterance, get_protocol, score_embeddings
from sslspeaker.inference import SpeakerEncoder
from sslspeaker.training.export import export_model
from test_inference import make_run

# the module (the package may also export the function under the same name)
ev = importlib.import_module("sslspeaker.evaluation.evaluate")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return export_model(make_run(root / "run"), root / "model.safetensors")


@pytest.fixture(scope="module")
def model(model_path):
    return SpeakerEncoder.load(model_path)


FILES = {"spk1/a.wav": (1.5, 200.0), "spk1/b.wav": (5.0, 220.0), "spk2/c.wav": (9.0, 480.0)}


@pytest.fixture
def corpus(tmp_path):
    """Three files (one shorter than a 4-s crop, two longer) and a 3-trial list with relative paths."""
    root = tmp_path / "audio"
    for rel, (sec, f) in FILES.items():
        write_audio(root / rel, seconds=sec, freq=f)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 spk1/a.wav spk1/b.wav\n0 spk1/a.wav spk2/c.wav\n0 spk1/b.wav spk2/c.wav\n")
    return trials, root


def run_eval(model, corpus, protocol="full", **kw):
    trials, root = corpus
    captured = {}
    real = ev.score_trials

    def capture(*a, **k):
        captured["scores"] = real(*a, **k)
        return captured["scores"]

    ev_score, ev.score_trials = ev.score_trials, capture
    try:
        res = ev.evaluate(model, trials, root, protocol=protocol, progress=False, **{"cache": False, **kw})
    finally:
        ev.score_trials = ev_score
    return res, captured["scores"]


def batched(model, paths) -> dict:
    """{path: float64 embedding} from ``embed_batch``: the padded batches by length that evaluate embeds in
    (one at a time, ``embed``, agrees only to float32 rounding, which these tests' normalisations magnify)."""
    paths = list(paths)
    return dict(zip(paths, model.embed_batch(paths).astype(np.float64)))


def pairs(root):
    return [(root / "spk1/a.wav", root / "spk1/b.wav"), (root / "spk1/a.wav", root / "spk2/c.wav"),
            (root / "spk1/b.wav", root / "spk2/c.wav")]


# ---- protocols -------------------------------------------------------------------------------
def test_full_protocol_scores_are_direct_cosines(model, corpus):
    res, scores = run_eval(model, corpus, "full")
    expected = [float(model.embed(a) @ model.embed(b)) for a, b in pairs(corpus[1])]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert res["protocol"]["name"] == "full"


def test_clova10crop_equals_a_direct_loop(model, corpus):
    res, scores = run_eval(model, corpus, "clova10crop")
    crop = 400 * 160 + 240
    assert res["protocol"]["params"] == {"n_crops": 10, "eval_frames": 400}

    def crops(path):
        x, sr = sf.read(str(path), dtype="float32")
        assert sr == 16000
        if len(x) <= crop:
            x = tile_to(x, crop)  # clovaai: np.pad(audio, ..., 'wrap')
        starts = np.linspace(0, len(x) - crop, 10).astype(int)
        return [x[s:s + crop] for s in starts]

    def emb(path):  # one crop at a time: batching must not change anything
        return np.stack([model.embed(c) for c in crops(path)])

    expected = []
    for a, b in pairs(corpus[1]):
        ea, eb = emb(a), emb(b)
        m = np.array([[float(ea[i] @ eb[j]) for j in range(10)] for i in range(10)])
        expected.append(m.mean())
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_mocovox10x10_is_deterministic_and_uses_random_4s_segments(model, corpus):
    np.random.seed(1)
    torch.manual_seed(1)
    r1, s1 = run_eval(model, corpus, "mocovox10x10")
    np.random.seed(2)  # global RNG state must not matter
    r2, s2 = run_eval(model, corpus, "mocovox10x10")
    np.testing.assert_array_equal(s1, s2)
    assert r1["protocol"]["params"] == {"n_segments": 10, "segment_seconds": 4.0, "seed": 0}

    root = corpus[1]
    proto = get_protocol("mocovox10x10")
    x, _ = sf.read(str(root / "spk2/c.wav"), dtype="float32")
    segs = proto.load(str(root / "spk2/c.wav"), "spk2/c.wav")
    assert segs.shape == (10, 64000)
    offsets = []
    for seg in segs:  # every segment is a 4-s stretch of the file
        hits = [s for s in range(len(x) - 64000 + 1) if x[s] == seg[0] and np.array_equal(x[s:s + 64000], seg)]
        assert hits
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # random positions, not one repeated crop
    np.testing.assert_array_equal(proto.load(str(root / "spk2/c.wav"), "spk2/c.wav"), segs)
    assert not np.array_equal(proto.load(str(root / "spk2/c.wav"), "other/key.wav"), segs)
    short = proto.load(str(root / "spk1/a.wav"), "spk1/a.wav")  # 1.5 s: tiled to 4 s
    xa, _ = sf.read(str(root / "spk1/a.wav"), dtype="float32")
    np.testing.assert_array_equal(short[0], tile_to(xa, 64000))
    # scores equal the mean of the 10x10 cosine matrices of those segments
    ea = model.embed_waves(proto.load(str(root / "spk1/a.wav"), "spk1/a.wav"))
    eb = model.embed_waves(proto.load(str(root / "spk1/b.wav"), "spk1/b.wav"))
    assert s1[0] == pytest.approx(score_embeddings(ea, eb), abs=1e-5)


def test_segment_protocols_on_long_and_resampled_files(tmp_path):
    from sslspeaker.data.crops import random_starts

    long = tmp_path / "long.wav"
    write_audio(long, seconds=42.0, freq=300.0)  # longer than 10 segments: partial reads
    x, _ = sf.read(str(long), dtype="float32")
    clova = get_protocol("clova10crop")
    starts = np.linspace(0, len(x) - 64240, 10).astype(int)
    np.testing.assert_array_equal(clova.load(str(long)), np.stack([x[s:s + 64240] for s in starts]))
    moco = get_protocol("mocovox10x10")
    starts = random_starts(len(x), 64000, 10, moco.rng("k/long.wav"))
    np.testing.assert_array_equal(moco.load(str(long), "k/long.wav"), np.stack([x[s:s + 64000] for s in starts]))
    low = tmp_path / "low.wav"
    write_audio(low, seconds=6.0, sr=8000, freq=300.0)  # read whole and resampled to 16 kHz
    for proto, crop in ((clova, 64240), (moco, 64000)):
        segs = proto.load(str(low), "low.wav")
        assert segs.shape == (10, crop) and segs.dtype == np.float32 and np.abs(segs).max() > 0.1


def test_protocol_lookup():
    assert isinstance(get_protocol("full"), FullUtterance)
    assert isinstance(get_protocol("clova10crop"), EvenCrops) and get_protocol("clova10crop").crop == 64240
    assert get_protocol("mocovox10x10", segment_seconds=3.0).crop == 48000
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        get_protocol("full", n_crops=3)
    assert get_protocol("clova10crop").tag != get_protocol("clova10crop", eval_frames=300).tag


# ---- cache -----------------------------------------------------------------------------------
def _refuse(*a, **k):
    raise AssertionError("embedding recomputed despite the cache")


def test_cache_hit_and_invalidation(model, model_path, corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    trials, root = corpus
    r1 = ev.evaluate(model, trials, root, protocol="clova10crop", cache=cache, progress=False)
    assert r1["embedding"]["computed"] == 3 and r1["embedding"]["from_cache"] == 0
    assert Path(r1["embedding"]["cache"]).is_file() and Path(r1["embedding"]["cache"]).parent == cache

    with monkeypatch.context() as m:
        m.setattr(SpeakerEncoder, "embed_waves", _refuse)
        m.setattr(EvenCrops, "load", _refuse)
        r2 = ev.evaluate(SpeakerEncoder.load(model_path), trials, root, protocol="clova10crop", cache=cache,
                         progress=False)
        assert r2["embedding"]["from_cache"] == 3 and r2["embedding"]["computed"] == 0
        assert r2["eer"] == r1["eer"] and r2["scores"] == r1["scores"]
        # another protocol is another cache entry: it must compute
        with pytest.raises(AssertionError, match="recomputed"):
            ev.evaluate(model, trials, root, protocol="full", cache=cache, progress=False)

    # another model (different weights) misses the cache
    other = SpeakerEncoder.load(make_run(tmp_path / "run2", seed=5))
    r3 = ev.evaluate(other, trials, root, protocol="clova10crop", cache=cache, progress=False)
    assert r3["embedding"]["computed"] == 3
    # a changed audio file is recomputed, the others come from the cache
    write_audio(root / "spk2/c.wav", seconds=6.0, freq=700.0)
    os.utime(root / "spk2/c.wav", ns=(1, 1))
    r4 = ev.evaluate(model, trials, root, protocol="clova10crop", cache=cache, progress=False)
    assert r4["embedding"]["computed"] == 1 and r4["embedding"]["from_cache"] == 2


# ---- results ---------------------------------------------------------------------------------
def test_results_json_for_hand_made_scores(model, model_path, tmp_path, monkeypatch):
    root = tmp_path / "audio"
    for i in range(4):
        write_audio(root / f"u{i}.wav", seconds=1.0, freq=200.0 + 50 * i)
    labels = [1, 1, 1, 0, 0, 0]
    lines = [f"{lab} u{i % 4}.wav u{(i + 1) % 4}.wav" for i, lab in enumerate(labels)]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    hand = np.array([0.9, 0.8, 0.3, 0.5, 0.2, 0.1])
    monkeypatch.setattr(ev, "score_trials", lambda *a, **k: hand)
    out = tmp_path / "res" / "results.json"
    ret = ev.evaluate(model, trials, root, out=out, cache=False, progress=False)
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(ret))
    # by hand: at threshold 0.5, P_miss = 1/3 (0.3) and P_fa = 1/3 (0.5); at 0.8 P_miss = 1/3, P_fa = 0,
    # the lowest cost for both priors: DCF = P_miss + (1-p)/p P_fa = 1/3
    assert res["eer"] == pytest.approx(100 / 3)
    assert res["eer_threshold"] == pytest.approx(0.5)
    assert res["min_dcf_0.01"] == pytest.approx(1 / 3) and res["min_dcf_0.01_threshold"] == pytest.approx(0.8)
    assert res["min_dcf_0.05"] == pytest.approx(1 / 3) and res["min_dcf_0.05_threshold"] == pytest.approx(0.8)
    t = res["trials"]
    assert t["path"] == str(trials.resolve()) and t["n_trials"] == 6 and t["targets"] == 3 and t["nontargets"] == 3
    assert t["sha256"] == hashlib.sha256(trials.read_bytes()).hexdigest()
    assert res["protocol"]["name"] == "full" and res["score_norm"] is None
    m = res["model"]
    assert m["path"] == str(Path(model_path).resolve())
    assert m["sha256"] == hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    assert m["metadata"]["encoder"]["name"] == "fast_resnet34" and m["fingerprint"] == model.fingerprint
    assert res["config"]["encoder"] == "fast_resnet34" and res["config"]["features"]["n_mels"] == 40
    from sslspeaker import __version__

    assert res["sslspeaker"] == __version__
    import datetime

    assert datetime.datetime.fromisoformat(res["date"].replace("Z", "+00:00")).year >= 2024
    assert res["scores"]["target_mean"] == pytest.approx(hand[:3].mean())
    assert res["plots"] == {"scores": str(out.with_name("results_scores.png")),
                            "det": str(out.with_name("results_det.png"))}
    import matplotlib.image

    for p in res["plots"].values():
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_missing_audio_is_named(model, corpus, tmp_path, capsys):
    trials, root = corpus
    trials.write_text(trials.read_text() + "1 spk3/x.wav spk3/y.wav\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 5 audio files not found: .*spk3/x\.wav.*spk3/y\.wav"):
        ev.evaluate(model, trials, root, cache=False, progress=False)
    rc = main(["evaluate", "--model", str(model.source), "--trials", str(trials), "--audio-root", str(root),
               "--no-cache", "--out", str(tmp_path / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "spk3/x.wav" in err


# ---- AS-norm ---------------------------------------------------------------------------------
def direct_asnorm(s, ea, eb, cohort, k):
    ea, eb, cohort = (np.asarray(x, np.float64) for x in (ea, eb, cohort))

    def stats(e):
        c = np.sort([float(e @ x) for x in cohort])[::-1][:k]
        return np.mean(c), np.sqrt(np.mean((c - np.mean(c)) ** 2))

    (ma, sa), (mb, sb) = stats(ea), stats(eb)
    return 0.5 * ((s - ma) / sa + (s - mb) / sb)


def test_asnorm_equals_the_formula():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cohort = rng.standard_normal((30, 8))
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    ia, ib = np.array([0, 1, 2, 3, 4, 0]), np.array([5, 4, 3, 2, 1, 3])
    raw = np.einsum("nd,nd->n", emb[ia], emb[ib])
    for k in (1, 5, 30, 100):  # 100 > cohort size: all 30 are used
        mu, sd = ev.cohort_statistics(emb, cohort, k)
        got = ev.as_norm(raw, mu[ia], sd[ia], mu[ib], sd[ib]) if k > 1 else None
        if k == 1:  # std of one score is 0: only check the means
            np.testing.assert_allclose(mu, (emb @ cohort.T).max(1))
            continue
        want = [direct_asnorm(raw[i], emb[ia[i]], emb[ib[i]], cohort, min(k, 30)) for i in range(len(ia))]
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_evaluate_with_asnorm(model, corpus, tmp_path, monkeypatch):
    trials, root = corpus
    cohort_files = []
    for i in range(4):
        p = tmp_path / "cohort" / f"k{i}.wav"
        write_audio(p, seconds=1.2, freq=150.0 + 90 * i)
        cohort_files.append(p)
    manifest = tmp_path / "cohort" / "manifest.csv"
    manifest.write_text("path,speaker,duration\n" + "".join(f"k{i}.wav,c{i},1.2\n" for i in range(4)))
    captured = {}
    real = ev.as_norm
    monkeypatch.setattr(ev, "as_norm", lambda *a, **k: captured.setdefault("s", real(*a, **k)))
    res = ev.evaluate(model, trials, root, score_norm="asnorm", cohort=manifest, top_k=3, cache=False,
                      progress=False)
    sn = res["score_norm"]
    assert sn["name"] == "asnorm" and sn["top_k"] == 3 and sn["cohort_size"] == 4
    assert sn["cohort_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    cohort = np.stack(list(batched(model, cohort_files).values()))
    e = batched(model, {p for pair in pairs(root) for p in pair})
    want = [direct_asnorm(float(e[a] @ e[b]), e[a], e[b], cohort, 3) for a, b in pairs(root)]
    # evaluate embeds in padded batches, model.embed one at a time: embeddings agree to ~5e-8 (float32
    # rounding), but these tones' cohort scores spread by only ~1e-5 (sd), which scales that by ~1e4
    np.testing.assert_allclose(captured["s"], want, rtol=1e-6, atol=1e-2)
    with pytest.raises(ValueError, match="cohort"):
        ev.evaluate(model, trials, root, score_norm="asnorm", cache=False, progress=False)


# ---- embedding normalisation ---------------------------------------------------------------------
def direct_adapted_cosine(ea, eb, data, zscore):
    """cos((a − μ)/σ, (b − μ)/σ) with μ, σ the mean and population std of the rows of ``data``, by loops."""
    data = np.asarray(data, np.float64)
    n, d = data.shape
    mu = [sum(data[i, j] for i in range(n)) / n for j in range(d)]
    sd = [np.sqrt(sum((data[i, j] - mu[j]) ** 2 for i in range(n)) / n) if zscore else 1.0 for j in range(d)]
    a = np.array([(ea[j] - mu[j]) / sd[j] for j in range(d)])
    b = np.array([(eb[j] - mu[j]) / sd[j] for j in range(d)])
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.mark.parametrize("kind", ["mean", "zscore"])
def test_embedding_norm_over_the_trials_equals_the_formula(model, corpus, tmp_path, kind):
    trials, root = corpus
    res, got = run_eval(model, corpus, embedding_norm=kind, out=tmp_path / "r.json")
    e = batched(model, {p for pair in pairs(root) for p in pair})
    want = [direct_adapted_cosine(e[a], e[b], list(e.values()), kind == "zscore") for a, b in pairs(root)]
    # padded batches vs one at a time: ~5e-8 apart, magnified by centring three nearly equal embeddings
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    raw, _ = run_eval(model, corpus)
    assert not np.allclose(got, [float(e[a] @ e[b]) for a, b in pairs(root)], atol=1e-3)  # it did change them
    en = json.loads((tmp_path / "r.json").read_text())["embedding_norm"]
    assert en["name"] == kind and en["data"] == "trials" and en["utterances"] == 3 and raw["embedding_norm"] is None


def test_embedding_norm_over_a_manifest_then_asnorm(model, corpus, tmp_path, monkeypatch):
    trials, root = corpus
    files = []
    for i in range(4):
        files.append(tmp_path / "dom" / f"k{i}.wav")
        write_audio(files[-1], seconds=1.2, freq=150.0 + 90 * i)
    manifest = tmp_path / "dom" / "manifest.csv"
    manifest.write_text("path,speaker,duration\n" + "".join(f"k{i}.wav,,1.2\n" for i in range(4)))
    captured = {}
    real = ev.as_norm

    def as_norm(s, *a, **k):
        captured["raw"] = s
        return real(s, *a, **k)

    monkeypatch.setattr(ev, "as_norm", as_norm)
    res = ev.evaluate(model, trials, root, embedding_norm="mean", norm_data=manifest, score_norm="asnorm",
                      cohort=manifest, top_k=4, cache=False, progress=False)
    dom = list(batched(model, files).values())
    e = batched(model, {p for pair in pairs(root) for p in pair})
    want = [direct_adapted_cosine(e[a], e[b], dom, False) for a, b in pairs(root)]
    np.testing.assert_allclose(captured["raw"], want, rtol=1e-6)  # AS-norm starts from the adapted cosines
    en = res["embedding_norm"]
    assert en["data"] == "manifest" and en["utterances"] == 4
    assert en["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="embedding_norm='whiten'"):
        ev.evaluate(model, trials, root, embedding_norm="whiten", cache=False, progress=False)
    with pytest.raises(FileNotFoundError, match="no such norm data manifest"):
        ev.evaluate(model, trials, root, embedding_norm="mean", norm_data=tmp_path / "x.csv", cache=False,
                    progress=False)


# ---- command ---------------------------------------------------------------------------------
def test_cli_evaluate(model_path, corpus, tmp_path, capsys):
    trials, root = corpus
    out = tmp_path / "r" / "results.json"
    rc = main(["evaluate", "--model", str(model_path), "--trials", str(trials), "--audio-root", str(root),
               "--protocol", "clova10crop", "--out", str(out), "--cache", str(tmp_path / "c"), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert f"EER {res['eer']:.3f}%" in printed and "minDCF(0.01)" in printed and "minDCF(0.05)" in printed
    assert str(out) in printed and "results_det.png" in printed
    assert res["protocol"]["name"] == "clova10crop"
    assert out.with_name("results_scores.png").is_file() and out.with_name("results_det.png").is_file()
    rc = main(["evaluate", "--model", str(model_path), "--trials", str(trials), "--audio-root", str(root),
               "--embedding-norm", "zscore", "--out", str(out), "--no-cache", "--quiet"])
    assert rc == 0 and "embedding norm zscore over the 3 trial utterances" in capsys.readouterr().out
    assert json.loads(out.read_text())["embedding_norm"]["name"] == "zscore"
    rc = main(["evaluate", "--model", str(model_path), "--trials", str(trials), "--audio-root", str(root),
               "--score-norm", "asnorm", "--out", str(out)])
    assert rc == 2 and "--cohort" in capsys.readouterr().err


# ---- the score stage: back-ends and options ----------------------------------------------------
def test_cosine_backend_is_the_row_wise_dot_product():
    from sslspeaker.evaluation.scoring import CosineBackend, score_trials
    from sslspeaker.data.manifest import Trial

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    got = CosineBackend().score_pairs(a, b)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, [sum(a[i, j] * b[i, j] for j in range(7)) for i in range(5)], rtol=1e-12)
    vectors = {"/r/x.wav": a[0], "/r/y.wav": b[0], "/r/z.wav": b[1]}
    trials = [Trial(1, "x.wav", "y.wav"), Trial(0, "x.wav", "z.wav")]
    np.testing.assert_allclose(score_trials(trials, vectors, "/r"), [a[0] @ b[0], a[0] @ b[1]], rtol=1e-12)


class NegatedDistance:
    """A stand-in back-end: minus the Euclidean distance of the two vectors."""

    name = "negdist"

    def score_pairs(self, a, b):
        return -np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1)


def test_evaluate_scores_with_the_given_backend(model, corpus):
    res, scores = run_eval(model, corpus, backend=NegatedDistance())
    e = batched(model, {p for pair in pairs(corpus[1]) for p in pair})
    want = [-float(np.sqrt(sum((e[a][j] - e[b][j]) ** 2 for j in range(len(e[a]))))) for a, b in pairs(corpus[1])]
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    assert res["backend"] == "negdist"
    assert run_eval(model, corpus)[0]["backend"] == "cosine"
    with pytest.raises(ValueError, match="asnorm.*'negdist'"):
        ev.evaluate(model, *corpus, backend=NegatedDistance(), score_norm="asnorm", cohort="c.csv", cache=False)


def test_options_object_and_keywords_agree(model, corpus):
    by_keywords, s1 = run_eval(model, corpus, "clova10crop", embedding_norm="mean")
    opts = ev.EvalOptions(protocol="clova10crop", embedding_norm="mean", cache=False)
    trials, root = corpus
    by_object = ev.evaluate(model, trials, root, options=opts, progress=False)
    assert by_object["eer"] == by_keywords["eer"] and by_object["scores"] == by_keywords["scores"]
    assert by_object["protocol"] == by_keywords["protocol"] and by_object["embedding_norm"]["name"] == "mean"
    with pytest.raises(TypeError, match="unknown option.*topk.*known: protocol"):
        ev.evaluate(model, trials, root, topk=3)


def test_results_json_is_written_once(model, corpus, tmp_path, monkeypatch):
    writes = []
    real = ev.atomic_write_text
    monkeypatch.setattr(ev, "atomic_write_text", lambda path, text: writes.append(path) or real(path, text))
    out = tmp_path / "once" / "results.json"
    ret = ev.evaluate(model, *corpus, out=out, cache=False, progress=False)
    assert writes == [out]
    res = json.loads(out.read_text())
    assert res["seconds"] == ret["seconds"] and res["seconds"] > 0 and res["plots"]["det"].endswith("results_det.png")


def test_trainer_validation_scores_through_the_same_path(model, corpus):
    from types import SimpleNamespace

    from sslspeaker.config import ValidationConfig
    from sslspeaker.evaluation.metrics import compute_eer, compute_min_dcf
    from sslspeaker.training.trainer import Trainer

    trials, root = corpus
    trainer = SimpleNamespace(cfg=SimpleNamespace(validation=ValidationConfig(trials=str(trials), audio_root=str(root))),
                              method=SimpleNamespace(inference_encoder=lambda: model.encoder),
                              features=model.features, device="cpu")
    got = Trainer.validate(trainer)
    scores = [float(model.embed(a) @ model.embed(b)) for a, b in pairs(root)]
    eer, thr = compute_eer(scores, [1, 0, 0])
    dcf, _ = compute_min_dcf(scores, [1, 0, 0], 0.01)
    assert got == {"eer": pytest.approx(round(100 * eer, 3)), "eer_threshold": pytest.approx(thr, abs=1e-5),
                   "min_dcf_0.01": pytest.approx(round(dcf, 4))}
    assert run_eval(model, corpus)[0]["eer_threshold"] == pytest.approx(got["eer_threshold"], abs=1e-5)


# ---- back-ends: the model's own, forced cosine, a preset fitted on a labelled manifest -----------------
OLD = Path(__file__).parent / "data" / "old_format"  # a 16-d model and its run folder


@pytest.fixture(scope="module")
def small_model():
    return SpeakerEncoder.load(OLD / "model.safetensors")


def side_embeddings(model, root):
    e = batched(model, {p for pair in pairs(root) for p in pair})
    a = np.stack([e[x] for x, _ in pairs(root)]).astype(np.float32)
    b = np.stack([e[y] for _, y in pairs(root)]).astype(np.float32)
    return a, b


def test_evaluate_scores_with_the_models_calibrated_backend_by_default(corpus, tmp_path):
    from sslspeaker.evaluation.llr_metrics import min_cllr
    from test_inference import fitted_backend

    chain = fitted_backend(16)
    model = SpeakerEncoder.load(export_model(OLD / "run", tmp_path / "m.safetensors", backend=chain))
    res, scores = run_eval(model, corpus)
    a, b = side_embeddings(model, corpus[1])
    np.testing.assert_allclose(scores, chain.score_pairs(a, b), rtol=1e-6)  # float32 embeddings, two read paths
    assert res["backend"] == "whiten+lengthnorm+plda"
    assert res["backend_info"] == {"name": "whiten+lengthnorm+plda", "source": "model file", "calibrated": True}
    labels = np.array([1, 0, 0])
    direct_cllr = (np.mean([math.log2(1 + math.exp(-s)) for s in scores[labels == 1]])
                   + np.mean([math.log2(1 + math.exp(s)) for s in scores[labels == 0]])) / 2
    assert res["cllr"] == pytest.approx(direct_cllr, rel=1e-12)
    p_miss = np.mean(scores[labels == 1] < math.log(99))
    p_fa = np.mean(scores[labels == 0] >= math.log(99))
    assert res["act_dcf_0.01"] == pytest.approx((0.01 * p_miss + 0.99 * p_fa) / 0.01)
    assert res["min_cllr"] == pytest.approx(min_cllr(scores, labels)) and res["min_cllr"] <= res["cllr"] + 1e-12
    forced, cos = run_eval(model, corpus, backend="cosine")
    np.testing.assert_allclose(cos, np.einsum("nd,nd->n", a, b), rtol=1e-6)
    assert forced["backend"] == "cosine" and forced["backend_info"]["source"] == "cosine"
    assert "cllr" not in forced and "act_dcf_0.01" not in forced
    assert forced["min_cllr"] == pytest.approx(min_cllr(cos, labels))
    with pytest.raises(ValueError, match=r"asnorm.*'whiten\+lengthnorm\+plda'.*--backend cosine"):
        ev.evaluate(model, *corpus, score_norm="asnorm", cohort="c.csv", cache=False, progress=False)


@pytest.fixture
def labelled(tmp_path):
    """A manifest of 8 files of 3 speakers (relative paths, a speaker column)."""
    rows = []
    for i in range(8):
        rel = f"bk/s{i % 3}_{i}.wav"
        write_audio(tmp_path / rel, seconds=1.0 + 0.1 * i, freq=180.0 + 90 * (i % 3) + 7 * i)
        rows.append(f"{rel},spk{i % 3},1.0\n")
    manifest = tmp_path / "backend.csv"
    manifest.write_text("path,speaker,duration\n" + "".join(rows))
    return manifest


def test_evaluate_fits_a_preset_on_a_labelled_manifest(small_model, corpus, labelled, tmp_path, capsys):
    from sslspeaker.backends import BackendChain
    from sslspeaker.data.manifest import read_manifest

    res, scores = run_eval(small_model, corpus, backend="lda", backend_data=labelled)
    entries = read_manifest(labelled)
    x = np.stack(list(batched(small_model, [e.path for e in entries]).values())).astype(np.float32)
    chain = BackendChain.build("lda").fit(x, [e.speaker for e in entries])
    np.testing.assert_allclose(scores, chain.score_pairs(*side_embeddings(small_model, corpus[1])), atol=1e-5)
    info = res["backend_info"]
    assert res["backend"] == "lda" and info["source"] == "fitted here (preset lda)" and info["calibrated"] is False
    assert info["data"]["speakers"] == 3 and info["data"]["utterances"] == 8
    assert info["data"]["manifest"] == str(labelled.resolve()) and "cllr" not in res
    text = labelled.read_text().replace("spk1,", ",", 1)
    labelled.write_text(text)
    with pytest.raises(ValueError, match=r"backend.csv: back-end data needs a speaker for every file .* 1 of 8"):
        run_eval(small_model, corpus, backend="lda", backend_data=labelled)
    with pytest.raises(ValueError, match=r"backend 'plda' is fitted on labelled embeddings: give backend_data"):
        run_eval(small_model, corpus, backend="plda")
    with pytest.raises(ValueError, match=r"backend='svm': expected one of model, cosine, lda, plda, lda_plda"):
        run_eval(small_model, corpus, backend="svm")
    labelled.write_text(text.replace(",,", ",spk1,"))
    out = tmp_path / "cli" / "r.json"
    assert main(["evaluate", "--model", str(OLD / "model.safetensors"), "--trials", str(corpus[0]), "--audio-root",
                 str(corpus[1]), "--backend", "lda", "--backend-data", str(labelled), "--out", str(out),
                 "--no-cache", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "back-end lda (fitted here (preset lda) on 8 utterances of 3 speakers)" in printed
    saved = json.loads(out.read_text())
    assert f"min Cllr {saved['min_cllr']:.4f} (scores are not calibrated" in printed
    assert saved["backend"] == "lda" and saved["eer"] == res["eer"]


def test_cache_entries_of_the_wrong_size_are_recomputed(small_model, corpus, tmp_path):
    from sslspeaker.evaluation.cache import EmbeddingCache
    from sslspeaker.evaluation.protocols import get_protocol

    trials, root = corpus
    clean = ev.evaluate(small_model, trials, root, cache=False, progress=False)
    folder = tmp_path / "cache"
    forged = EmbeddingCache(folder, small_model.fingerprint, get_protocol("full"), embed_dim=16)
    for rel in FILES:
        p = str(root / rel)
        forged.put(forged.key(p, rel), np.ones((1, 8), np.float32) / np.sqrt(8))  # right keys, 8-d entries
    forged.save()
    res = ev.evaluate(small_model, trials, root, cache=folder, progress=False)
    assert res["embedding"]["computed"] == 3 and res["embedding"]["from_cache"] == 0
    assert res["eer"] == clean["eer"] and res["scores"] == clean["scores"]
    again = ev.evaluate(small_model, trials, root, cache=folder, progress=False)  # now a valid file
    assert again["embedding"]["from_cache"] == 3 and again["scores"] == clean["scores"]
    with np.load(again["embedding"]["cache"]) as z:
        assert z["embeddings"].shape == (3, 1, 16)
    for emb, why in ((np.ones((3, 1, 16)), "dtype float64"), (np.full((3, 1, 16), np.nan, np.float32), "NaN"),
                     (np.ones((3, 16), np.float32), "shape (3, 16)")):
        from sslspeaker.evaluation.cache import cache_problem

        assert why in cache_problem(np.array(["k1", "k2", "k3"]), emb, 16)
    assert cache_problem(np.array(["k1"]), np.ones((3, 1, 16), np.float32), 16) == "1 keys for 3 embeddings"
