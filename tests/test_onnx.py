"""ONNX export: every encoder, waveform in (conv1d-DFT front end) or features in, dynamic batch
and time, parity with PyTorch."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from sslspeaker.data.synth import make_voice, synthesize  # noqa: E402
from sslspeaker.features.mel import LogMel  # noqa: E402
from sslspeaker.inference.model import SpeakerEncoder  # noqa: E402
from sslspeaker.inference.model_file import FORMAT, pinned_options, save_model  # noqa: E402
from sslspeaker.inference.onnx_export import DFTLogMel, export_onnx  # noqa: E402
from sslspeaker.models import build_encoder  # noqa: E402

ENCODERS = {"fast_resnet34": 40, "resnet34": 80, "ecapa_tdnn": 80, "tdnn": 80}
LENGTHS = (1.37, 4.2)  # seconds: two different time lengths through one graph


def speech(seconds, n=2):
    return np.stack([synthesize(make_voice(3, i), seconds, seed=i) for i in range(n)]).astype(np.float32)


def encoder(name, n_mels):
    """Default-size encoder with non-trivial BN statistics (as after training)."""
    torch.manual_seed(0)
    enc = build_encoder(name, n_mels=n_mels)
    g = torch.Generator().manual_seed(1)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return enc.eval()


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def write_model(path, name, enc, n_mels):
    meta = {"format": FORMAT, "format_version": 1,
            "encoder": {"name": name, "options": pinned_options(name, {})},
            "features": {"type": "logmel", "sample_rate": 16000, "n_mels": n_mels, "norm": "instance",
                         "preemphasis": 0.97, "n_fft": 512, "win_length": 400, "hop_length": 160,
                         "f_min": 20.0, "f_max": 7600.0},
            "embed_dim": enc.embed_dim, "threshold": 0.5, "threshold_source": "test", "provenance": {}}
    return save_model(path, enc.state_dict(), meta)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_waveform_graph_matches_pytorch(name, tmp_path):
    """Model file -> ONNX; embeddings equal SpeakerEncoder.embed_waves to 1e-4 at two lengths."""
    n_mels = ENCODERS[name]
    model = SpeakerEncoder.load(write_model(tmp_path / "m.safetensors", name, encoder(name, n_mels), n_mels))
    path = export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["waveform"]
    for seconds in LENGTHS:
        x = speech(seconds)
        out = sess.run(None, {"waveform": x})[0]
        ref = model.embed_waves(x)
        assert out.shape == (2, model.embed_dim)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["sslspeaker"])
    assert meta["encoder"]["name"] == name and meta["threshold"] == 0.5 and meta["input"] == "waveform"


@pytest.mark.parametrize("name", list(ENCODERS))
def test_feature_graph_matches_pytorch(name, tmp_path):
    n_mels = ENCODERS[name]
    enc = encoder(name, n_mels)
    sess = session(export_onnx(enc, tmp_path / "f.onnx", include_features=False))
    for frames, batch in ((50, 1), (333, 3)):
        x = torch.randn(batch, n_mels, frames, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            ref = F.normalize(enc(x), dim=-1).numpy()
        np.testing.assert_allclose(sess.run(None, {"features": x.numpy()})[0], ref, atol=1e-4, rtol=0)


def test_export_leaves_the_encoder_alone(tmp_path):
    enc = build_encoder("tdnn", channels=32, stats_channels=48).train()
    export_onnx(enc, tmp_path / "t.onnx", features=LogMel(n_mels=80, norm="instance"))
    assert enc.training


@pytest.mark.parametrize("norm", ["instance", "mean", "global", "none"])
def test_dft_front_end_matches_logmel(norm):
    """The conv1d-DFT STFT reproduces LogMel; 1e-4 is about LogMel's own float32 rounding."""
    lm = LogMel(n_mels=80, norm=norm)
    x = torch.from_numpy(speech(2.3, n=1))
    ref, out = lm(x), DFTLogMel(lm)(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
