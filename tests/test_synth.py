"""Synthetic speech generator: determinism, shapes, corpus writing, and speaker learnability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_curve

from sslspeaker.data.manifest import read_manifest
from sslspeaker.data.synth import Voice, generate_corpus, make_voice, synthesize

SR = 16000


def _log_mel(y: np.ndarray, n_mels: int = 40) -> np.ndarray:
    """(frames, n_mels) log-mel energies: 25-ms Hamming frames, 10-ms hop, triangular filters."""
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    edges = 700.0 * (10 ** (np.linspace(mel(20.0), mel(SR / 2), n_mels + 2) / 2595.0) - 1.0)
    f = np.fft.rfftfreq(512, 1 / SR)
    lo, c, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((f - lo) / (c - lo), (hi - f) / (hi - c)))
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float64), 400)[::160] * np.hamming(400)
    return np.log(np.abs(np.fft.rfft(frames, 512)) ** 2 @ fb.T + 1e-10)


def _stats_embedding(y: np.ndarray) -> np.ndarray:
    """Mean and std of log-mel over the louder half of the frames (a crude VAD), level removed."""
    L = _log_mel(y)
    energy = np.log(np.exp(L).sum(1))
    L = L[energy >= np.median(energy)]
    L = L - L.mean()  # overall level is the channel's gain, not the speaker
    return np.concatenate([L.mean(0), L.std(0)])


def _eer(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    i = np.argmin(np.abs(1 - tpr - fpr))
    return float((fpr[i] + 1 - tpr[i]) / 2)


def _f0(y: np.ndarray) -> float:
    """Median cepstral F0 (60-400 Hz) of the quarter of 40-ms frames loudest below 1 kHz.

    The cepstrum separates the harmonic comb from the formants, which fool plain autocorrelation.
    """
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float64), 640)[::160] * np.hanning(640)
    spec = np.abs(np.fft.rfft(frames, 2048))
    loud = np.argsort((spec[:, : 2048 * 1000 // SR] ** 2).sum(1))[-len(spec) // 4 :]
    ceps = np.fft.irfft(np.log(spec[loud] + 1e-9))
    lo, hi = SR // 400, SR // 60
    return float(np.median(SR / (lo + np.argmax(ceps[:, lo:hi], axis=1))))


def test_voices_deterministic_and_varied():
    assert make_voice(3, 7) == make_voice(3, 7)
    assert make_voice(3, 7) != make_voice(3, 8)
    assert make_voice(3, 7) != make_voice(4, 7)
    voices = [make_voice(0, i) for i in range(60)]
    assert {v.kind for v in voices} == {"male", "female", "child"}
    f0 = np.array([v.f0 for v in voices])
    tract = np.array([v.tract for v in voices])
    assert f0.min() < 110 and f0.max() > 230
    assert tract.min() < 0.9 and tract.max() > 1.15
    # several axes vary independently, not just one "size" knob
    for name in ("tilt", "bandwidth", "breath", "rate", "nasality", "open_quotient"):
        assert np.std([getattr(v, name) for v in voices]) > 0, name
    hash(voices[0])  # frozen, usable as a dict key


@pytest.mark.parametrize("duration,rate", [(1.2345, 16000), (0.3, 16000), (2.0, 8000), (0.001, 16000)])
def test_synthesize_length_dtype_peak(duration, rate):
    y = synthesize(make_voice(0, 1), duration, seed=11, sample_rate=rate)
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.size == round(duration * rate)
    assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0
    if y.size > 1000:
        assert np.abs(y).max() > 0.1 and y.std() > 1e-3  # not silent
    assert synthesize(make_voice(0, 1), 0.0, seed=1).shape == (0,)


def test_synthesize_deterministic():
    v = make_voice(5, 2)
    a, b = synthesize(v, 1.0, seed=42), synthesize(v, 1.0, seed=42)
    assert np.array_equal(a, b)
    assert not np.allclose(a, synthesize(v, 1.0, seed=43))
    assert not np.allclose(a, synthesize(make_voice(5, 3), 1.0, seed=42))


def test_pitch_follows_voice():
    base = make_voice(0, 0)
    low = _f0(synthesize(dataclasses.replace(base, f0=100.0), 2.0, seed=1))
    high = _f0(synthesize(dataclasses.replace(base, f0=220.0), 2.0, seed=1))
    assert 80 < low < 125, low
    assert 175 < high < 275, high
    assert high / low > 1.6


def test_corpus_workers_and_speaker_offset(tmp_path):
    kw = dict(n_speakers=3, utterances_per_speaker=2, seed=3, min_duration=0.5, max_duration=1.0)
    m1 = generate_corpus(tmp_path / "a", workers=1, **kw)
    m2 = generate_corpus(tmp_path / "b", workers=2, **kw)
    assert m1 == tmp_path / "a" / "manifest.csv"
    assert m1.read_bytes() == m2.read_bytes()  # relative paths, so identical text
    entries = read_manifest(m1)
    assert [e.speaker for e in entries] == ["spk0000"] * 2 + ["spk0001"] * 2 + ["spk0002"] * 2
    for i, e in enumerate(entries):
        rel = f"{e.speaker}/{e.speaker}_{i % 2:03d}.flac"
        assert e.path == str((tmp_path / "a" / rel).resolve())
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        info = sf.info(e.path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", SR, 1)
        assert 0.5 <= e.duration <= 1.0 and abs(e.duration - info.frames / SR) < 1e-3
    assert len({sf.read(e.path)[0].size for e in entries}) > 1  # durations vary

    # A later slice of the same population reproduces those speakers exactly (train/test splits).
    m3 = generate_corpus(tmp_path / "c", **{**kw, "n_speakers": 2}, first_speaker=2, speaker_prefix="spk")
    later = read_manifest(m3)
    assert [e.speaker for e in later] == ["spk0002"] * 2 + ["spk0003"] * 2
    for e in later[:2]:
        name = e.path.split("/")[-1]
        assert open(e.path, "rb").read() == (tmp_path / "a" / "spk0002" / name).read_bytes()


def test_speaker_identity_learnable_but_not_trivial():
    """Utterance statistics of log-mel separate speakers well above chance, yet imperfectly."""
    n_spk, n_utt = 12, 6
    emb, spk = [], []
    for s in range(n_spk):
        v: Voice = make_voice(2024, s)
        for u in range(n_utt):
            emb.append(_stats_embedding(synthesize(v, 3.0, seed=1000 * s + u)))
            spk.append(s)
    X = np.array(emb)
    X -= X.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    spk = np.array(spk)
    iu = np.triu_indices(len(X), 1)
    eer = _eer((X @ X.T)[iu], (spk[:, None] == spk[None, :])[iu])
    assert 0.01 < eer < 0.30, eer


@pytest.mark.parametrize("option,value,least", [("n_speakers", 0, 1), ("utterances_per_speaker", -2, 1),
                                                ("workers", 0, 1), ("first_speaker", -1, 0), ("n_speakers", 2.5, 1)])
def test_corpus_refuses_bad_counts(tmp_path, option, value, least):
    kw = {**dict(n_speakers=1, utterances_per_speaker=1, min_duration=0.5, max_duration=0.6), option: value}
    with pytest.raises(ValueError, match=rf"^{option} must be an integer of at least {least}, got {value}$"):
        generate_corpus(tmp_path / "c", **kw)
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_synth_command_refuses_a_bad_count_in_one_line(tmp_path, capsys):
    from sslspeaker.cli import main

    assert main(["synth", str(tmp_path / "c"), "--speakers", "0"]) == 2
    assert capsys.readouterr().err == "error: n_speakers must be an integer of at least 1, got 0\n"
