"""Speech activity (issue 21, item 3): the energy detector, trimming by default, --no-vad, no speech refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from sslspeaker.data.activity import PADDING, speech_regions, trim_silence
from sslspeaker.data.audio import AudioError
from sslspeaker.data.synth import make_voice, synthesize


def quiet_noise(n: int, dbfs: float = -60.0, seed: int = 1) -> np.ndarray:
    """White noise with an RMS of ``dbfs`` (near-silence)."""
    return (10 ** (dbfs / 20) * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize(make_voice(0, 3), 3.0, seed=5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from sslspeaker.inference import SpeakerEncoder

    return SpeakerEncoder.load()  # the bundled default model


def test_regions_find_speech_between_near_silence_with_the_padding(speech):
    padded = np.concatenate([quiet_noise(160000), speech, quiet_noise(160000)])
    regions = speech_regions(padded)
    assert len(regions) == 1
    start, end = regions[0]
    pad = int(PADDING * 16000)
    assert 160000 - pad <= start <= 160000 + 1600  # onset within 0.1 s, never more than the padding early
    assert 208000 - 1600 <= end <= 208000 + pad + 400
    assert len(trim_silence(padded, "x.wav")) == end - start


def test_constant_level_audio_is_kept_whole_and_no_speech_is_an_error():
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
    assert trim_silence(tone, "t.wav") is tone
    with pytest.raises(AudioError, match=r"quiet\.wav.*no speech"):
        trim_silence(quiet_noise(16000, dbfs=-90.0), "quiet.wav")  # below the -75 dBFS floor
    click = np.zeros(16000, np.float32)
    click[8000:8100] = 0.5  # 6 ms: shorter than the minimum speech run
    with pytest.raises(AudioError, match="no speech"):
        trim_silence(click + quiet_noise(16000, dbfs=-90.0), "click.wav")


def test_near_silence_around_speech_barely_moves_the_embedding_with_vad(model, speech):
    padded = np.concatenate([quiet_noise(160000), speech, quiet_noise(160000, seed=2)])
    clean = model.embed(speech)
    with_vad = model.embed(padded)
    without = model.embed(padded, vad=False)
    assert float(clean @ with_vad) > 0.9  # only the padding's margins (0.75 s each side) of near-silence remain
    assert float(clean @ without) < float(clean @ with_vad) - 0.1  # the silence moves it far more without VAD
    model.vad = False
    try:
        np.testing.assert_allclose(model.embed(padded), without, atol=1e-6)
    finally:
        model.vad = True


def test_a_file_without_speech_is_refused_naming_it_and_no_vad_embeds_it(model, tmp_path):
    path = tmp_path / "hum.wav"
    sf.write(str(path), quiet_noise(16000, dbfs=-80.0), 16000, subtype="FLOAT")  # peak ~-68 dBFS: not silent
    with pytest.raises(AudioError, match="hum.wav.*no speech"):
        model.embed(path)
    assert model.embed(path, vad=False).shape == (model.embed_dim,)


def test_cli_no_vad_flags(model, speech, tmp_path, capsys):
    from sslspeaker.cli import main

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(str(a), speech, 16000, subtype="FLOAT")
    sf.write(str(b), np.concatenate([quiet_noise(160000), speech, quiet_noise(160000, seed=2)]), 16000,
             subtype="FLOAT")
    out = {}
    for flag in ([], ["--no-vad"]):
        capsys.readouterr()
        assert main(["verify", str(a), str(b), "--threshold", "0.5", "--json", *flag]) == 0
        out[bool(flag)] = json.loads(capsys.readouterr().out)["score"]
    assert out[False] == pytest.approx(model.score(a, b), abs=1e-5)
    assert out[True] == pytest.approx(model.score(a, b, vad=False), abs=1e-5)
    assert abs(out[True] - out[False]) > 0.01
    assert main(["embed", str(b), "--out", str(tmp_path / "e"), "--no-vad", "--format", "npz"]) == 0
    emb = np.load(tmp_path / "e" / "embeddings.npz")["embeddings"][0]
    np.testing.assert_allclose(emb, model.embed(b, vad=False), atol=1e-6)


def test_cli_embed_windows(model, speech, tmp_path, capsys):
    from sslspeaker.cli import main

    a = tmp_path / "a.wav"
    sf.write(str(a), speech, 16000, subtype="FLOAT")
    assert main(["embed", str(a), "--out", str(tmp_path / "w"), "--window", "1.5", "--hop", "0.75"]) == 0
    z = np.load(tmp_path / "w" / "a.npz")
    np.testing.assert_allclose(z["starts"], [0.0, 0.75, 1.5])
    starts, emb = model.embed_windows(a, 1.5, 0.75)
    np.testing.assert_allclose(z["embeddings"], emb, atol=1e-6)
    assert main(["embed", str(a), "--out", str(tmp_path / "w2"), "--hop", "0.5"]) == 2
    assert "error: --hop needs --window" in capsys.readouterr().err
