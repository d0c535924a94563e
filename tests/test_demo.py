"""`sslspeaker demo`: trial-list builder, speaker split, --data discovery, and miniature end-to-end runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sslspeaker.cli import main
from sslspeaker.config import ConfigError
from sslspeaker.data.folders import speaker_folders
from sslspeaker.data.manifest import read_manifest, read_trials
from sslspeaker.data.synth import generate_corpus
from sslspeaker.data.trials import build_trials, split_speakers
from sslspeaker.demo import REQUIRED_KEYS, load_demo_config, recipe_text, run_demo
from sslspeaker.inference.model import SpeakerEncoder

# A miniature demo: a handful of short utterances, seconds of training.
MINI = ["demo.train_speakers=6", "demo.train_utterances=3", "demo.test_speakers=3", "demo.test_utterances=3",
        "demo.min_duration=1.0", "demo.max_duration=1.3", "demo.workers=1", "train.batch_size=6",
        "data.workers=0"]


def _items(n_speakers=5, n_utts=4):
    return [(f"/x/s{s}/u{u}.flac", f"s{s}") for s in range(n_speakers) for u in range(n_utts)]


# ---- trial lists ----------------------------------------------------------------------------
def test_trials_balanced_no_self_pairs_no_duplicates_labels_right():
    items = _items(5, 4)
    speaker = dict(items)
    trials = build_trials(items, seed=3)
    targets = [t for t in trials if t.label == 1]
    assert len(targets) == 5 * 6  # every same-speaker pair (4 choose 2 per speaker)
    assert len(trials) == 2 * len(targets)  # balanced
    assert all(t.a != t.b for t in trials)
    assert all((speaker[t.a] == speaker[t.b]) == (t.label == 1) for t in trials)
    pairs = [frozenset((t.a, t.b)) for t in trials]
    assert len(set(pairs)) == len(pairs)


def test_trials_deterministic_order_independent_and_seeded():
    items = _items(6, 5)
    a = build_trials(items, max_trials=40, seed=1)
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert build_trials(shuffled, max_trials=40, seed=1) == a
    assert build_trials(items, max_trials=40, seed=2) != a
    assert len(a) == 40 and sum(t.label for t in a) == 20


def test_trials_cap_spreads_targets_over_speakers_and_relative_paths():
    items = _items(4, 6)
    trials = build_trials(items, max_trials=16, seed=0, relative_to="/x")
    per_speaker = {}
    for t in trials:
        assert not t.a.startswith("/") and not t.b.startswith("/")
        if t.label:
            per_speaker[t.a.split("/")[0]] = per_speaker.get(t.a.split("/")[0], 0) + 1
    assert sorted(per_speaker.values()) == [2, 2, 2, 2]


def test_trials_only_over_the_given_speakers():
    train = _items(3, 3)
    test = [(p.replace("/x/", "/y/"), "t" + s) for p, s in _items(4, 3)]
    trials = build_trials(test, seed=0)
    used = {p for t in trials for p in (t.a, t.b)}
    assert used <= {p for p, _ in test} and not used & {p for p, _ in train}


def test_trials_impossible_lists_are_errors():
    with pytest.raises(ValueError, match="at least 2 speakers"):
        build_trials(_items(1, 5))
    with pytest.raises(ValueError, match="at least 2 utterances"):
        build_trials(_items(4, 1))


def test_split_speakers_by_sorted_name():
    names = [f"SPK{i:03d}" for i in range(20)]
    train, test = split_speakers(reversed(names), 0.2)
    assert len(test) == 4 and len(train) == 16
    assert not set(train) & set(test) and set(train) | set(test) == set(names)
    assert split_speakers(names, 0.2) == (train, test)
    assert test == ["SPK002", "SPK007", "SPK012", "SPK017"]  # every 5th, spread over the sorted names
    assert split_speakers(["a", "b", "c"], 0.2) == (["b"], ["a", "c"])  # at least 2 held out
    with pytest.raises(ValueError, match="need at least 3"):
        split_speakers(["a", "b"], 0.2)


# ---- settings and folders -------------------------------------------------------------------
def test_recipe_is_packaged_and_strict():
    assert "demo:" in recipe_text()
    settings, tree = load_demo_config(["demo.minutes=2", "train.batch_size=32"])
    assert settings.minutes == 2.0 and tree["train"]["batch_size"] == 32
    assert tree["model"]["encoder"] == "fast_resnet34" and tree["method"]["name"] == "moco"
    with pytest.raises(ConfigError, match="demo.nope"):
        load_demo_config(["demo.nope=1"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_demo_config(["train.nope=1"])
    with pytest.raises(ConfigError, match="disjoint"):
        load_demo_config(["demo.test_first_speaker=3"])
    for override, message in (("demo.train_speakers=1.5", "demo.train_speakers: expected an integer"),
                              ("demo.min_duration=5", "demo: need 0 < min_duration <= max_duration"),
                              ("demo=3", "demo: expected a mapping")):
        with pytest.raises(ConfigError, match=message):
            load_demo_config([override])
    assert load_demo_config(["demo.minutes=3"])[0].minutes == 3.0 and isinstance(settings.minutes, float)


def test_moco_queue_fitted_to_the_pool():
    from sslspeaker.methods import fit_options_to_pool

    options = {"queue_size": 64, "momentum": 0.99}
    assert fit_options_to_pool("moco", options, n_examples=18, batch_size=6) == {"queue_size": 18, "momentum": 0.99}
    assert fit_options_to_pool("moco", options, n_examples=20, batch_size=6) == {"queue_size": 18, "momentum": 0.99}
    assert fit_options_to_pool("moco", options, n_examples=1000, batch_size=64) == options  # fits already
    assert fit_options_to_pool("moco", {}, n_examples=1600, batch_size=64) == {"queue_size": 1600}  # 65536 default
    assert fit_options_to_pool("simclr", {"temperature": 0.1}, 18, 6) == {"temperature": 0.1}
    assert options == {"queue_size": 64, "momentum": 0.99}  # not modified


def _touch_flac(path: Path) -> None:
    import numpy as np
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(1600, np.float32), 16000, format="FLAC")


def test_speaker_folders_descends_corpus_roots(tmp_path):
    root = tmp_path / "so762"
    for spk in ("SPEAKER0001", "SPEAKER0005", "SPEAKER0007"):
        for u in range(2):
            _touch_flac(root / "WAVE" / spk / f"{spk}_{u}.flac")
    (root / "protocol").mkdir()
    (root / "protocol" / "train.csv").write_text("path,speaker,duration\n")
    speaker_root, groups, loose = speaker_folders(root)
    assert speaker_root == root / "WAVE" and list(groups) == ["SPEAKER0001", "SPEAKER0005", "SPEAKER0007"]
    assert loose == 0 and all(len(v) == 2 for v in groups.values())
    # speaker folders with sessions below them (VoxCeleb style): files at any depth are the speaker's
    _touch_flac(root / "WAVE" / "SPEAKER0009" / "sess1" / "a.flac")
    _touch_flac(root / "WAVE" / "SPEAKER0009" / "sess2" / "b.flac")
    assert len(speaker_folders(root)[1]["SPEAKER0009"]) == 2
    assert speaker_folders(root / "WAVE")[1] == speaker_folders(root)[1]


# ---- end to end -----------------------------------------------------------------------------
def _check_outputs(out: Path, report: dict) -> None:
    for name in ("untrained", "trained"):
        res = json.loads(Path(report[name]["results"]).read_text())
        for key in REQUIRED_KEYS:
            assert key in res and key in report[name]
        for png in res["plots"].values():
            assert Path(png).is_file() and Path(png).stat().st_size > 1000
    systems = [json.loads(Path(report[n]["results"]).read_text())["system"] for n in ("untrained", "trained")]
    enc, method = report["config"]["model"]["encoder"], report["config"]["method"]["name"]
    assert systems == [f"untrained {enc}", f"{method}-trained {enc}"]  # the two figures' titles differ
    assert Path(report["det_overlay"]).is_file() and Path(report["det_overlay"]).stat().st_size > 1000
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["trained"]["eer"] == report["trained"]["eer"]
    model = SpeakerEncoder.load(out / "model.safetensors")
    assert model.threshold == pytest.approx(report["trained"]["eer_threshold"])
    assert "test trials" in model.threshold_source and "optimistic" in model.threshold_source
    assert (out / "model_untrained.safetensors").is_file()
    # no labels in training; trial speakers never trained on
    train = read_manifest(out / "train.csv")
    assert all(e.speaker is None for e in train)
    trials = read_trials(out / "trials.txt")
    root = Path(report["trials"]["audio_root"])
    trial_files = {str((root / p).resolve()) for t in trials for p in (t.a, t.b)}
    assert not trial_files & {str(Path(e.path).resolve()) for e in train}
    assert sum(t.label for t in trials) * 2 == len(trials)


def test_demo_synthetic_miniature(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--minutes", "0.15", "--seed", "1", "--quiet", *MINI])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "untrained (same net, random init)" in printed and "minDCF(0.01)" in printed
    assert "sslspeaker verify --model" in printed and "report.json" in printed
    report = json.loads((out / "report.json").read_text())
    _check_outputs(out, report)
    assert report["data"]["kind"] == "synthetic" and report["training"]["steps"] >= 1
    train_spk = {p.name for p in (out / "corpus" / "train").iterdir() if p.is_dir()}
    assert not train_spk & set(report["data"]["test_speakers"])
    # the example command works as printed
    cmd = report["model"]["verify_example"].split()
    assert main(cmd[1:]) == 0
    assert "score" in capsys.readouterr().out


def test_demo_data_folder(tmp_path, capsys):
    speech = tmp_path / "speech"
    generate_corpus(speech / "audio", n_speakers=5, utterances_per_speaker=3, seed=4, min_duration=1.0,
                    max_duration=1.3)
    (speech / "audio" / "manifest.csv").unlink()
    report = run_demo(tmp_path / "out", data=speech, minutes=0.1, overrides=["train.batch_size=6", "data.workers=0"],
                      progress=False)
    assert report["data"]["kind"] == "folder"
    assert report["data"]["test_speakers"] == ["spk0001", "spk0003"]  # 2 of 5 held out, spread by name
    assert report["data"]["train_files"] == 9 and report["data"]["test_files"] == 6
    _check_outputs(tmp_path / "out", report)
    assert "untrained" in capsys.readouterr().out


@pytest.mark.parametrize("n_speakers", [0, 1, 2])
def test_demo_data_folder_with_too_few_speakers(tmp_path, capsys, n_speakers):
    speech = tmp_path / "speech"
    speech.mkdir()
    for s in range(n_speakers):
        for u in range(3):
            _touch_flac(speech / f"spk{s}" / f"{u}.flac")
    if n_speakers == 0:
        _touch_flac(speech / "lonely.flac")
    rc = main(["demo", "--data", str(speech), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and "speaker" in err and "at least 3" in err
    assert not (tmp_path / "out" / "run").exists()


def test_demo_missing_data_folder(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
