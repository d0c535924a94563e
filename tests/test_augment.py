import logging
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from sslspeaker.augment import (AugmentConfig, Augmenter, NoiseBank, RirBank, combine_sources, equalise, low_pass,
                                mix_at_snr,
                                reverberate)
from sslspeaker.data.audio import read_audio
from sslspeaker.data.manifest import Entry
from sslspeaker.paths import data_root

SR = 16000


def snr_db(clean, mixed):
    """10·log10(P_s / P_(mixed − s)), measured back from the mixture."""
    return 10 * torch.log10(clean.pow(2).mean(-1) / (mixed - clean).pow(2).mean(-1))


def write(path: Path, x, sr=SR, category=None) -> Entry:
    sf.write(str(path), np.asarray(x, np.float32), sr)
    return Entry(str(path), category=category)


def speechlike(n, seed):
    """Amplitude-modulated harmonic signal: non-stationary like speech, cheap to generate."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 250)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    return (x * (0.2 + np.abs(np.sin(2 * np.pi * 3 * t))) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """A small noise bank (noise, music, speech) and RIR bank, written as FLAC files."""
    d = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        entries.append(Entry(write(d / f"noise{i}.flac", rng.normal(0, 0.1, 3 * SR)).path, category="noise"))
        entries.append(Entry(write(d / f"music{i}.flac", speechlike(2 * SR, 100 + i)).path, category="music"))
    for i in range(8):  # distinct constant levels: a babble segment tells which files it came from
        entries.append(Entry(write(d / f"speech{i}.flac", np.full(SR // 2, 0.05 * (i + 1))).path, category="speech"))
    rirs = []
    for i in range(3):
        h = np.zeros(4000, np.float32)
        h[50 + 10 * i] = 1.0  # leading silence before the direct path
        h[60 + 10 * i :] += (rng.normal(0, 0.3, 4000 - 60 - 10 * i) * np.exp(-np.arange(4000 - 60 - 10 * i) / 800)).astype(np.float32)
        rirs.append(write(d / f"rir{i}.flac", h))
    return NoiseBank(entries), RirBank(rirs)


def views(b=8, v=2, seconds=0.5, seed=0):
    return torch.from_numpy(np.stack([[speechlike(int(seconds * SR), seed + 10 * i + j) for j in range(v)] for i in range(b)]))


# --- mixing at an SNR ---------------------------------------------------------------------------


def test_mix_at_snr_measured_back_batched():
    g = torch.Generator().manual_seed(0)
    speech = torch.randn(6, SR, generator=g) * torch.tensor([1.0, 0.1, 0.01, 2.0, 0.5, 0.3])[:, None]
    noise = torch.randn(6, SR, generator=g) * torch.tensor([0.2, 1.0, 3.0, 0.01, 1.0, 0.7])[:, None]
    target = torch.tensor([-5.0, 0.0, 5.0, 10.0, 15.0, 20.0])
    measured = snr_db(speech, mix_at_snr(speech, noise, target))
    assert (measured - target).abs().max() < 0.5
    torch.testing.assert_close(measured, target, atol=1e-3, rtol=0)  # in fact exact


def test_mix_at_snr_silent_inputs_finite():
    x = torch.zeros(2, 1000)
    n = torch.randn(2, 1000)
    assert torch.equal(mix_at_snr(x, n, torch.tensor([5.0, 5.0])), x)  # nothing to be relative to
    s = torch.randn(2, 1000)
    assert torch.equal(mix_at_snr(s, torch.zeros(2, 1000), 5.0), s)


def test_combined_sources_keep_each_source_snr():
    rng = np.random.default_rng(1)
    speech = torch.from_numpy(speechlike(SR, 3)).double()[None]
    sources = [rng.normal(0, s, SR) for s in (0.1, 1.0, 0.01)]
    snrs = [13.0, 16.0, 20.0]
    noise, snr = combine_sources(sources, snrs)
    mixed = mix_at_snr(speech, torch.from_numpy(noise).double()[None], torch.tensor([snr]))
    # the scaled sources are recovered by projection, since the white noises are ~orthogonal
    residual = (mixed - speech)[0].numpy()
    for x, target in zip(sources, snrs):
        gain = residual @ x / (x @ x)
        measured = 10 * math.log10(float(speech.pow(2).mean()) / (gain**2 * np.mean(x**2)))
        assert abs(measured - target) < 0.5


# --- reverberation ------------------------------------------------------------------------------


def test_reverb_unit_impulse_is_identity():
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0))
    rir = torch.zeros(3, 700)
    rir[:, 0] = 1
    torch.testing.assert_close(reverberate(x, rir), x, atol=1e-5, rtol=0)  # float32 FFT round-off (was flaky at 1e-6)


def test_reverb_delayed_impulse_shifts():
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(0))
    rir = torch.zeros(2, 100)
    rir[:, 37] = 1
    y = reverberate(x, rir)
    torch.testing.assert_close(y[:, 37:], x[:, :-37], atol=1e-5, rtol=0)  # float32 FFT round-off
    assert y[:, :37].abs().max() < 1e-5


def test_reverb_matches_scipy_fftconvolve():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4001)).astype(np.float32)
    rir = rng.normal(size=(3, 1234)) * np.exp(-np.arange(1234) / 300)
    rir = (rir / np.linalg.norm(rir, axis=1, keepdims=True)).astype(np.float32)  # unit energy, as in RirBank
    ref = np.stack([scipy.signal.fftconvolve(x[i].astype(np.float64), rir[i].astype(np.float64))[:4001] for i in range(3)])
    y = reverberate(torch.from_numpy(x), torch.from_numpy(rir))
    assert y.shape == (3, 4001) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-5, rtol=0)
    y64 = reverberate(torch.from_numpy(x).double(), torch.from_numpy(rir[0]))  # one rir for the batch
    np.testing.assert_allclose(y64[0].numpy(), ref[0], atol=1e-10)


def test_rir_bank_trims_leading_silence_and_unit_energy(banks):
    _, rir_bank = banks
    assert len(rir_bank) == 3
    for h in rir_bank.rirs:
        assert np.argmax(np.abs(h)) == 0  # direct path first: no delay
        assert abs(np.sum(h.astype(np.float64) ** 2) - 1) < 1e-5
        assert len(h) in (3950, 3940, 3930)


def test_rir_bank_skips_bad_files(tmp_path, caplog):
    (tmp_path / "bad.flac").write_bytes(b"not audio at all" * 10)
    good = write(tmp_path / "good.flac", np.r_[np.zeros(10), 0.5, 0.2, 0.1])
    silent = write(tmp_path / "silent.flac", np.zeros(100))
    with caplog.at_level(logging.WARNING):
        bank = RirBank([Entry(str(tmp_path / "bad.flac")), good, silent])
    assert len(bank) == 1 and "bad.flac" in caplog.text and "silent" in caplog.text
    with pytest.raises(ValueError, match="impulse"):
        RirBank([]).sample(np.random.default_rng())


# --- noise bank ---------------------------------------------------------------------------------


def test_noise_bank_partial_read_matches_file(tmp_path):
    x = np.random.default_rng(0).normal(0, 0.1, 3 * SR).astype(np.float32)
    bank = NoiseBank([write(tmp_path / "n.flac", x)], preload=False)
    assert bank.categories == ["noise"] and not bank.is_preloaded("noise")
    seg = bank.sample("noise", 1000, np.random.default_rng(5))
    assert seg.shape == (1000,) and seg.dtype == np.float32
    start = int(np.flatnonzero(np.isclose(x, seg[0], atol=1e-4) & np.isclose(np.roll(x, -1), seg[1], atol=1e-4))[0])
    np.testing.assert_allclose(seg, x[start : start + 1000], atol=1e-4)  # FLAC is 16-bit


def test_noise_bank_repeats_short_file(tmp_path):
    x = np.linspace(-0.5, 0.5, 100, dtype=np.float32)
    for preload in (False, True):
        bank = NoiseBank([write(tmp_path / "short.flac", x)], preload=preload)
        seg = bank.sample("noise", 1000, np.random.default_rng(1))
        assert seg.shape == (1000,)
        np.testing.assert_allclose(seg[100:], seg[:-100], atol=1e-6)  # periodic with the file length
        assert np.abs(seg).max() > 0.4


def test_noise_bank_preloads_small_sets(tmp_path):
    path = tmp_path / "n.flac"
    bank = NoiseBank([write(path, np.random.default_rng(0).normal(0, 0.1, SR))])
    assert bank.is_preloaded("noise")
    path.unlink()  # no disk access in the hot path
    assert bank.sample("noise", 4000, np.random.default_rng(0)).shape == (4000,)
    assert not NoiseBank([write(path, np.zeros(SR) + 0.1)], preload=False).is_preloaded("noise")


def test_noise_bank_subsamples_large_sets_into_memory(tmp_path):
    entries = [write(tmp_path / f"s{i}.flac", np.random.default_rng(i).normal(0, 0.1, SR), category="speech")
               for i in range(10)]
    bank = NoiseBank(entries, preload_limit_s=3.5)  # 10 s of speech, 3.5 s budget
    assert bank.count("speech") == 4 and bank.is_preloaded("speech")  # whole files until the budget is spent
    again = NoiseBank(entries, preload_limit_s=3.5)
    assert [f.path for f in again._files["speech"]] == [f.path for f in bank._files["speech"]]  # seeded


def test_noise_bank_warnings_are_bounded(tmp_path, caplog):
    missing = [Entry(str(tmp_path / f"missing{i}.flac")) for i in range(50)]
    with caplog.at_level(logging.WARNING, logger="sslspeaker.augment.noise"):
        bank = NoiseBank(missing + [write(tmp_path / "ok.flac", np.ones(100) * 0.1)])
    assert bank.count("noise") == 1
    assert len(caplog.records) <= 6 and "skipped 50 unusable files of 51" in caplog.text


def test_noise_bank_skips_corrupt_file(tmp_path, caplog):
    (tmp_path / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    good = write(tmp_path / "good.flac", np.random.default_rng(1).normal(0, 0.1, SR))
    with caplog.at_level(logging.WARNING, logger="sslspeaker.augment.noise"):
        bank = NoiseBank([Entry(str(tmp_path / "corrupt.flac")), good])
    assert "corrupt.flac" in caplog.text
    assert bank.count("noise") == 1
    assert bank.sample("noise", 2000, np.random.default_rng(0)).shape == (2000,)


def test_noise_bank_file_failing_at_read_time_is_dropped(tmp_path, caplog):
    a = write(tmp_path / "a.flac", np.random.default_rng(0).normal(0, 0.1, SR))
    b = write(tmp_path / "b.flac", np.random.default_rng(1).normal(0, 0.1, SR))
    bank = NoiseBank([a, b], preload=False)
    Path(a.path).write_bytes(b"garbage" * 100)  # broken after the header scan
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            assert bank.sample("noise", 500, rng).shape == (500,)
    assert bank.count("noise") == 1 and "a.flac" in caplog.text


def test_noise_bank_missing_category_names_it(banks, tmp_path):
    with pytest.raises(ValueError, match="'applause'.*categories: music, noise, speech"):
        banks[0].sample("applause", 100, np.random.default_rng())
    (tmp_path / "x.flac").write_bytes(b"junk")
    with pytest.raises(ValueError, match="'noise'"):
        NoiseBank([Entry(str(tmp_path / "x.flac"))]).sample("noise", 100, np.random.default_rng())


# --- augmenter ----------------------------------------------------------------------------------


def test_babble_uses_3_to_7_distinct_files(banks):
    aug = Augmenter(AugmentConfig(category_weights={"babble": 1.0}), noise_bank=banks[0], mode="noise")
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(200):
        a = aug.draw(1000, rng)
        assert a.category == "babble" and len(a.sources) == len(a.snr_db)
        levels = {round(float(np.median(s)), 3) for s in a.sources}  # each file has its own level
        assert len(levels) == len(a.sources)
        assert all(13 <= s <= 20 for s in a.snr_db)
        counts.append(len(a.sources))
    assert min(counts) == 3 and max(counts) == 7


def test_categories_and_snr_ranges(banks):
    aug = Augmenter(noise_bank=banks[0], mode="noise")
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(300):
        a = aug.draw(800, rng)
        seen.setdefault(a.category, []).extend(a.snr_db)
    assert set(seen) == {"noise", "music", "babble"}
    for cat, (lo, hi) in {"noise": (0, 15), "music": (5, 15), "babble": (13, 20)}.items():
        assert lo <= min(seen[cat]) and max(seen[cat]) <= hi
    only_noise = NoiseBank([e for e in _entries_of(banks[0], "noise")])
    assert {Augmenter(noise_bank=only_noise, mode="noise").draw(800, rng).category for _ in range(20)} == {"noise"}


def _entries_of(bank, category):
    return [Entry(f.path, category=category) for f in bank._files[category]]


def test_noise_view_snr_measured_back(banks):
    aug = Augmenter(AugmentConfig(category_weights={"noise": 1.0, "music": 1.0}), noise_bank=banks[0], mode="noise")
    rng = np.random.default_rng(3)
    x = views(b=6, v=1)[:, 0]
    augs = [aug.draw(x.shape[-1], rng) for _ in range(6)]
    y = aug.apply(x, augs)
    torch.testing.assert_close(snr_db(x, y), torch.tensor([a.snr_db[0] for a in augs]), atol=0.5, rtol=0)


def test_n_or_r_fraction(banks):
    aug = Augmenter(noise_bank=banks[0], rir_bank=banks[1], mode="N|R", seed=123)
    kinds = [aug.draw(400).kind for _ in range(3000)]
    assert set(kinds) == {"noise", "reverb"}
    assert abs(kinds.count("noise") / len(kinds) - 0.75) < 0.03


def test_apply_to_one_and_second(banks):
    x = views(b=8, v=2)
    for apply_to in ("one", "second"):
        y = Augmenter(noise_bank=banks[0], rir_bank=banks[1], apply_to=apply_to, seed=1).augment_views(x)
        same = (y == x).all(-1)  # [B, V]
        assert (same.sum(1) == 1).all(), apply_to
        if apply_to == "second":
            assert same[:, 0].all()
    y = Augmenter(noise_bank=banks[0], rir_bank=banks[1], apply_to="one", seed=1).augment_views(views(b=64, v=2))
    untouched = (y == views(b=64, v=2)).all(-1)
    assert 0 < untouched[:, 0].sum() < 64  # the clean view is chosen at random


def test_mode_none_is_identity_and_both_changes_all(banks):
    x = views()
    assert torch.equal(Augmenter(mode="none").augment_views(x), x)
    y = Augmenter(noise_bank=banks[0], rir_bank=banks[1], mode="N|R").augment_views(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert not (y == x).all(-1).any()
    assert torch.equal(x, views())  # input untouched


def test_reverb_mode_preserves_alignment(banks):
    x = torch.zeros(4, 2, 8000)
    clicks = torch.tensor([[100, 2000], [3000, 50], [7000, 6500], [10, 4000]])
    x.scatter_(2, clicks[..., None], 1.0)
    y = Augmenter(rir_bank=banks[1], mode="reverb").augment_views(x)
    assert torch.equal(y.abs().argmax(-1), clicks)  # RIRs start at the direct path: no delay


def test_reproducible_and_resumable(banks):
    x = views(b=4)
    make = lambda: Augmenter(noise_bank=banks[0], rir_bank=banks[1], seed=7)  # noqa: E731
    a, b = make(), make()
    torch.testing.assert_close(a.augment_views(x), b.augment_views(x))
    state = a.state_dict()
    first = a.augment_views(x)
    assert not torch.equal(first, a.augment_views(x))
    c = make()
    c.load_state_dict(state)
    torch.testing.assert_close(c.augment_views(x), first)
    # an explicit generator overrides the owned one
    torch.testing.assert_close(a.augment_views(x, np.random.default_rng(9)), c.augment_views(x, np.random.default_rng(9)))


def test_augment_waveform_cpu_path(banks):
    aug = Augmenter(noise_bank=banks[0], rir_bank=banks[1])
    x = speechlike(SR // 2, 0)
    y1 = aug.augment_waveform(x, np.random.default_rng(4))
    y2 = aug.augment_waveform(x, np.random.default_rng(4))
    assert y1.shape == x.shape and y1.dtype == np.float32 and np.isfinite(y1).all()
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, x)


def test_views_keep_dtype_and_batch_math_matches_per_view(banks):
    aug = Augmenter(noise_bank=banks[0], rir_bank=banks[1])
    x = views(b=4, v=2)
    rng = np.random.default_rng(2)
    augs = [aug.draw(x.shape[-1], rng) for _ in range(8)]
    batched = aug.apply(x.reshape(8, -1), augs)
    single = torch.cat([aug.apply(x.reshape(8, -1)[i : i + 1], [augs[i]]) for i in range(8)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)
    assert aug.augment_views(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_cached_rir_spectra_match_direct_convolution(banks):
    aug = Augmenter(noise_bank=banks[0], rir_bank=banks[1], mode="reverb")
    x = views(b=3, v=2).reshape(6, -1)
    augs = [aug.draw(x.shape[-1], np.random.default_rng(i)) for i in range(6)]
    assert all(a.rir_index is not None for a in augs)
    banks[1]._spectra.clear()
    rirs = [torch.from_numpy(banks[1].rirs[a.rir_index]) for a in augs]
    expected = torch.stack([reverberate(x[i], h) for i, h in enumerate(rirs)])
    torch.testing.assert_close(aug.apply(x, augs), expected, atol=1e-5, rtol=1e-5)
    assert len(banks[1]._spectra) == 1  # one FFT size for one crop length, computed once
    aug.apply(x, augs)
    assert len(banks[1]._spectra) == 1


def test_clear_errors(banks):
    with pytest.raises(ValueError, match="mode='noise'.*noise_bank"):
        Augmenter(mode="noise")
    with pytest.raises(ValueError, match="mode='reverb'.*rir_bank"):
        Augmenter(mode="reverb")
    with pytest.raises(ValueError, match="mode='N|R'"):
        Augmenter(rir_bank=banks[1])
    with pytest.raises(ValueError, match="mode='N|R'.*rir_bank"):
        Augmenter(noise_bank=banks[0])
    with pytest.raises(ValueError, match="mode='N\\+R'"):
        Augmenter(mode="N+R")
    with pytest.raises(ValueError, match="apply_to"):
        Augmenter(mode="none", apply_to="first")
    with pytest.raises(ValueError, match="babble_count"):
        AugmentConfig(babble_count=(0, 3))
    with pytest.raises(ValueError, match="noise_snr"):
        AugmentConfig(noise_snr=(15, 0))
    assert AugmentConfig(noise_snr=[0, 5]).noise_snr == (0, 5)  # YAML lists accepted


# --- band limit (telephone channel) -------------------------------------------------------------


def test_low_pass_keeps_the_band_below_each_rows_cutoff():
    t = np.arange(SR) / SR  # 1 s: every tone below is a whole number of cycles, so on an FFT bin
    tones = {f: np.sin(2 * np.pi * f * t + 0.3 * i) for i, f in enumerate((300, 1000, 3300, 3900, 5000, 7000))}
    x = torch.from_numpy(np.stack([sum(tones.values())] * 2)).float()
    y = low_pass(x, torch.tensor([3400.0, 4000.0]), SR)
    for row, cut in enumerate((3400, 4000)):
        want = sum(v for f, v in tones.items() if f <= cut)
        np.testing.assert_allclose(y[row].numpy(), want, atol=2e-4)
    assert y.dtype == x.dtype and torch.equal(x, torch.from_numpy(np.stack([sum(tones.values())] * 2)).float())


def test_equalise_scales_each_tone_by_the_curve():
    t = np.arange(SR) / SR
    freqs = (30, 200, 1000, 3000, 7000)  # 30 Hz: below the curve's 50-Hz floor, gets G(50 Hz)
    x = torch.from_numpy(np.stack([sum(np.sin(2 * np.pi * f * t) for f in freqs)] * 2))
    gains, phases = torch.tensor([[4.0, -2.0, 1.0], [0.0, 0.0, 0.0]]), torch.tensor([[0.5, 1.0, 2.0], [0.0, 0.0, 0.0]])
    y = equalise(x, gains, phases, SR)

    def curve_db(f, g, ph):
        u = math.log2(max(f, 50) / 50) / math.log2(SR / 100)
        return sum(g[j] * math.cos((j + 1) * math.pi * u + ph[j]) for j in range(3))

    want = sum(10 ** (curve_db(f, [4.0, -2.0, 1.0], [0.5, 1.0, 2.0]) / 20) * np.sin(2 * np.pi * f * t) for f in freqs)
    np.testing.assert_allclose(y[0].numpy(), want, atol=1e-9)
    torch.testing.assert_close(y[1], x[1])  # all-zero gains: identity


def test_bandlimit_fraction_cutoffs_and_order(banks):
    aug = Augmenter(AugmentConfig(bandlimit=0.3, bandlimit_hz=(3400, 4000)), *banks, mode="N|R", seed=5)
    draws = [aug.draw(400) for _ in range(3000)]
    cut = np.array([d.cutoff_hz for d in draws if d.cutoff_hz is not None])
    assert abs(len(cut) / len(draws) - 0.3) < 0.03 and cut.min() >= 3400 and cut.max() <= 4000
    assert {d.kind for d in draws if d.cutoff_hz is not None} == {"noise", "reverb"}  # on top of the mode
    # applied after the noise: the output has no energy above the cutoff, noise included
    x = views(b=4, v=2)
    one = Augmenter(AugmentConfig(bandlimit=1.0, bandlimit_hz=(3500, 3500)), *banks, mode="noise", seed=2)
    y = one.augment_views(x).reshape(8, -1)
    spec = torch.fft.rfft(y.double(), dim=-1).abs()
    f = torch.fft.rfftfreq(y.shape[-1], 1 / SR)
    assert spec[:, f > 3500].max() < 1e-4 * spec.max()
    assert not torch.allclose(y, low_pass(x.reshape(8, -1), torch.full((8,), 3500.0), SR), atol=1e-3)  # noise too
    # p = 0 draws nothing extra: the random stream, hence every run so far, is unchanged
    a, b = Augmenter(None, *banks, seed=9), Augmenter(AugmentConfig(bandlimit=0.0), *banks, seed=9)
    assert torch.equal(a.augment_views(views()), b.augment_views(views()))
    assert Augmenter(AugmentConfig(bandlimit=1.0), mode="none").draw(10).cutoff_hz is not None
    eqs = Augmenter(AugmentConfig(eq=0.4, eq_db=3.0), mode="none", seed=3)
    eq = [eqs.draw(10).eq for _ in range(3000)]
    g = np.array([e[0] for e in eq if e is not None])
    assert abs(len(g) / 3000 - 0.4) < 0.03 and g.shape[1] == 3 and abs(g.std() - 3.0) < 0.15
    # the equaliser then the band limit, on the same view: both show in its spectrum
    z = Augmenter(AugmentConfig(eq=1.0, bandlimit=1.0, bandlimit_hz=(3000, 3000)), mode="none", seed=4)
    y = z.augment_views(views(b=2, v=1)).reshape(2, -1)
    spec = torch.fft.rfft(y.double(), dim=-1).abs()
    f = torch.fft.rfftfreq(y.shape[-1], 1 / SR)
    assert spec[:, f > 3000].max() < 1e-4 * spec.max() and not torch.allclose(
        y, low_pass(views(b=2, v=1).reshape(2, -1), torch.full((2,), 3000.0), SR), atol=1e-4)
    with pytest.raises(ValueError, match=r"augment\.bandlimit must be in \[0, 1\]"):
        AugmentConfig(bandlimit=1.5)
    with pytest.raises(ValueError, match="bandlimit_hz"):
        AugmentConfig(bandlimit_hz=(3000, 9000))
    with pytest.raises(ValueError, match=r"bandlimit_hz must be \[low, high\]"):
        AugmentConfig(bandlimit_hz=(3000, 3500, 4000))
    with pytest.raises(ValueError, match=r"augment\.eq must be in \[0, 1\]"):
        AugmentConfig(eq=-0.1)
    with pytest.raises(ValueError, match="eq_db"):
        AugmentConfig(eq_db=-1)


# --- real shared data ---------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_noise_and_rirs():
    root = data_root()
    if root is None or not (root / "noise").is_dir() or not (root / "rir").is_dir():
        pytest.skip("shared data (noise/, rir/) not available")
    noises = [Entry(str(p), category="noise") for p in sorted((root / "noise").glob("*.flac"))]
    speech = [Entry(str(p), category="speech") for p in sorted((root / "speechocean762" / "WAVE").glob("*/*"))
              if p.suffix in (".flac", ".opus")][:40]  # FLAC in ../shared; Opus in the GPU machine's copy
    bank = NoiseBank(noises + speech)
    rirs = RirBank([Entry(str(p)) for p in sorted((root / "rir").glob("*.flac"))])
    assert bank.count("noise") == len(noises) == 6 and bank.is_preloaded("noise") and len(rirs) == 4
    for h in rirs.rirs:
        assert np.argmax(np.abs(h)) == 0 and abs(float(np.sum(h.astype(np.float64) ** 2)) - 1) < 1e-4
    aug = Augmenter(noise_bank=bank, rir_bank=rirs, seed=0)
    n = int(1.8 * SR)
    clips = [x for x in (read_audio(e.path, 0, n) for e in speech[::2]) if len(x) == n]
    x = torch.from_numpy(np.stack(clips[:16])).reshape(8, 2, n)
    rng = np.random.default_rng(0)
    augs = [aug.draw(x.shape[-1], rng) for _ in range(16)]
    y = aug.apply(x.reshape(16, -1), augs)
    assert torch.isfinite(y).all() and {a.kind for a in augs} == {"noise", "reverb"}
    for i, a in enumerate(augs):
        if a.kind == "noise" and len(a.sources) == 1:
            assert abs(float(snr_db(x.reshape(16, -1)[i], y[i])) - a.snr_db[0]) < 0.5
        if a.kind == "reverb":  # unit-energy RIR: level within a few dB of the dry view
            ratio = 10 * math.log10(float(y[i].pow(2).mean() / x.reshape(16, -1)[i].pow(2).mean()))
            assert abs(ratio) < 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(banks):
    x = views()
    make = lambda: Augmenter(noise_bank=banks[0], rir_bank=banks[1], seed=3)  # noqa: E731
    y = make().augment_views(x.cuda())
    assert y.device.type == "cuda"
    torch.testing.assert_close(y.cpu(), make().augment_views(x), atol=1e-5, rtol=1e-4)
