import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_audio
from sslspeaker.data.audio import AudioError, read_audio
from sslspeaker.data.crops import read_crops, tile_to
from sslspeaker.data.dataset import EpochBatchSampler, SegmentDataset, collate
from sslspeaker.data.folders import scan, speaker_entries, speaker_folders
from sslspeaker.data.manifest import Entry, Trial, read_manifest, read_trials, write_manifest, write_trials
from sslspeaker.data.prepare import prepare
from sslspeaker.data.validate import Policy, probe


def test_manifest_round_trip_relative_paths(tmp_path):
    audio = tmp_path / "corpus" / "spk1" / "a.wav"
    write_audio(audio)
    m = tmp_path / "corpus" / "manifest.csv"
    write_manifest(m, [Entry(str(audio), "spk1", 1.0), Entry("/abs/elsewhere.wav", None, 2.5)])
    rows = list(csv.reader(open(m)))
    assert rows[0] == ["path", "speaker", "duration"]
    assert rows[1] == ["spk1/a.wav", "spk1", "1.000"]  # relative to the manifest's folder
    assert rows[2] == ["/abs/elsewhere.wav", "", "2.500"]
    # moved together with its audio, the manifest still locates it
    (tmp_path / "corpus").rename(tmp_path / "moved")
    entries = read_manifest(tmp_path / "moved" / "manifest.csv")
    assert entries[0] == Entry(str(tmp_path / "moved" / "spk1" / "a.wav"), "spk1", 1.0)
    assert entries[1].speaker is None


def test_trials_round_trip_and_errors(tmp_path):
    t = [Trial(1, "id1/a.wav", "id1/b.wav"), Trial(0, "id1/a.wav", "id2/c.wav")]
    write_trials(tmp_path / "t.txt", t)
    assert (tmp_path / "t.txt").read_text() == "1 id1/a.wav id1/b.wav\n0 id1/a.wav id2/c.wav\n"
    assert read_trials(tmp_path / "t.txt") == t
    (tmp_path / "bad.txt").write_text("2 a b\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_trials(tmp_path / "bad.txt")


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("wav", "FLOAT")])
def test_partial_read_equals_full_read(tmp_path, ext, subtype):
    p = tmp_path / f"x.{ext}"
    write_audio(p, seconds=3.0, subtype=subtype)
    full = read_audio(p)
    for start, n in [(0, 100), (12345, 16000), (47000, 1000), (47999, 1)]:
        np.testing.assert_array_equal(read_audio(p, start, n), full[start:start + n])
    assert len(read_audio(p, 47000, 5000)) == 1000  # short near the end, never padded silently


def test_resample_and_mixdown(tmp_path):
    p8 = tmp_path / "x8k.wav"
    write_audio(p8, seconds=1.0, sr=8000, freq=300.0)
    y = read_audio(p8)
    assert len(y) == 16000  # resampled to the working rate
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 300.0) < 2.0
    ps = tmp_path / "st.wav"
    x = write_audio(ps, channels=2)
    np.testing.assert_allclose(read_audio(ps), x.mean(axis=1), atol=1e-4)


def test_unreadable_raises_clear_error(tmp_path):
    p = tmp_path / "junk.flac"
    p.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="junk.flac: unreadable"):
        read_audio(p)


def make_bad_files(root):
    """The bad-file zoo of the data issue, plus good files, under root/<speaker>/."""
    write_audio(root / "good" / "ok1.wav", seconds=1.0)
    write_audio(root / "good" / "ok2.flac", seconds=2.0)
    write_audio(root / "good" / "stereo.wav", seconds=1.0, channels=2)
    write_audio(root / "good" / "hi48k.wav", seconds=1.0, sr=48000)
    write_audio(root / "bad" / "rate8k.wav", seconds=1.0, sr=8000)
    write_audio(root / "bad" / "short.wav", seconds=0.1)
    sf.write(str(root / "bad" / "silent.wav"), np.zeros(16000, np.float32), 16000)
    (root / "bad" / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (root / "bad" / "empty.wav").write_bytes(b"")
    sf.write(str(root / "bad" / "nosamples.wav"), np.zeros(0, np.float32), 16000)
    write_audio(root / "bad" / "trunc.flac", seconds=3.0)
    data = (root / "bad" / "trunc.flac").read_bytes()
    (root / "bad" / "trunc.flac").write_bytes(data[: len(data) // 2])


EXPECTED_REASONS = {
    "rate8k.wav": "sample rate 8000 Hz",
    "short.wav": "too short",
    "silent.wav": "silent",
    "corrupt.flac": "unreadable",
    "empty.wav": "unreadable",
    "nosamples.wav": "empty",
    "trunc.flac": "truncated",
}


def test_probe_reasons(tmp_path):
    make_bad_files(tmp_path)
    for name, reason in EXPECTED_REASONS.items():
        pr = probe(str(tmp_path / "bad" / name))
        assert pr.reason is not None and pr.reason.startswith(reason), (name, pr.reason)
    assert probe(str(tmp_path / "good" / "stereo.wav")).note == "mixed down from 2 channels"
    assert probe(str(tmp_path / "good" / "hi48k.wav")).note == "resampled 48000->16000 Hz"
    assert probe(str(tmp_path / "bad" / "rate8k.wav"), Policy(allow_upsample=True)).reason is None


def test_prepare_folder_reports_and_skips(tmp_path):
    make_bad_files(tmp_path / "c")
    s = prepare("folder", tmp_path / "c", tmp_path / "out", progress=False)
    assert (s["files"], s["kept"], s["rejected"]) == (11, 4, 7)
    kept = read_manifest(tmp_path / "out" / "manifest.csv")
    assert sorted(e.path.split("/")[-1] for e in kept) == ["hi48k.wav", "ok1.wav", "ok2.flac", "stereo.wav"]
    assert {e.speaker for e in kept} == {"good"}
    assert [round(e.duration, 3) for e in kept if e.path.endswith("ok2.flac")] == [2.0]
    report = {r["path"].split("/")[-1]: r for r in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    for name, reason in EXPECTED_REASONS.items():
        assert report[name]["action"] == "rejected" and report[name]["reason"].startswith(reason)
    assert report["stereo.wav"]["action"] == "kept"


def test_prepare_writes_only_its_outputs(tmp_path):
    """Manifest, report and summary are written atomically: no temporary file is left beside them."""
    make_bad_files(tmp_path / "c")
    prepare("folder", tmp_path / "c", tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.csv", "prepare.json", "report.csv"]


def test_speaker_entries_measure_and_leave_out(tmp_path):
    root = tmp_path / "speech"
    write_audio(root / "a" / "long.wav", seconds=1.5)
    write_audio(root / "a" / "short.wav", seconds=0.25)
    write_audio(root / "b" / "ok.flac", seconds=1.0)
    (root / "b" / "broken.wav").write_bytes(b"RIFF" + b"\0" * 40)
    speaker_root, groups, loose = speaker_folders(root)
    assert speaker_root == root and list(groups) == ["a", "b"] and loose == 0
    entries, dropped = speaker_entries(groups, min_seconds=0.5)
    assert dropped == {"unreadable": 1, "short": 1}
    assert {spk: [(e.path.split("/")[-1], round(e.duration, 3)) for e in es] for spk, es in entries.items()} == \
        {"a": [("long.wav", 1.5)], "b": [("ok.flac", 1.0)]}
    assert all(e.speaker == spk for spk, es in entries.items() for e in es)


def test_speaker_folders_errors_and_scan(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        speaker_folders(tmp_path / "nope")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "x" / "notes.txt").write_text("no audio")
    with pytest.raises(ValueError, match="no audio files found"):
        speaker_folders(tmp_path / "empty")
    write_audio(tmp_path / "empty" / "x" / "B.WAV")
    assert scan(tmp_path / "empty") == [tmp_path / "empty" / "x" / "B.WAV"]


def test_prepare_layouts(tmp_path):
    # VoxCeleb1: wav/idXXXXX/video/utt.wav with a trial list beside it
    vox = tmp_path / "vox1"
    for spk in ("id10270", "id10001"):
        for u in range(2):
            write_audio(vox / "wav" / spk / "vid" / f"0000{u}.wav")
    write_audio(vox / "wav" / "id10001" / "vid" / "00009.wav", seconds=0.1)  # rejected
    (vox / "veri_test2.txt").write_text(
        "1 id10270/vid/00000.wav id10270/vid/00001.wav\n0 id10270/vid/00000.wav id10001/vid/00009.wav\n")
    s = prepare("voxceleb1", vox, tmp_path / "o1", progress=False)
    assert s["kept"] == 4 and s["trials"]["veri_test2.txt"]["kept"] == 1
    assert len(read_manifest(tmp_path / "o1" / "test.csv")) == 2  # id10270 is a test speaker
    assert {e.speaker for e in read_manifest(tmp_path / "o1" / "dev.csv")} == {"id10001"}
    # LibriSpeech: speaker from the file name
    write_audio(tmp_path / "libri" / "train" / "19" / "198" / "19-198-0001.flac")
    prepare("librispeech", tmp_path / "libri", tmp_path / "o2", progress=False)
    assert read_manifest(tmp_path / "o2" / "manifest.csv")[0].speaker == "19"
    # MUSAN: category from the top folder; RIRs: short files allowed
    write_audio(tmp_path / "musan" / "music" / "fma" / "m.wav")
    write_audio(tmp_path / "musan" / "speech" / "us" / "s.wav")
    prepare("musan", tmp_path / "musan", tmp_path / "o3", progress=False)
    assert sorted(e.category for e in read_manifest(tmp_path / "o3" / "manifest.csv")) == ["music", "speech"]
    write_audio(tmp_path / "rirs" / "r.wav", seconds=0.3)
    prepare("rirs", tmp_path / "rirs", tmp_path / "o4", progress=False)
    assert [e.category for e in read_manifest(tmp_path / "o4" / "manifest.csv")] == ["rir"]


def test_prepare_unknown_kind_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus kind"):
        prepare("timit", tmp_path, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="openslr.org/12"):
        prepare("librispeech", tmp_path / "missing", tmp_path / "o")


def test_crops_partial_and_repetition(tmp_path):
    p = tmp_path / "x.wav"
    write_audio(p, seconds=2.0)
    full = read_audio(p)
    rng = np.random.default_rng(0)
    crops = read_crops(str(p), len(full), 8000, 3, rng)
    assert crops.shape == (3, 8000)
    for c in crops:  # every crop is a contiguous span of the file
        start = int(np.argmin([np.abs(full[s:s + 8000] - c).max() for s in range(0, len(full) - 8000 + 1)]))
        np.testing.assert_array_equal(full[start:start + 8000], c)
    short = read_crops(str(p), len(full), 40000, 2, rng)
    np.testing.assert_array_equal(short[0], np.concatenate([full, full[:8000]]))
    np.testing.assert_array_equal(tile_to(np.arange(3.0), 7), [0, 1, 2, 0, 1, 2, 0])


def test_dataset_deterministic_and_skips_bad_files(tmp_path, caplog):
    entries = []
    for i in range(6):
        write_audio(tmp_path / f"u{i}.wav", seconds=1.0 + 0.3 * i, freq=100.0 + 50 * i)
        entries.append(Entry(str(tmp_path / f"u{i}.wav"), f"s{i % 2}", 1.0 + 0.3 * i))
    (tmp_path / "gone.wav").write_bytes(b"junk")
    entries.append(Entry(str(tmp_path / "gone.wav"), "s0", 2.0))
    ds = SegmentDataset(entries, crop_seconds=0.5, n_views=2, seed=3, with_labels=True)
    a, b = ds[(1, 4)], ds[(1, 4)]
    assert a["wave"].shape == (2, 8000) and torch.equal(a["wave"], b["wave"])
    assert not torch.equal(ds[(2, 4)]["wave"], a["wave"])  # a new epoch draws new crops
    bad = ds[(0, 6)]  # unreadable: replaced by another utterance, reported once
    assert bad["index"] != 6 and 6 in ds.bad and "gone.wav" in caplog.text
    batch = collate([ds[(0, i)] for i in range(3)])
    assert batch["wave"].shape == (3, 2, 8000) and batch["label"].tolist() == [0, 1, 0]


def test_dataset_memory_cache_gives_the_same_crops(tmp_path, monkeypatch):
    entries = []
    for i, sec in enumerate([0.4, 1.0, 1.5, 2.5]):  # 0.4 s: shorter than a crop, padded by repetition
        write_audio(tmp_path / f"u{i}.wav", seconds=sec, freq=120.0 + 40 * i)
        entries.append(Entry(str(tmp_path / f"u{i}.wav"), None, sec))
    disk = SegmentDataset(entries, crop_seconds=0.5, n_views=3, seed=5, local_crop_seconds=0.25, n_local_views=2)
    mem = SegmentDataset(entries, crop_seconds=0.5, n_views=3, seed=5, local_crop_seconds=0.25, n_local_views=2,
                         cache_bytes=1e6)
    assert mem.cache.enabled and not disk.cache.enabled
    keys = [(e, i) for e in range(3) for i in range(4)]
    for k in keys:  # 16-bit sources: the cache is bit-exact with partial reads
        a, b = disk[k], mem[k]
        assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["local"], b["local"])
    assert len(mem.cache) == 4
    import sslspeaker.data.cache as cache_mod
    monkeypatch.setattr(cache_mod, "read_audio", lambda *a, **k: pytest.fail("cached utterance read again"))
    assert torch.equal(mem[(7, 2)]["wave"], disk[(7, 2)]["wave"])
    # a set over budget reads from disk
    assert not SegmentDataset(entries, crop_seconds=0.5, cache_bytes=1000).cache.enabled


def test_sampler_shards_and_resumes():
    full = EpochBatchSampler(20, 3, seed=1)
    full.set_position(2)
    batches = list(full)
    assert len(batches) == 6 and all(e == 2 for b in batches for e, _ in b)
    resumed = EpochBatchSampler(20, 3, seed=1)
    resumed.set_position(2, 4)
    assert list(resumed) == batches[4:]
    r0, r1 = EpochBatchSampler(20, 3, seed=1, rank=0, world_size=2), EpochBatchSampler(20, 3, seed=1, rank=1, world_size=2)
    i0 = {i for b in r0 for _, i in b}
    i1 = {i for b in r1 for _, i in b}
    assert len(i0) == len(i1) == 9 and not i0 & i1
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(5, 3, world_size=2)


@pytest.mark.shared_data
def test_prepare_shared_speechocean762(tmp_path, shared_data):
    s = prepare("speechocean762", shared_data / "speechocean762", tmp_path, progress=False)
    assert (s["files"], s["kept"], s["speakers"]) == (2500, 2500, 125)
    assert len(read_manifest(tmp_path / "manifest.csv")) == 2500
    assert len(read_manifest(tmp_path / "train.csv")) == 2000 and len(read_manifest(tmp_path / "dev.csv")) == 500
    assert s["trials"]["dev_trials.txt"]["kept"] == 9500
    flac = read_manifest(tmp_path / "manifest.csv")[7].path
    np.testing.assert_array_equal(read_audio(flac, 20000, 4000), read_audio(flac)[20000:24000])
    # Opus is lossy and decodes after a seek with a short pre-roll: equal to a few 16-bit LSBs
    clip = sorted((shared_data / "librispeech-clips").glob("*.opus"))[0]
    np.testing.assert_allclose(read_audio(clip, 20000, 4000), read_audio(clip)[20000:24000], atol=3e-4)


def test_dataset_local_views_and_labelled_fraction(tmp_path):
    entries = []
    for i in range(8):
        write_audio(tmp_path / f"u{i}.wav", seconds=1.2, freq=100.0 + 30 * i)
        entries.append(Entry(str(tmp_path / f"u{i}.wav"), f"s{i % 4}", 1.2))
    ds = SegmentDataset(entries, crop_seconds=1.0, n_views=2, seed=0, local_crop_seconds=0.4, n_local_views=3,
                        with_labels=True, labelled_fraction=0.5)
    item = ds[(0, 1)]
    assert item["wave"].shape == (2, 16000) and item["local"].shape == (3, 6400)
    labels = [ds[(0, i)]["label"] for i in range(8)]
    assert sorted(set(labels)) == sorted({-1, *[l for l in labels if l >= 0]})
    kept = {entries[i].speaker for i in range(8) if labels[i] >= 0}
    assert len(kept) == 2  # half of the 4 speakers keep their labels; the rest read -1
    assert collate([ds[(0, i)] for i in range(2)])["local"].shape == (2, 3, 6400)


def test_prepare_voxceleb2_needs_ffmpeg(tmp_path, monkeypatch):
    (tmp_path / "vox2" / "dev" / "aac" / "id00012" / "vid").mkdir(parents=True)
    (tmp_path / "vox2" / "dev" / "aac" / "id00012" / "vid" / "00001.m4a").write_bytes(b"\0" * 100)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(SystemExit, match="install ffmpeg"):
        prepare("voxceleb2", tmp_path / "vox2", tmp_path / "out", progress=False)


def test_prepare_voxceleb2_converts_with_ffmpeg(tmp_path, monkeypatch):
    """With an ffmpeg on PATH, m4a files are converted to 16-kHz mono FLAC under --out/audio."""
    import sys

    src = tmp_path / "vox2" / "dev" / "aac"
    for spk in ("id00012", "id00015"):
        wav = tmp_path / "stand-in.wav"
        write_audio(wav, seconds=1.0, channels=2, sr=22050)
        (src / spk / "vid").mkdir(parents=True)
        (src / spk / "vid" / "00001.m4a").write_bytes(wav.read_bytes())  # a WAV in disguise
    fake = tmp_path / "bin" / "ffmpeg"  # stands in for ffmpeg: reads -i SRC, writes the last arg
    fake.parent.mkdir()
    fake.write_text(f"""#!{sys.executable}
import sys, soundfile as sf, soxr
args = sys.argv[1:]
x, sr = sf.read(args[args.index("-i") + 1])
sf.write(args[-1], soxr.resample(x.mean(axis=1), sr, int(args[args.index("-ar") + 1])), 16000)
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    s = prepare("voxceleb2", tmp_path / "vox2", tmp_path / "out", progress=False)
    assert s["kept"] == 2 and s["speakers"] == 2
    entries = read_manifest(tmp_path / "out" / "manifest.csv")
    assert all(e.path.startswith(str(tmp_path / "out" / "audio")) and e.path.endswith(".flac") for e in entries)
    assert sf.info(entries[0].path).samplerate == 16000 and sf.info(entries[0].path).channels == 1


def test_prepare_cnceleb_layouts_enrolment_and_trials(tmp_path):
    """CN-Celeb1 (dev speakers, several enrolment utterances per model via enroll.map, .wav names in the lists
    of a FLAC release) and CN-Celeb2: subsets, the enrolment list and the model-vs-test trials."""
    from pathlib import Path

    from conftest import write_audio
    from sslspeaker.data.manifest import read_manifest, read_trials
    from sslspeaker.data.prepare import prepare

    one, two = tmp_path / "cn" / "CN-Celeb_flac", tmp_path / "cn" / "CN-Celeb2_flac"
    files = ["data/id00000/speech-01-001", "data/id00000/vlog-02-001", "data/id00800/speech-01-001",
             "data/id00800/speech-01-002", "data/id00801/drama-01-001", "eval/test/id00800-singing-01-001",
             "eval/test/id00801-interview-01-001", "eval/enroll/id00800-enroll", "eval/enroll/id00801-enroll"]
    for i, f in enumerate(files):
        write_audio(one / f"{f}.flac", seconds=1.2, freq=150 + 30 * i)
    write_audio(two / "data" / "id10000" / "a-01-001.flac", seconds=1.2)
    (one / "dev").mkdir()
    (one / "dev" / "dev.lst").write_text("id00000\n")
    lists = one / "eval" / "lists"
    lists.mkdir()
    (lists / "enroll.map").write_text("id00800-enroll id00800/speech-01-001.wav id00800/speech-01-002.wav\n"
                                      "id00801-enroll id00801/drama-01-001.wav\n")
    (lists / "trials.lst").write_text("id00800-enroll test/id00800-singing-01-001.wav 1\n"
                                      "id00800-enroll test/id00801-interview-01-001.wav 0\n"
                                      "id00801-enroll test/id00801-interview-01-001.wav 1\n")
    out = tmp_path / "prepared"
    summary = prepare("cnceleb", tmp_path / "cn", out, progress=False, workers=1)
    assert summary["kept"] == 10 and summary["trials"]["enrolment"]["trials_kept"] == 3

    def names(csv):
        return sorted(Path(e.path).relative_to(tmp_path / "cn").as_posix() for e in read_manifest(out / csv))

    assert names("train.csv") == ["CN-Celeb2_flac/data/id10000/a-01-001.flac",
                                  "CN-Celeb_flac/data/id00000/speech-01-001.flac",
                                  "CN-Celeb_flac/data/id00000/vlog-02-001.flac"]
    assert names("test.csv") == ["CN-Celeb_flac/eval/test/id00800-singing-01-001.flac",
                                 "CN-Celeb_flac/eval/test/id00801-interview-01-001.flac"]
    enroll = read_manifest(out / "enroll.csv")
    assert sorted((e.speaker, Path(e.path).name) for e in enroll) == [
        ("id00800-enroll", "speech-01-001.flac"), ("id00800-enroll", "speech-01-002.flac"),
        ("id00801-enroll", "drama-01-001.flac")]
    trials = read_trials(out / "trials.txt")
    assert [(t.label, t.a, t.b) for t in trials] == [
        (1, "id00800-enroll", "eval/test/id00800-singing-01-001.flac"),
        (0, "id00800-enroll", "eval/test/id00801-interview-01-001.flac"),
        (1, "id00801-enroll", "eval/test/id00801-interview-01-001.flac")]
    (lists / "trials.lst").write_text("id00999-enroll test/id00800-singing-01-001.wav 1\n")
    with pytest.raises(ValueError, match="model 'id00999-enroll' is not in the enrolment lists"):
        prepare("cnceleb", tmp_path / "cn", tmp_path / "bad", progress=False, workers=1)
