import math

import pytest
import torch

from sslspeaker.features import LogMel, hz_to_mel, mel_filterbank, mel_to_hz

SR = 16000


def direct_filterbank(n_mels, n_fft, sr, f_min, f_max):
    """Independent reference: loops over filters and bins, straight from the HTK mel formula."""
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    lo, hi = mel(f_min), mel(f_max)
    edges = [hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = [[0.0] * n_mels for _ in range(n_fft // 2 + 1)]
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left < f <= centre:
                fb[k][m] = (f - left) / (centre - left)
            elif centre < f < right:
                fb[k][m] = (right - f) / (right - centre)
    return torch.tensor(fb)


def tone(freq, seconds, batch=1):
    t = torch.arange(int(seconds * SR)) / SR
    return torch.sin(2 * math.pi * freq * t).repeat(batch, 1)


@pytest.mark.parametrize("n_mels,n_fft,f_min,f_max", [(40, 512, 20.0, 7600.0), (80, 512, 20.0, 7600.0), (64, 400, 0.0, 8000.0)])
def test_filterbank_matches_direct_formula(n_mels, n_fft, f_min, f_max):
    fb = mel_filterbank(n_mels, n_fft, SR, f_min, f_max)
    assert fb.shape == (n_fft // 2 + 1, n_mels)
    torch.testing.assert_close(fb, direct_filterbank(n_mels, n_fft, SR, f_min, f_max), atol=1e-5, rtol=0)
    assert (fb.sum(0) > 0).all(), "every filter covers at least one FFT bin"


def test_filterbank_slaney_norm_equal_area():
    fb = mel_filterbank(40, 4096, SR, norm="slaney")  # fine bins: the Riemann sum approximates the area
    area = fb.sum(0) * SR / 4096
    torch.testing.assert_close(area, torch.ones(40), atol=0.02, rtol=0)


def test_mel_scale_round_trip():
    f = torch.tensor([0.0, 20.0, 700.0, 1000.0, 7600.0])
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f.double())
    assert abs(float(hz_to_mel(1000.0)) - 1000.0) < 0.1  # HTK scale: 1 kHz ≈ 1000 mel


@pytest.mark.parametrize("n_mels", [40, 80])
def test_tone_peaks_in_its_band(n_mels):
    feats = LogMel(n_mels=n_mels, norm="none")(tone(1000.0, 1.0))
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(20.0)), float(hz_to_mel(7600.0)), n_mels + 2))
    centres = edges[1:-1]
    expected = int(torch.argmin((centres - 1000.0).abs()))
    assert edges[expected] < 1000.0 < edges[expected + 2]
    assert int(feats[0].mean(-1).argmax()) == expected


@pytest.mark.parametrize("n_mels", [40, 80])
def test_output_shape_two_seconds(n_mels):
    m = LogMel(n_mels=n_mels)
    y = m(torch.randn(3, 2 * SR))
    assert y.shape == (3, n_mels, 1 + 2 * SR // 160) == (3, n_mels, 201)
    assert m.num_frames(2 * SR + 159) == 201 and m(torch.randn(1, 2 * SR + 159)).shape[-1] == 201


def test_mean_norm_zero_time_mean():
    y = LogMel(norm="mean")(torch.randn(2, SR) * torch.linspace(0.1, 1, SR))
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 40), atol=1e-4, rtol=0)


def test_instance_norm_unit_variance():
    y = LogMel(norm="instance")(torch.randn(2, SR) * torch.linspace(0.1, 1, SR))
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 40), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.var(-1, correction=0), torch.ones(2, 40), atol=1e-3, rtol=0)


def test_global_norm_keeps_spectral_envelope_and_removes_gain():
    x = torch.randn(1, SR) * torch.linspace(0.1, 1, SR)
    raw = LogMel(norm="none")(x)
    y = LogMel(norm="global")(x)
    expected = (raw - raw.mean()) / raw.std(correction=0)
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(LogMel(norm="global")(3.0 * x), y, atol=1e-3, rtol=0)  # gain-free
    assert y.mean(-1).std() > 0.1  # per-band long-term means survive (unlike mean/instance)


def test_matches_instance_norm_1d():
    x = torch.randn(2, SR)
    raw = LogMel(norm="none")(x)
    torch.testing.assert_close(LogMel(norm="instance")(x), torch.nn.InstanceNorm1d(40)(raw), atol=1e-4, rtol=0)


def test_batch_rows_are_independent():
    x = torch.cat([tone(440.0, 1.0), torch.randn(1, SR) * 0.01, torch.zeros(1, SR), tone(3000.0, 1.0) * 0.5])
    m = LogMel(norm="instance")
    y = m(x)
    assert torch.isfinite(y).all()  # silence: log(0 + eps), no NaN from the normalisation
    for i in range(len(x)):
        torch.testing.assert_close(y[i : i + 1], m(x[i : i + 1]), atol=1e-4, rtol=1e-4)


def test_autocast_bf16_computes_in_float32():
    m = LogMel()
    x = torch.randn(2, SR)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref)
    m_bf16 = LogMel().to(torch.bfloat16)  # buffers cast with a bf16 model: still float32 maths
    torch.testing.assert_close(m_bf16(x), ref, atol=1e-2, rtol=0)


def test_float64_input_consistent():
    x = torch.randn(2, SR, dtype=torch.float64)
    torch.testing.assert_close(LogMel()(x), LogMel()(x.float()))


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        LogMel(norm="cmvn")
    with pytest.raises(ValueError, match="samples"):
        LogMel()(torch.randn(1, 100))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        LogMel()(torch.randn(SR))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(2, SR)
    m = LogMel(norm="instance")
    torch.testing.assert_close(m.cuda()(x.cuda()).cpu(), m.cpu()(x), atol=1e-3, rtol=1e-3)


def test_describe_round_trip_gives_the_same_features():
    mel = LogMel(n_mels=24, n_fft=400, win_length=320, hop_length=80, f_min=50.0, f_max=7000.0,
                 pre_emphasis=None, norm="global")
    d = mel.describe()
    assert d == {"type": "logmel", "sample_rate": 16000, "n_mels": 24, "norm": "global", "preemphasis": 0.0,
                 "n_fft": 400, "win_length": 320, "hop_length": 80, "f_min": 50.0, "f_max": 7000.0}
    again = LogMel.from_description(d)
    assert again.describe() == d
    torch.testing.assert_close(again.fb, mel_filterbank(24, 400, SR, 50.0, 7000.0), rtol=0, atol=0)
    x = tone(440.0, 0.5)
    torch.testing.assert_close(again(x), mel(x), rtol=0, atol=0)


def test_from_description_defaults_and_strictness():
    # a FeatureConfig as a dict is a description: the rest takes the model files' defaults
    mel = LogMel.from_description({"n_mels": 40, "norm": "instance", "preemphasis": 0.97})
    assert mel.describe() == {"type": "logmel", "sample_rate": 16000, "n_mels": 40, "norm": "instance",
                              "preemphasis": 0.97, "n_fft": 512, "win_length": 400, "hop_length": 160,
                              "f_min": 20.0, "f_max": 7600.0}
    assert LogMel.from_description({}).norm == "instance" and LogMel().norm == "mean"
    with pytest.raises(ValueError, match="unknown feature setting.*n_mfcc.*known: type"):
        LogMel.from_description({"n_mfcc": 13})
    with pytest.raises(ValueError, match="unknown feature type 'mfcc'"):
        LogMel.from_description({"type": "mfcc"})
