"""Issue 21, items 6-9: Kaldi/WeSpeaker conventions (wav.scp, xvector.ark/.scp, Kaldi trials, per-trial
scores), enrolment (API, verify, evaluate's spk2utt lists), export of any model file, ONNX with the
current exporter and the torch-free onnxruntime encoder, embed's inputs and progress bar."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_audio
from sslspeaker.cli import main
from sslspeaker.data.manifest import read_enrolment, read_scp, read_trials
from sslspeaker.evaluation.enrolment import enrolment_vector
from sslspeaker.inference import SpeakerEncoder
from sslspeaker.inference.model_file import FORMAT, default_model_path, pinned_options, read_model_file, save_model

ONNX_ATOL = 1e-5


def tiny_model(path: Path, threshold: float | None = 0.25) -> Path:
    """A model file of the tests' tiny encoder (6 mels, 8-d embeddings) with non-trivial BN statistics."""
    from sslspeaker.models import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("tiny_test")
    enc.bn.running_mean.uniform_(-0.1, 0.1)
    enc.bn.running_var.uniform_(0.5, 1.5)
    meta = {"format": FORMAT, "format_version": 1,
            "encoder": {"name": "tiny_test", "options": pinned_options("tiny_test", {})},
            "features": {"type": "logmel", "sample_rate": 16000, "n_mels": 6, "norm": "instance",
                         "preemphasis": 0.97, "n_fft": 512, "win_length": 400, "hop_length": 160,
                         "f_min": 20.0, "f_max": 7600.0},
            "embed_dim": 8, "threshold": threshold, "threshold_source": "test" if threshold is not None else None,
            "provenance": {}}
    return save_model(path, enc.eval().state_dict(), meta)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.fixture
def voices(tmp_path):
    """Six files: speakers s1, s2, s3 with two utterances each (tones of a speaker-specific pitch)."""
    files = {}
    for k, (spk, f) in enumerate([("s1", 180.0), ("s1", 190.0), ("s2", 400.0), ("s2", 410.0), ("s3", 900.0),
                                  ("s3", 880.0)]):
        path = tmp_path / "wav" / spk / f"u{k}.wav"
        write_audio(path, seconds=1.0 + 0.1 * k, freq=f)
        files[f"{spk}_u{k}"] = path
    return files


def write_scp(path: Path, files: dict) -> Path:
    path.write_text("".join(f"{k} {p}\n" for k, p in files.items()))
    return path


# ---- item 6: Kaldi conventions ---------------------------------------------------------------------
def test_trial_lists_in_both_formats(tmp_path):
    p = tmp_path / "trials"
    p.write_text("1 a.wav b.wav\nx y nontarget\n\nu v target\n0 c d\n")
    assert [(t.label, t.a, t.b) for t in read_trials(p)] == [(1, "a.wav", "b.wav"), (0, "x", "y"), (1, "u", "v"),
                                                              (0, "c", "d")]
    p.write_text("u v target\nu v maybe\n")
    with pytest.raises(ValueError, match=r"trials:2: expected .*'A B target\|nontarget', got 'u v maybe'"):
        read_trials(p)


def test_scp_and_enrolment_lists(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("u1 /abs/a.wav\nu2 rel/b.flac\n")
    assert read_scp(scp) == {"u1": "/abs/a.wav", "u2": str(Path.cwd() / "rel" / "b.flac")}
    for text, message in (("u1 a.wav\nu1 b.wav\n", "wav.scp:2: utterance id 'u1' given twice"),
                          ("u1 sox a.sph -t wav - |\n", "wav.scp:1: a command pipe"),
                          ("u1\n", "wav.scp:1: expected 'ID PATH'"), ("\n", "an empty scp list")):
        scp.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_scp(scp)
    enr = tmp_path / "spk2utt"
    enr.write_text("spkA u1 u2 u3\nspkB u4\n")
    assert read_enrolment(enr) == {"spkA": ["u1", "u2", "u3"], "spkB": ["u4"]}
    enr.write_text("spkA\n")
    with pytest.raises(ValueError, match="spk2utt:1: expected 'MODEL UTT1"):
        read_enrolment(enr)


def test_embed_scp_to_kaldi_ark(tiny, voices, tmp_path, capsys):
    kaldiio = pytest.importorskip("kaldiio")
    scp = write_scp(tmp_path / "wav.scp", voices)
    out = tmp_path / "xv"
    assert main(["embed", "--model", str(tiny), "--scp", str(scp), "--format", "kaldi", "--out", str(out),
                 "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["xvector.ark", "xvector.scp"]
    assert "embedding" not in capsys.readouterr().err  # --quiet: no progress bar
    table = kaldiio.load_scp(str(out / "xvector.scp"))
    assert list(table.keys()) == list(voices)
    assert all(line.split()[1].startswith(str(out / "xvector.ark") + ":")
               for line in (out / "xvector.scp").read_text().splitlines())
    model = SpeakerEncoder.load(tiny)
    for key, path in voices.items():
        np.testing.assert_allclose(table[key], model.embed(path), atol=1e-6)
        assert table[key].dtype == np.float32 and table[key].shape == (8,)


def test_embed_folders_and_list_files(tiny, voices, tmp_path, capsys):
    files = list(voices.values())
    lst = tmp_path / "list.txt"
    lst.write_text(f"{files[0].relative_to(tmp_path)}\n{files[1]}\n")  # relative to the list's folder, absolute
    out = tmp_path / "z"
    assert main(["embed", "--model", str(tiny), str(tmp_path / "wav" / "s3"), str(lst), "--out", str(out),
                 "--format", "npz"]) == 0
    assert "embedding" in capsys.readouterr().err  # several files: a progress bar on stderr
    z = np.load(out / "embeddings.npz")
    assert list(z["paths"]) == [str(files[4]), str(files[5]), str(tmp_path / files[0].relative_to(tmp_path)),
                                str(files[1])]
    np.testing.assert_allclose(z["embeddings"][0], SpeakerEncoder.load(tiny).embed(files[4]), atol=1e-6)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["embed", "--model", str(tiny), str(empty), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {empty}: a folder without audio files " \
                                              "(.wav, .flac, .ogg, .opus, .mp3, .aiff, .aif)"
    assert main(["embed", "--model", str(tiny), "--out", str(out)]) == 2
    assert "error: no inputs" in capsys.readouterr().err


def _cosines(model, pairs):
    return np.array([float(model.embed(a) @ model.embed(b)) for a, b in pairs])


def test_evaluate_kaldi_trials_by_id_with_per_trial_scores(tiny, voices, tmp_path, capsys):
    scp = write_scp(tmp_path / "wav.scp", voices)
    pairs = [("s1_u0", "s1_u1", "target"), ("s1_u0", "s2_u2", "nontarget"), ("s2_u2", "s2_u3", "target"),
             ("s3_u4", "s2_u3", "nontarget"), ("s3_u4", "s3_u5", "target")]
    trials = tmp_path / "trials"
    trials.write_text("".join(f"{a} {b} {lab}\n" for a, b, lab in pairs))
    scores = tmp_path / "scores.txt"
    argv = ["evaluate", "--model", str(tiny), "--trials", str(trials), "--scp", str(scp), "--scores", str(scores),
            "--out", str(tmp_path / "r.json"), "--no-cache", "--quiet"]
    assert main(argv) == 0
    assert f"per-trial scores: {scores}" in capsys.readouterr().out
    lines = [line.split() for line in scores.read_text().splitlines()]
    assert [(a, b, lab) for a, b, _, lab in lines] == pairs
    expected = _cosines(SpeakerEncoder.load(tiny), [(voices[a], voices[b]) for a, b, _ in pairs])
    np.testing.assert_allclose([float(s) for _, _, s, _ in lines], expected, atol=2e-6)
    by_id = json.loads((tmp_path / "r.json").read_text())
    # the same trials by path, in VoxCeleb's format: the same scores and EER
    vox = tmp_path / "vox.txt"
    vox.write_text("".join(f"{int(lab == 'target')} {voices[a]} {voices[b]}\n" for a, b, lab in pairs))
    assert main(["evaluate", "--model", str(tiny), "--trials", str(vox), "--out", str(tmp_path / "v.json"),
                 "--no-cache", "--quiet"]) == 0
    by_path = json.loads((tmp_path / "v.json").read_text())
    assert by_path["eer"] == by_id["eer"] and by_path["scores"] == pytest.approx(by_id["scores"], abs=1e-9)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tiny), "--trials", str(trials), "--scp", str(tmp_path / "missing.scp"),
                 "--no-cache", "--quiet", "--out", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.scp'}: no such scp list"
    argv[argv.index("--scores") + 1] = str(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"error: --scores {tmp_path}: is a folder; give the file to write "
                                               f"(e.g. {tmp_path / 'scores.txt'})")


def test_evaluate_enrolment_list(tiny, voices, tmp_path):
    from sslspeaker.evaluation.evaluate import evaluate

    scp = write_scp(tmp_path / "wav.scp", voices)
    enrol = tmp_path / "spk2utt"
    enrol.write_text("A s1_u0 s1_u1\nB s2_u2 s2_u3\n")
    trials = tmp_path / "trials"
    trials.write_text("A s3_u4 nontarget\nB s3_u5 nontarget\nA " + str(voices["s1_u1"]) + " target\n")
    res = evaluate(str(tiny), trials, scp=scp, enrolment=enrol, scores_file=tmp_path / "s.txt", cache=False,
                   progress=False)
    model = SpeakerEncoder.load(tiny)
    a, b = model.enroll([voices["s1_u0"], voices["s1_u1"]]), model.enroll([voices["s2_u2"], voices["s2_u3"]])
    expected = [a @ model.embed(voices["s3_u4"]), b @ model.embed(voices["s3_u5"]), a @ model.embed(voices["s1_u1"])]
    got = [float(line.split()[2]) for line in (tmp_path / "s.txt").read_text().splitlines()]
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert res["n_trials"] == 3 and res["trials"]["utterances"] == 6
    assert (tmp_path / "s.txt").read_text().splitlines()[0].split()[:2] == ["A", "s3_u4"]


# ---- item 7: enrolment ---------------------------------------------------------------------------
def test_enrolment_vector_is_the_normalised_mean():
    e = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    m = enrolment_vector(e)
    np.testing.assert_allclose(m, e.sum(0) / np.linalg.norm(e.sum(0)), atol=1e-7)
    assert m.dtype == np.float32
    with pytest.raises(ValueError, match="sum to zero"):
        enrolment_vector([[1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(ValueError, match="at least one"):
        enrolment_vector(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="NaN or inf"):
        enrolment_vector([[np.nan, 1.0]])


def test_enroll_api_and_verify_cli(tiny, voices, capsys):
    model = SpeakerEncoder.load(tiny)
    files = [voices["s1_u0"], voices["s1_u1"]]
    e = np.stack([model.embed(f) for f in files])
    np.testing.assert_allclose(model.enroll(files), e.sum(0) / np.linalg.norm(e.sum(0)), atol=1e-6)
    test = voices["s2_u2"]
    expected = model.score_embeddings(model.enroll(files), model.embed(test))
    assert main(["verify", "--model", str(tiny), "--enroll", *map(str, files), "--test", str(test), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["score"] == pytest.approx(expected, abs=1e-6) and rec["enroll"] == [str(f) for f in files]
    assert rec["same_speaker"] == (expected >= 0.25) and rec["threshold"] == 0.25
    for argv in (["--enroll", str(files[0])], [str(files[0])], [str(files[0]), "--enroll", str(files[1]), "--test",
                                                                  str(test)]):
        assert main(["verify", "--model", str(tiny), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: give two recordings A B")
    with pytest.raises(ValueError, match="one or more"):
        model.enroll(str(files[0]))


# ---- item 8: export any model file; ONNX -----------------------------------------------------------
def test_export_a_model_file_keeps_or_replaces_its_threshold(tiny, tmp_path, capsys):
    out = tmp_path / "copy.safetensors"
    assert main(["export", str(tiny), "--out", str(out)]) == 0
    assert "(threshold 0.2500)" in capsys.readouterr().out
    tensors, meta = read_model_file(out)
    orig_tensors, orig = read_model_file(tiny)
    assert meta["threshold"] == 0.25 and meta["threshold_source"] == "test" and meta["encoder"] == orig["encoder"]
    assert all(torch.equal(tensors[k], orig_tensors[k]) for k in orig_tensors) and set(tensors) == set(orig_tensors)
    assert main(["export", str(tiny), "--out", str(out), "--threshold", "0.5"]) == 0
    assert read_model_file(out)[1]["threshold"] == 0.5
    assert main(["export", str(tiny)]) == 2
    assert capsys.readouterr().err.strip() == "error: give --out MODEL.safetensors, --onnx MODEL.onnx or both"


def model_with_backend(tiny: Path, tmp_path: Path) -> Path:
    """The tiny model with a PLDA chain, exported, then re-exported from that model file (which keeps it)."""
    from sslspeaker.backends import BackendChain
    from sslspeaker.training.export import export_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8))
    labels = np.repeat(np.arange(8), 5)
    chain = BackendChain.build("plda").fit(x + 2 * rng.standard_normal((8, 8))[labels], labels)
    with_backend = export_model(tiny, tmp_path / "b.safetensors", backend=chain)
    again = export_model(with_backend, tmp_path / "c.safetensors")
    a, b = rng.standard_normal((5, 8)), rng.standard_normal((5, 8))
    np.testing.assert_allclose(SpeakerEncoder.load(again).score_embeddings(a, b), chain.score_pairs(a, b), atol=1e-9)
    return again


def test_export_keeps_a_model_files_backend(tiny, tmp_path):
    assert read_model_file(model_with_backend(tiny, tmp_path))[1]["backend"]["stages"][-1]["name"] == "plda"


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if not default_model_path().is_file():
        pytest.skip("no packaged default model")
    path = tmp_path_factory.mktemp("onnx") / "default.onnx"
    assert main(["export", str(default_model_path()), "--onnx", str(path)]) == 0
    return path


def speech(seconds: float, n: int = 2) -> np.ndarray:
    from sslspeaker.data.synth import make_voice, synthesize

    return np.stack([synthesize(make_voice(3, i), seconds, seed=i) for i in range(n)]).astype(np.float32)


def test_default_model_exports_to_onnx_with_named_axes(default_onnx):
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(default_onnx)).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (graph.input[0], graph.output[0])]
    assert (graph.input[0].name, graph.output[0].name) == ("waveform", "embedding")
    assert dims == [["batch", "samples"], ["batch", 256]]
    meta = json.loads({p.key: p.value for p in onnx.load(str(default_onnx)).metadata_props}["sslspeaker"])
    assert meta["exporter"].startswith("torch.export") and meta["threshold"] == read_model_file(
        default_model_path())[1]["threshold"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(default_onnx), so, providers=["CPUExecutionProvider"])
    torch_model = SpeakerEncoder.load(None)
    for seconds, n in ((1.37, 1), (3.05, 3)):  # a dynamic batch and time axis through one graph
        x = speech(seconds, n)
        np.testing.assert_allclose(sess.run(None, {"waveform": x})[0], torch_model.embed_waves(x), atol=ONNX_ATOL,
                                   rtol=0)


def test_onnx_encoder_has_the_same_api(default_onnx, voices):
    from sslspeaker.evaluation.evaluate import evaluate
    from sslspeaker.inference.onnx_model import OnnxSpeakerEncoder

    onnx_model, torch_model = SpeakerEncoder.load(default_onnx), SpeakerEncoder.load(None)
    assert isinstance(onnx_model, OnnxSpeakerEncoder) and onnx_model.embed_dim == 256
    assert onnx_model.threshold == torch_model.threshold and onnx_model.threshold_source == torch_model.threshold_source
    a, b = voices["s1_u0"], voices["s2_u2"]
    np.testing.assert_allclose(onnx_model.embed(a), torch_model.embed(a), atol=ONNX_ATOL)
    s_onnx, same_onnx = onnx_model.verify(a, b)
    s_torch, same_torch = torch_model.verify(a, b)
    assert s_onnx == pytest.approx(s_torch, abs=ONNX_ATOL) and same_onnx == same_torch
    np.testing.assert_allclose(onnx_model.enroll([a, b]), torch_model.enroll([a, b]), atol=ONNX_ATOL)
    with pytest.raises(ValueError, match="audio too short"):
        onnx_model.embed(np.ones(100, np.float32))
    trials = Path(a).parent.parent / "t.txt"
    trials.write_text(f"1 {a} {voices['s1_u1']}\n0 {a} {b}\n")
    r_onnx = evaluate(onnx_model, trials, cache=False, progress=False)
    r_torch = evaluate(torch_model, trials, cache=False, progress=False)
    assert r_onnx["eer"] == r_torch["eer"] and r_onnx["model"]["fingerprint"].startswith("onnx-")


def test_onnx_encoder_imports_no_torch(default_onnx, voices, tmp_path):
    ref = SpeakerEncoder.load(None).embed(voices["s1_u0"])
    np.save(tmp_path / "ref.npy", ref)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from sslspeaker.inference.onnx_model import OnnxSpeakerEncoder
        m = OnnxSpeakerEncoder.load({str(default_onnx)!r}, threads=1)
        e = m.embed({str(voices["s1_u0"])!r})
        assert np.abs(e - np.load({str(tmp_path / "ref.npy")!r})).max() < {ONNX_ATOL}
        score, same = m.verify({str(voices["s1_u0"])!r}, {str(voices["s1_u1"])!r})
        assert [k for k in sys.modules if k == "torch" or k.startswith("torch.")] == ["torch"]
        print("ok", m.threshold, round(score, 4))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"ok {SpeakerEncoder.load(None).threshold}")


def test_onnx_carries_the_backend(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    from sslspeaker.inference.onnx_export import export_onnx

    with_backend = model_with_backend(tiny, tmp_path)
    onnx_model = SpeakerEncoder.load(export_onnx(with_backend, tmp_path / "b.onnx"))
    torch_model = SpeakerEncoder.load(with_backend)
    assert onnx_model.backend.name == torch_model.backend.name == "whiten+lengthnorm+plda"
    a, b = np.random.default_rng(1).standard_normal((2, 4, 8))
    np.testing.assert_allclose(onnx_model.score_embeddings(a, b), torch_model.score_embeddings(a, b), atol=1e-9)


def test_onnx_file_errors(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    assert main(["verify", "--model", str(bad), "a.wav", "b.wav"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not a readable ONNX model")


def test_legacy_exporter_without_onnxscript_shows_its_warning(tiny, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    import warnings

    from sslspeaker.inference import onnx_export

    monkeypatch.setattr(onnx_export, "_dynamo_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:  # the default filters, which hide DeprecationWarning
        path = onnx_export.export_onnx(tiny, tmp_path / "legacy.onnx")
    assert any(issubclass(w.category, DeprecationWarning) and "legacy TorchScript" in str(w.message)
               for w in caught)  # torch's warning is shown, not hidden
    model = SpeakerEncoder.load(path)
    assert model.metadata["exporter"].startswith("TorchScript")
    x = speech(1.2, 3)
    np.testing.assert_allclose(model.embed_waves(x), SpeakerEncoder.load(tiny).embed_waves(x), atol=ONNX_ATOL)
    assert ort.InferenceSession(str(path)).get_outputs()[0].name == "embedding"
