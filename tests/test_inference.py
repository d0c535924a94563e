"""Inference model format (.safetensors + metadata), SpeakerEncoder API, and the embed/verify/export commands."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from conftest import write_audio
from sslspeaker.cli import main, run_command
from sslspeaker.config import Config, config_from_dict, to_dict
from sslspeaker.inference import NO_DEFAULT_MODEL, ModelError, NoDefaultModelError, SpeakerEncoder, read_model_file
from sslspeaker.models import build_encoder
from sslspeaker.training.build import build_features, build_model
from sslspeaker.training.checkpoint import load_checkpoint, save_checkpoint
from sslspeaker.training.export import export_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_run(root, seed: int = 0, step: int = 7):
    """A training run folder in the trainer's format: default fast_resnet34, random weights and BN statistics."""
    cfg = Config()
    cfg.method.options = {"queue_size": 64}
    torch.manual_seed(seed)
    method = build_model(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers must survive the round trip
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {"format": "sslspeaker-checkpoint-1", "config": to_dict(cfg), "method": method.state_dict(),
             "position": {"step": step, "epoch": 1, "batch": 0}}
    save_checkpoint(root / "checkpoints" / "last.pt", state)
    return root


def direct_embedding(run_dir, wave: np.ndarray) -> np.ndarray:
    """The embedding computed straight from the training checkpoint's encoder and the config's features."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = config_from_dict(ckpt["config"])
    enc = build_encoder(cfg.model.encoder, n_mels=cfg.features.n_mels, **cfg.model.options)
    enc.load_state_dict({k[8:]: v for k, v in ckpt["method"].items() if k.startswith("encoder.")})
    enc.eval()
    with torch.no_grad():
        e = enc(build_features(cfg)(torch.from_numpy(wave)[None]))
    return F.normalize(e, dim=-1)[0].numpy()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def model_path(run_dir, tmp_path_factory):
    return export_model(run_dir, tmp_path_factory.mktemp("model") / "model.safetensors", threshold=0.4,
                        threshold_source="dev EER threshold on test trials")


@pytest.fixture(scope="module")
def wave():
    return (0.1 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)


# ---- format ----------------------------------------------------------------------------------
def test_export_round_trip_matches_direct_encoder(run_dir, model_path, wave):
    model = SpeakerEncoder.load(model_path)
    e = model.embed(wave)
    assert e.dtype == np.float32 and e.shape == (256,)
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(e, direct_embedding(run_dir, wave), atol=1e-5)
    # a run folder and its .pt load to the same embeddings (no threshold: none was stored)
    for src in (run_dir, run_dir / "checkpoints" / "last.pt"):
        m2 = SpeakerEncoder.load(src)
        np.testing.assert_allclose(m2.embed(wave), e, atol=1e-6)
        assert m2.threshold is None and m2.fingerprint == model.fingerprint


def test_model_file_is_plain_safetensors_with_metadata(run_dir, model_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(model_path))
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    enc = {k[8:]: v for k, v in ckpt["method"].items() if k.startswith("encoder.")}
    assert set(tensors) == set(enc)
    for k, v in enc.items():
        assert torch.equal(tensors[k], v), k
    with safe_open(str(model_path), "pt") as f:
        meta = json.loads(f.metadata()["sslspeaker"])
    assert meta["format"] == "sslspeaker-model" and meta["format_version"] == 1
    assert meta["encoder"]["name"] == "fast_resnet34"
    # every constructor argument is pinned, so a later change of a code default cannot alter the model
    opts = meta["encoder"]["options"]
    assert opts["embed_dim"] == 256 and opts["channels"] == [16, 32, 64, 128] and opts["layers"] == [3, 4, 6, 3]
    assert {"pooling", "se_reduction", "input_norm"} <= set(opts)
    assert meta["features"]["n_mels"] == 40 and meta["features"]["norm"] == "instance"
    assert meta["features"]["preemphasis"] == pytest.approx(0.97)
    assert meta["embed_dim"] == 256
    assert meta["threshold"] == pytest.approx(0.4) and meta["threshold_source"] == "dev EER threshold on test trials"
    prov = meta["provenance"]
    assert prov["step"] == 7 and prov["checkpoint"].endswith("last.pt") and prov["method"] == "moco"


def test_loading_a_model_never_unpickles(model_path, wave, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = SpeakerEncoder.load(model_path)
    assert np.isfinite(model.embed(wave)).all()


def test_bad_model_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelError, match="not an sslspeaker model"):
        SpeakerEncoder.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.safetensors"):
        SpeakerEncoder.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="nothere"):
        SpeakerEncoder.load(tmp_path / "nothere.safetensors")
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(ModelError, match="not a training run"):
        SpeakerEncoder.load(tmp_path / "emptyrun")


def test_missing_default_model_is_explained(tmp_path, monkeypatch):
    import sslspeaker.inference.model_file as im

    monkeypatch.setattr(im, "default_model_path", lambda: tmp_path / "default.safetensors")
    with pytest.raises(NoDefaultModelError, match="no default model is bundled"):
        SpeakerEncoder.load()
    assert "pass --model PATH" in NO_DEFAULT_MODEL


def test_default_model_path_is_inside_the_package():
    import sslspeaker
    from sslspeaker.inference import default_model_path

    p = default_model_path()
    assert p.name == "default.safetensors" and p.parent.name == "pretrained"
    assert p.parent.parent == Path(sslspeaker.__file__).resolve().parent


def test_run_folder_features_follow_the_trainer_and_no_lower_layer_imports_training():
    import ast

    import sslspeaker
    from sslspeaker.inference.checkpoint_source import features_of
    from sslspeaker.runs import RUN_CHECKPOINT

    for cfg in (Config(), config_from_dict({"features": {"n_mels": 64, "norm": "global", "preemphasis": 0.0}})):
        assert features_of(cfg).describe() == build_features(cfg).describe()
    assert RUN_CHECKPOINT == Path("checkpoints") / "last.pt"
    root = Path(sslspeaker.__file__).parent
    offenders = []
    for folder in ("inference", "evaluation", "methods", "models", "data", "features", "augment"):
        for f in sorted((root / folder).glob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] + [a.name for a in node.names]
                    if (node.level and (node.module or "").split(".")[0] == "training") or \
                            (node.module or "").startswith("sslspeaker.training") or \
                            (node.level == 2 and not node.module and "training" in names):
                        offenders.append(f"{f.relative_to(root)}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("sslspeaker.training") for a in node.names):
                    offenders.append(f"{f.relative_to(root)}:{node.lineno}")
    assert offenders == []


OLD = Path(__file__).parent / "data" / "old_format"  # written by tests/data/make_old_format.py at 376c79f


def test_files_written_before_the_inference_split_load_the_same(tmp_path):
    old = np.load(OLD / "embeddings.npz")
    for name, src in (("run", OLD / "run"), ("pt", OLD / "run" / "checkpoints" / "last.pt"),
                      ("model", OLD / "model.safetensors")):  # (the packaged default has been replaced since)
        got = SpeakerEncoder.load(src).embed_batch(list(old["waves"]))
        np.testing.assert_allclose(got, old["run" if name == "pt" else name], atol=1e-6, err_msg=name)
    m = SpeakerEncoder.load(OLD / "model.safetensors")
    assert m.threshold == pytest.approx(0.25) and m.threshold_source == "made by 376c79f" and m.embed_dim == 16
    assert m.features.describe() == {"type": "logmel", "sample_rate": 16000, "n_mels": 24, "norm": "mean",
                                     "preemphasis": pytest.approx(0.9), "n_fft": 512, "win_length": 400,
                                     "hop_length": 160, "f_min": 20.0, "f_max": 7600.0}
    # today's export of the old run folder writes the old model file's weights and metadata
    new = export_model(OLD / "run", tmp_path / "m.safetensors", threshold=0.25, threshold_source="made by 376c79f")
    (t_old, m_old), (t_new, m_new) = read_model_file(OLD / "model.safetensors"), read_model_file(new)
    assert set(t_old) == set(t_new) and all(torch.equal(t_old[k], t_new[k]) for k in t_old)
    for meta in (m_old, m_new):
        for key in ("exported", "sslspeaker", "checkpoint"):
            meta["provenance"].pop(key)
    # which of the checkpoint's encoders, recorded since: the run's MoCo inference (query) encoder
    assert (m_new["provenance"].pop("encoder_weights"), m_new["provenance"].pop("inference_encoder")) == \
        ("encoder", "encoder")
    assert m_new == m_old


# ---- API -------------------------------------------------------------------------------------
def test_embed_inputs_paths_tensors_and_other_rates(model_path, wave, tmp_path):
    import soxr

    model = SpeakerEncoder.load(model_path)
    e = model.embed(wave)
    np.testing.assert_allclose(model.embed(torch.from_numpy(wave)), e, atol=1e-6)
    sf.write(str(tmp_path / "a.wav"), wave, 16000, subtype="FLOAT")
    np.testing.assert_allclose(model.embed(tmp_path / "a.wav"), e, atol=1e-6)
    np.testing.assert_allclose(model.embed(str(tmp_path / "a.wav")), e, atol=1e-6)
    w8 = soxr.resample(wave, 16000, 8000).astype(np.float32)
    expected = model.embed(soxr.resample(w8, 8000, 16000).astype(np.float32))
    np.testing.assert_allclose(model.embed(w8, sample_rate=8000), expected, atol=1e-6)
    batch = model.embed_batch([wave, wave[:20000]])
    assert batch.shape == (2, 256)
    np.testing.assert_allclose(batch[0], e, atol=1e-6)
    np.testing.assert_allclose(batch[1], model.embed(wave[:20000]), atol=1e-6)
    with pytest.raises(ValueError, match="mono"):
        model.embed(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="too short"):
        model.embed(np.zeros(100, np.float32))


def test_score_and_verify(model_path, wave):
    model = SpeakerEncoder.load(model_path)
    other = (0.1 * np.random.default_rng(1).standard_normal(24000)).astype(np.float32)
    s = model.score(wave, other)
    assert s == pytest.approx(float(model.embed(wave) @ model.embed(other)), abs=1e-6)
    assert model.score(other, wave) == pytest.approx(s, abs=1e-6)
    assert model.score(wave, wave) == pytest.approx(1.0, abs=1e-5)
    assert model.threshold == pytest.approx(0.4)
    assert model.verify(wave, other) == (pytest.approx(s, abs=1e-6), s >= 0.4)
    assert model.verify(wave, other, threshold=s - 1e-3)[1] is True
    assert model.verify(wave, other, threshold=s + 1e-3)[1] is False
    assert model.to("cpu") is model and model.device == torch.device("cpu")
    cfg = model.config
    assert cfg["encoder"] == "fast_resnet34" and cfg["features"]["n_mels"] == 40 and cfg["embed_dim"] == 256


def test_verify_without_any_threshold_is_an_error(run_dir, wave):
    model = SpeakerEncoder.load(run_dir)
    with pytest.raises(ValueError, match="no decision threshold"):
        model.verify(wave, wave)
    assert model.verify(wave, wave, threshold=0.5)[1] is True


def test_fingerprint_follows_weights_not_threshold(run_dir, model_path, tmp_path):
    from sslspeaker.inference import set_threshold

    a = SpeakerEncoder.load(model_path)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(model_path.read_bytes())
    set_threshold(copy, 0.9, "manual")
    b = SpeakerEncoder.load(copy)
    assert b.threshold == pytest.approx(0.9) and b.threshold_source == "manual"
    assert b.fingerprint == a.fingerprint
    tensors, meta = read_model_file(copy)
    assert meta["threshold"] == pytest.approx(0.9) and set(tensors) == set(a.encoder.state_dict())
    c = SpeakerEncoder.load(make_run(tmp_path / "other", seed=1))
    assert c.fingerprint != a.fingerprint


# ---- commands --------------------------------------------------------------------------------
def test_cli_embed_writes_npy_and_skips_a_corrupt_file(model_path, tmp_path, capsys):
    a = tmp_path / "in" / "spk1" / "utt.wav"
    b = tmp_path / "in" / "spk2" / "utt.wav"  # same stem: a collision
    c = tmp_path / "in" / "c.flac"
    for p, f in ((a, 200.0), (b, 300.0), (c, 400.0)):
        write_audio(p, seconds=1.0, freq=f, subtype="PCM_16")
    bad = tmp_path / "in" / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    out = tmp_path / "out"
    rc = main(["embed", "--model", str(model_path), str(a), str(bad), str(b), str(c), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "bad.wav" in err and "skipped" in err
    assert sorted(f.name for f in out.glob("*.npy")) == ["c.npy", "utt-2.npy", "utt.npy"]
    model = SpeakerEncoder.load(model_path)
    np.testing.assert_allclose(np.load(out / "utt.npy"), model.embed(a), atol=1e-6)
    np.testing.assert_allclose(np.load(out / "utt-2.npy"), model.embed(b), atol=1e-6)
    index = (out / "index.csv").read_text().splitlines()
    assert index[0] == "path,embedding" and len(index) == 4 and index[2].endswith("utt-2.npy")

    assert main(["embed", "--model", str(model_path), str(a), str(c), "--out", str(out), "--format", "npz"]) == 0
    z = np.load(out / "embeddings.npz")
    assert list(z["paths"]) == [str(a), str(c)] and z["embeddings"].shape == (2, 256)
    np.testing.assert_allclose(z["embeddings"][1], model.embed(c), atol=1e-6)
    assert main(["embed", "--model", str(model_path), str(c), "--out", str(out), "--format", "csv"]) == 0
    rows = (out / "embeddings.csv").read_text().splitlines()
    assert rows[0].startswith("path,e0,e1") and len(rows) == 2
    np.testing.assert_allclose(np.array(rows[1].split(",")[1:], float), model.embed(c), atol=1e-6)


def test_cli_verify_prints_a_decision(model_path, tmp_path, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(a, seconds=1.5, freq=200.0)
    write_audio(b, seconds=1.5, freq=330.0)
    model = SpeakerEncoder.load(model_path)
    s = model.score(a, b)
    assert main(["verify", "--model", str(model_path), str(a), str(a)]) == 0
    out = capsys.readouterr().out
    assert "same speaker" in out and "0.4000" in out
    assert main(["verify", "--model", str(model_path), str(a), str(b), "--threshold", str(s + 0.01)]) == 0
    out = capsys.readouterr().out
    assert "different speakers" in out and f"{s:.4f}" in out
    assert main(["verify", "--model", str(model_path), str(a), str(b), "--threshold", str(s - 0.01), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["same_speaker"] is True and rec["score"] == pytest.approx(s, abs=1e-6)
    assert main(["verify", "--model", str(model_path), str(a), str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err


def test_cli_without_model_and_without_bundled_default(tmp_path, monkeypatch, capsys):
    import sslspeaker.inference.model_file as im

    monkeypatch.setattr(im, "default_model_path", lambda: tmp_path / "default.safetensors")
    a = tmp_path / "a.wav"
    write_audio(a, seconds=1.0)
    for argv in (["verify", str(a), str(a)], ["embed", str(a), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        assert f"error: {NO_DEFAULT_MODEL}" in capsys.readouterr().err


def test_cli_verify_run_dir_without_threshold(run_dir, tmp_path, capsys):
    a = tmp_path / "a.wav"
    write_audio(a, seconds=1.0)
    assert main(["verify", "--model", str(run_dir), str(a), str(a)]) == 2
    assert "--threshold" in capsys.readouterr().err


def test_cli_export(run_dir, tmp_path, capsys):
    from sslspeaker.commands.export import add_parser  # noqa: F401  (the module exists)
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "m.safetensors"
    args = parser.parse_args(["export", str(run_dir), "--out", str(out), "--threshold", "0.25"])
    assert args.func(args) == 0
    m = SpeakerEncoder.load(out)
    assert m.threshold == pytest.approx(0.25) and "--threshold" in m.threshold_source

    # --trials: the stored threshold is the dev EER threshold of full-utterance scoring
    files = []
    for i, f in enumerate((200.0, 210.0, 500.0, 520.0)):
        files.append(f"s{i}.wav")
        write_audio(tmp_path / "audio" / files[-1], seconds=1.0 + 0.3 * i, freq=f)
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {files[0]} {files[1]}\n0 {files[0]} {files[2]}\n1 {files[2]} {files[3]}\n"
                      f"0 {files[1]} {files[3]}\n")
    out2 = tmp_path / "m2.safetensors"
    args = parser.parse_args(["export", str(run_dir), "--out", str(out2), "--trials", str(trials),
                              "--audio-root", str(tmp_path / "audio"), "--no-cache", "--quiet", "--device", "cpu"])
    assert args.func(args) == 0
    assert "dev EER" in capsys.readouterr().out
    from sslspeaker.evaluation.evaluate import evaluate

    res = evaluate(SpeakerEncoder.load(run_dir), trials, tmp_path / "audio", cache=False, progress=False)
    m2 = SpeakerEncoder.load(out2)
    assert m2.threshold == pytest.approx(res["eer_threshold"])
    assert m2.threshold_source.startswith("dev EER threshold on") and str(trials.name) in m2.threshold_source
    args = parser.parse_args(["export", str(run_dir), "--out", str(out2), "--threshold", "1", "--trials", str(trials)])
    assert run_command(args) == 2


def test_model_file_pins_encoder_defaults(model_path, wave, monkeypatch):
    from sslspeaker.models import FastResNet34

    before = SpeakerEncoder.load(model_path).embed(wave)
    defaults = FastResNet34.__init__.__defaults__
    assert defaults[-2] == 8  # se_reduction
    monkeypatch.setattr(FastResNet34.__init__, "__defaults__", defaults[:-2] + (4, defaults[-1]))
    with pytest.raises(RuntimeError):  # the changed default bites a model built from the defaults...
        build_encoder("fast_resnet34").load_state_dict(SpeakerEncoder.load(model_path).encoder.state_dict())
    # ...but not a model file, which stored every argument
    np.testing.assert_allclose(SpeakerEncoder.load(model_path).embed(wave), before, atol=1e-6)


def test_bundled_default_model_loads_and_verifies(tmp_path):
    """The package ships a default model with a dev threshold; `verify` without --model uses it."""
    from sslspeaker.inference import default_model_path

    if not default_model_path().is_file():
        pytest.fail(f"the default model is missing from the package: {default_model_path()}")
    enc = SpeakerEncoder.load(default_model_path())
    assert enc.threshold is not None and enc.threshold_source
    if enc.calibrated:  # a pipeline-built default: calibrated scores, decided at its stated prior
        assert enc.prior is not None and enc.threshold_source == f"Bayes, p_target {enc.prior:g}"
    t = np.arange(32000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    v = enc.embed(wave)
    assert v.shape == (enc.embed_dim,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    score, same = enc.verify(wave, wave)
    assert same and score > enc.threshold


# ---- the model file's back-end and calibration ------------------------------------------------------
def fitted_backend(dim: int, preset: str = "plda", calibrate: bool = True, seed: int = 0):
    """A chain fitted on synthetic Gaussian speakers of ``dim`` dimensions, calibrated on their trials."""
    from sslspeaker.backends import BackendChain

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim))
    labels = np.repeat(np.arange(12), 6)
    x = centres[labels] + 0.5 * rng.standard_normal((len(labels), dim))
    chain = BackendChain.build(preset).fit(x, labels)
    if calibrate:
        i, j = np.triu_indices(len(labels), k=1)
        chain.calibrate(x[i], x[j], (labels[i] == labels[j]).astype(int), prior=0.05)
    return chain


OLD_MODEL = OLD / "model.safetensors"  # 16-d embeddings


def test_export_stores_a_calibrated_backend_and_the_bayes_threshold(tmp_path, wave):
    from safetensors.torch import load_file

    chain = fitted_backend(16)
    path = export_model(OLD / "run", tmp_path / "m.safetensors", backend=chain, prior=0.05)
    tensors, meta = read_model_file(path)
    assert meta["format_version"] == 2 and meta["backend"] == chain.to_state()[0] and meta["prior"] == 0.05
    stored = {k[len("backend."):]: v for k, v in load_file(str(path)).items() if k.startswith("backend.")}
    assert set(stored) == set(chain.to_state()[1]) and set(tensors) - {f"backend.{k}" for k in stored} == \
        set(read_model_file(OLD_MODEL)[0])
    model = SpeakerEncoder.load(path)
    assert model.backend.name == "whiten+lengthnorm+plda" and model.calibrated and model.prior == 0.05
    assert model.threshold == pytest.approx(np.log(0.95 / 0.05), abs=1e-12)
    assert model.threshold_source == "Bayes, p_target 0.05"
    other = wave[::-1].copy()
    ea, eb = model.embed(wave), model.embed(other)
    llr = float(chain.score_pairs(ea[None], eb[None])[0])
    assert model.score_embeddings(ea, eb) == pytest.approx(llr, rel=1e-12)
    assert model.score(wave, other) == pytest.approx(llr, rel=1e-9)
    assert model.verify(wave, other) == (pytest.approx(llr, rel=1e-9), llr >= np.log(19))
    assert model.decision_threshold(prior=0.01) == (pytest.approx(np.log(99)), "Bayes, p_target 0.01")
    np.testing.assert_allclose(model.score_embeddings(np.stack([ea, eb]), np.stack([eb, eb])),
                               chain.score_pairs(np.stack([ea, eb]), np.stack([eb, eb])), rtol=1e-12)
    # the embeddings do not depend on the back-end
    assert model.fingerprint == SpeakerEncoder.load(OLD_MODEL).fingerprint


def test_export_backend_defaults_and_refusals(tmp_path, wave):
    from sslspeaker.inference.model_file import DEFAULT_PRIOR

    calibrated = export_model(OLD / "run", tmp_path / "c.safetensors", backend=fitted_backend(16))
    m = SpeakerEncoder.load(calibrated)
    assert m.prior == DEFAULT_PRIOR == 0.01 and m.threshold == pytest.approx(np.log(99))
    plain = fitted_backend(16, "lda", calibrate=False)
    m = SpeakerEncoder.load(export_model(OLD / "run", tmp_path / "u.safetensors", backend=plain, threshold=0.3))
    assert not m.calibrated and m.prior is None and m.threshold == 0.3 and m.backend.name == "lda"
    ea, eb = (v / np.linalg.norm(v) for v in np.random.default_rng(5).standard_normal((2, 16)))
    assert m.score_embeddings(ea, eb) == pytest.approx(float(plain.score_pairs(ea[None], eb[None])[0]), rel=1e-12)
    assert abs(m.score_embeddings(ea, eb) - float(ea @ eb)) > 0.05  # LDA, not cosine
    with pytest.raises(ValueError, match="a prior needs a calibrated model"):
        m.decision_threshold(prior=0.01)
    with pytest.raises(ValueError, match="prior needs a calibrated back-end"):
        export_model(OLD / "run", tmp_path / "x.safetensors", backend=plain, prior=0.01)
    with pytest.raises(ValueError, match="threshold or a prior, not both"):
        export_model(OLD / "run", tmp_path / "x.safetensors", backend=fitted_backend(16), prior=0.01, threshold=1.0)
    with pytest.raises(ModelError, match=r"'backend.input_dim' is 8 but the encoder gives 16"):
        export_model(OLD / "run", tmp_path / "x.safetensors", backend=fitted_backend(8))
    assert not (tmp_path / "x.safetensors").exists()
    for old in (OLD_MODEL, OLD / "run"):
        assert SpeakerEncoder.load(old).backend is None


def test_a_damaged_backend_in_a_model_file_is_a_model_error_naming_the_field(tmp_path):
    from safetensors.torch import save_file

    good = export_model(OLD / "run", tmp_path / "m.safetensors", backend=fitted_backend(16))
    tensors, meta = read_model_file(good)

    def write(name, t, m):
        save_file(t, str(tmp_path / name), metadata={"sslspeaker": json.dumps(m)})
        return tmp_path / name

    missing = {k: v for k, v in tensors.items() if k != "backend.2.plda.mean"}
    with pytest.raises(ModelError, match=r"missing.safetensors: metadata field 'backend': .*'mean' is missing"):
        SpeakerEncoder.load(write("missing.safetensors", missing, meta))
    nan = dict(tensors, **{"backend.0.whiten.mean": torch.full((16,), float("nan"), dtype=torch.float64)})
    with pytest.raises(ModelError, match=r"nan.safetensors: metadata field 'backend': .*holds NaN or inf"):
        SpeakerEncoder.load(write("nan.safetensors", nan, meta))
    no_config = {k: v for k, v in meta.items() if k not in ("backend", "prior")}
    with pytest.raises(ModelError, match=r"orphans.safetensors: tensors .* under 'backend.' but no metadata"):
        SpeakerEncoder.load(write("orphans.safetensors", tensors, no_config))
    bad_prior = dict(meta, prior=1.5)
    with pytest.raises(ModelError, match=r"prior.safetensors: metadata field 'prior' must be a number in \(0, 1\)"):
        SpeakerEncoder.load(write("prior.safetensors", tensors, bad_prior))


def test_cli_verify_with_a_calibrated_model_prints_the_llr(tmp_path, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(a, seconds=1.5, freq=200.0)
    write_audio(b, seconds=1.5, freq=330.0)
    path = export_model(OLD / "run", tmp_path / "m.safetensors", backend=fitted_backend(16))
    llr = SpeakerEncoder.load(path).score(a, b)
    decision = lambda t: "same speaker" if llr >= t else "different speakers"  # noqa: E731
    assert main(["verify", "--model", str(path), str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip() == f"llr {llr:.2f}  threshold 4.60 (Bayes, p_target 0.01)  ->  " \
                                              f"{decision(np.log(99))}"
    assert main(["verify", "--model", str(path), str(a), str(b), "--prior", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == f"llr {llr:.2f}  threshold 0.00 (Bayes, p_target 0.5)  ->  {decision(0)}"
    assert main(["verify", "--model", str(path), str(a), str(b), "--threshold", str(llr - 0.01)]) == 0
    assert capsys.readouterr().out.strip().endswith("(--threshold)  ->  same speaker")
    assert main(["verify", "--model", str(path), str(a), str(b), "--prior", "0.2", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["llr"] == pytest.approx(llr) and rec["prior"] == 0.2 and rec["threshold"] == pytest.approx(np.log(4))
    assert rec["same_speaker"] is bool(llr >= np.log(4)) and rec["backend"] == "whiten+lengthnorm+plda"
    for bad, message in ((["--prior", "1.5"], "--prior must be a probability in (0, 1), got 1.5"),
                         (["--prior", "0.1", "--threshold", "1"], "give --threshold or --prior, not both")):
        assert main(["verify", "--model", str(path), str(a), str(b), *bad]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"
    assert main(["verify", "--model", str(OLD_MODEL), str(a), str(b), "--prior", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --prior: ") and "not log-likelihood ratios" in err
