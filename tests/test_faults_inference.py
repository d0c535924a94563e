"""Faults on the inference side (issue #18 items 8, 9, 11, 12): crafted model files, audio without speech or
with NaN/inf samples, bad devices and paths; each ends in one line naming the file or option and exit code 2."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_audio
from sslspeaker.cli import main
from sslspeaker.data.audio import AudioError
from sslspeaker.inference import ModelError, SpeakerEncoder, read_model_file
from sslspeaker.inference import model_file as mf
from sslspeaker.runs import load_checkpoint, run_checkpoint
from sslspeaker.training.export import export_model

OLD = Path(__file__).parent / "data" / "old_format"  # a tiny fast_resnet34 (16-d) model file and its run folder


def write_model(path: Path, meta, tensors=None) -> Path:
    """A safetensors file with ``meta`` (any JSON, or raw text) as its sslspeaker metadata, bypassing every check."""
    from safetensors.torch import save_file

    if tensors is None:
        tensors = read_model_file(OLD / "model.safetensors")[0]
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"sslspeaker": raw})
    return path


def old_meta() -> dict:
    return read_model_file(OLD / "model.safetensors")[1]


def edited(**changes) -> dict:
    """The old model's metadata with dotted keys set (``features__hop_length=0`` sets features.hop_length)."""
    meta = old_meta()
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    return meta


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


# ---- item 9: metadata checked against the schema before anything is built ------------------------
CRAFTED = [
    ("nested", "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("a_list", [1, 2, 3], "a JSON list, not an object"),
    ("encoder_string", edited(encoder="fast_resnet34"), "'encoder' must be a JSON object"),
    ("encoder_unknown", edited(encoder__name="vgg"), "'encoder.name' must be one of"),
    ("n_mels_text", edited(features__n_mels="forty"), "'features.n_mels' must be an integer"),
    ("hop_zero", edited(features__hop_length=0), "'features.hop_length' must be an integer in [1, 512]"),
    ("n_fft_huge", edited(features__n_fft=1e9), "'features.n_fft' must be an integer in [16, 16384]"),
    ("embed_dim_option_huge", edited(encoder__options__embed_dim=4e9), "'encoder.options.embed_dim' must be an integer"),
    ("embed_dim_option_int", edited(encoder__options__embed_dim=4_000_000_000), "'encoder.options.embed_dim'"),
    ("embed_dim_huge", edited(embed_dim=4e9), "'embed_dim' must be an integer in [1, 65536]"),
    ("option_unknown", edited(encoder__options__width=3), "'encoder.options.width' is not an option"),
    ("threshold_nan", edited(threshold=float("nan")), "'threshold' must be a finite number"),
    ("threshold_inf", edited(threshold=float("inf")), "'threshold' must be a finite number"),
    ("f_order", edited(features__f_min=5000.0, features__f_max=100.0), "'features.f_max'"),
    ("version_text", edited(format_version="1"), "'format_version' must be a positive integer"),
]


@pytest.mark.parametrize("name,meta,message", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_metadata_is_one_model_error_naming_file_and_field(tmp_path, monkeypatch, name, meta, message):
    built = []
    monkeypatch.setattr(mf, "build_encoder", lambda *a, **k: built.append(a) or pytest.fail("built an encoder"))
    path = write_model(tmp_path / f"{name}.safetensors", meta)
    with pytest.raises(ModelError) as info:
        SpeakerEncoder.load(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert built == []


def test_weights_that_disagree_with_the_metadata_are_refused_before_allocating(tmp_path, monkeypatch):
    devices = []
    real = mf.build_encoder
    monkeypatch.setattr(mf, "build_encoder",
                        lambda *a, **k: devices.append(torch.get_default_device().type) or real(*a, **k))
    # options say 32-d embeddings, the weights are 16-d: found on the meta device, nothing allocated
    path = write_model(tmp_path / "lies.safetensors", edited(encoder__options__embed_dim=32, embed_dim=32))
    with pytest.raises(ModelError, match=r"lies.safetensors: the weights do not fit the metadata field 'encoder'.*"
                                         r"fc.weight \(16, 8\) vs \(32, 8\)"):
        SpeakerEncoder.load(path)
    assert devices == ["meta"]
    # the top-level embed_dim lies about the weights (the CSV header of 1,000 columns)
    path = write_model(tmp_path / "dim.safetensors", edited(embed_dim=1000))
    with pytest.raises(ModelError, match=r"dim.safetensors: metadata field 'embed_dim' is 1000 but the encoder's "
                                         r"weights give 16-dimensional"):
        SpeakerEncoder.load(path)
    assert main(["embed", "--model", str(path), str(tmp_path / "x.wav"), "--out", str(tmp_path / "o")]) == 2


# ---- item 8: weights, thresholds, audio --------------------------------------------------------
def test_non_finite_weights_are_refused_at_load_and_at_export(tmp_path):
    tensors, meta = read_model_file(OLD / "model.safetensors")
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    path = write_model(tmp_path / "nan.safetensors", meta, tensors)
    with pytest.raises(ModelError, match=rf"nan.safetensors: 1 weight tensor\(s\) hold NaN or inf \({name}\)"):
        SpeakerEncoder.load(path)
    ckpt = load_checkpoint(run_checkpoint(OLD / "run"))
    key = next(k for k in ckpt["method"] if k.startswith("encoder.") and ckpt["method"][k].is_floating_point())
    ckpt["method"][key] = torch.full_like(ckpt["method"][key], float("inf"))
    run = tmp_path / "run"
    run_checkpoint(run).parent.mkdir(parents=True)
    torch.save(ckpt, run_checkpoint(run))
    out = tmp_path / "m.safetensors"
    with pytest.raises(ModelError, match=rf"hold NaN or inf \({key[len('encoder.'):]}"):
        export_model(run, out)
    assert not out.exists() and list(tmp_path.glob("m.safetensors*")) == []


@pytest.fixture
def voices(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(a, seconds=1.0, freq=200.0)
    write_audio(b, seconds=1.0, freq=300.0)
    silent, quiet, nan = tmp_path / "silent.wav", tmp_path / "quiet.wav", tmp_path / "nan.wav"
    sf.write(str(silent), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    sf.write(str(quiet), (2e-5 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000,
             subtype="FLOAT")
    x = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    x[100:110] = np.nan
    x[200] = np.inf
    sf.write(str(nan), x, 16000, subtype="FLOAT")
    return {"a": a, "b": b, "silent": silent, "quiet": quiet, "nan": nan}


@pytest.mark.parametrize("kind,reason", [("silent", "no speech (silent: peak 0.0e+00 < 1e-04)"),
                                         ("quiet", "no speech (silent: peak"),
                                         ("nan", "non-finite samples (11 NaN/inf values")])
def test_audio_without_speech_or_with_nan_is_refused_naming_the_file(voices, capsys, kind, reason):
    model = SpeakerEncoder.load(OLD / "model.safetensors")
    bad = voices[kind]
    with pytest.raises(AudioError, match=re.escape(reason)) as info:
        model.embed(bad)
    assert str(info.value).startswith(f"{bad}: ")
    assert main(["verify", "--model", str(OLD / "model.safetensors"), str(bad), str(bad)]) == 2
    line = one_error_line(capsys)
    assert line == f"error: {bad}: {str(info.value)[len(str(bad)) + 2:]}" and "same speaker" not in line
    assert capsys.readouterr().out == ""
    out = voices["a"].parent / f"emb_{kind}"
    assert main(["embed", "--model", str(OLD / "model.safetensors"), str(voices["a"]), str(bad), "--out", str(out)]) == 1
    assert f"skipped {bad}: " in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "index.csv"]
    with pytest.raises(AudioError, match="the waveform: no speech"):
        model.embed(np.zeros(16000, np.float32))


def test_scoring_refuses_a_non_finite_embedding_naming_its_file():
    from sslspeaker.data.manifest import Trial
    from sslspeaker.evaluation.scoring import score_trials

    vectors = {"/r/x.wav": np.ones(4) / 2, "/r/y.wav": np.array([0.5, np.nan, 0.5, 0.5])}
    with pytest.raises(ValueError, match=r"^/r/y.wav: its embedding holds NaN or inf"):
        score_trials([Trial(1, "x.wav", "y.wav")], vectors, "/r")
    assert score_trials([Trial(1, "x.wav", "x.wav")], {"/r/x.wav": np.ones(4) / 2}, "/r")[0] == pytest.approx(1.0)


# ---- item 11: one line, exit code 2 ------------------------------------------------------------
def test_bad_devices_are_one_line_naming_the_option(voices, capsys):
    a = str(voices["a"])
    model = str(OLD / "model.safetensors")
    assert main(["verify", "--model", model, a, a, "--device", "foo"]) == 2
    assert one_error_line(capsys) == "error: device 'foo': not a device (expected auto, cpu, cuda or cuda:N)"
    assert main(["embed", "--model", model, a, "--out", str(voices["a"].parent / "e"), "--device", "meta"]) == 2
    assert "device 'meta': not supported" in one_error_line(capsys)
    if not torch.cuda.is_available():
        assert main(["verify", "--model", model, a, a, "--device", "cuda"]) == 2
        assert "device 'cuda': CUDA is not available" in one_error_line(capsys)
    else:
        assert main(["verify", "--model", model, a, a, "--device", f"cuda:{torch.cuda.device_count()}"]) == 2
        assert "CUDA device(s)" in one_error_line(capsys)
    assert main(["verify", "--model", model, a, a, "--device", "cpu"]) == 0


def test_missing_files_unwritable_out_and_non_models(voices, tmp_path, capsys):
    a, model = str(voices["a"]), str(OLD / "model.safetensors")
    assert main(["verify", "--model", model, a, "/nonexistent.wav"]) == 2
    assert one_error_line(capsys) == "error: /nonexistent.wav: no such file"
    assert main(["embed", "--model", model, a, "--out", "/proc/nope"]) == 2
    assert one_error_line(capsys).startswith("error: --out /proc/nope: cannot create the output folder")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt1 {a}\n")
    assert main(["verify", "--model", str(scp), a, a]) == 2
    assert one_error_line(capsys) == f"error: {scp}: not a .pt checkpoint (nor a .safetensors model or a training run folder)"
    assert main(["verify", "--model", str(tmp_path / "none.safetensors"), a, a]) == 2
    assert "none.safetensors: no such model" in one_error_line(capsys)
    assert main(["verify", "--model", model, a, a, "--threshold", "nan"]) == 2
    assert one_error_line(capsys) == "error: --threshold must be a finite number, got nan"


def test_a_refused_pickle_keeps_the_warning_that_loading_it_would_run_code(tmp_path, capsys, voices):
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "method": {}, "payload": math.gcd}, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path}: refused: it holds pickled Python objects") and "math.gcd" in text
    assert "loading it would run code from the file" in text and "\n" not in text
    assert main(["verify", "--model", str(path), str(voices["a"]), str(voices["a"])]) == 2
    assert "would run code" in one_error_line(capsys)


@pytest.fixture
def trial_list(voices, tmp_path):
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav a.wav\n0 a.wav b.wav\n")
    return trials


def test_evaluate_out_a_folder_or_a_manifest_of_missing_files(trial_list, tmp_path, capsys):
    model = str(OLD / "model.safetensors")
    folder = tmp_path / "results"
    folder.mkdir()
    base = ["evaluate", "--model", model, "--trials", str(trial_list), "--audio-root", str(tmp_path), "--no-cache",
            "--quiet"]
    assert main(base + ["--out", str(folder)]) == 2
    assert one_error_line(capsys) == (f"error: --out {folder}: is a folder; give the results file to write "
                                      f"(e.g. {folder / 'results.json'})")
    assert list(folder.iterdir()) == [] and list(tmp_path.glob("*.png")) == []
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,speaker,duration\n" + "".join(f"gone{i}.wav,s{i % 2},1.0\n" for i in range(20)))
    out = tmp_path / "r.json"
    assert main(base + ["--out", str(out), "--backend", "plda", "--backend-data", str(manifest)]) == 2
    assert one_error_line(capsys).startswith(f"error: back-end data {manifest}: 20 of 20 audio files not found: ")
    assert not out.exists() and list(tmp_path.glob("r*.png")) == []
    assert main(base + ["--out", str(out), "--backend", "plda"]) == 2
    assert "--backend plda is fitted on labelled embeddings: give --backend-data MANIFEST" in one_error_line(capsys)
    assert main(base + ["--out", str(out), "--backend-data", str(manifest)]) == 2
    assert "--backend-data goes with --backend" in one_error_line(capsys)


def test_every_encoders_pinned_options_pass_the_schema_and_bad_kinds_fail():
    from sslspeaker.inference.model_file import pinned_options
    from sslspeaker.inference.model_schema import MetadataError, check_encoder
    from sslspeaker.models.registry import list_encoders

    assert set(list_encoders()) >= {"ecapa_tdnn", "fast_resnet34", "resnet34", "tdnn"}
    for name in list_encoders():
        check_encoder({"name": name, "options": pinned_options(name, {})})
    for options, field in (({"channels": [16, "x", 64, 128]}, "encoder.options.channels[1]"),
                           ({"channels": []}, "encoder.options.channels"),
                           ({"input_norm": 1}, "encoder.options.input_norm"),
                           ({"layers": [3, 4, -6, 3]}, "encoder.options.layers[2]"),
                           ({"pooling": 7}, "encoder.options.pooling")):
        with pytest.raises(MetadataError) as info:
            check_encoder({"name": "fast_resnet34", "options": options})
        assert info.value.field == field
