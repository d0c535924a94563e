"""Fault injection for the data layer: non-finite audio, symlink loops, names that are not UTF-8,
failed writes and bad input to ``prepare``: each ends in a clean skip or a one-line refusal."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import write_audio
from sslspeaker.cli import main
from sslspeaker.data import prepare as prepare_mod
from sslspeaker.data.audio import AudioError, read_audio
from sslspeaker.data.cache import to_int16
from sslspeaker.data.dataset import SegmentDataset
from sslspeaker.data.folders import scan, shown_name
from sslspeaker.data.manifest import Entry, read_manifest, read_trials
from sslspeaker.data.prepare import prepare
from sslspeaker.data.validate import probe

SR = 16000


def write_float(path, seconds=1.0, bad=(), value=np.nan):
    """A float WAV tone whose samples at the indices ``bad`` are ``value``; returns the samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (0.3 * np.sin(2 * np.pi * 200.0 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)
    x[list(bad)] = value
    sf.write(str(path), x, SR, subtype="FLOAT")
    return x


def report_rows(out):
    return {r["path"]: (r["action"], r["reason"]) for r in csv.DictReader(open(out / "report.csv", encoding="utf-8"))}


def temp_files(folder):
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ---- non-finite audio -------------------------------------------------------------------------

def test_probe_rejects_non_finite_samples(tmp_path):
    write_float(tmp_path / "mid.wav", seconds=3.0, bad=range(24000, 24010))  # inside the middle window
    write_float(tmp_path / "inf.wav", seconds=3.0, bad=[5], value=np.inf)
    write_float(tmp_path / "ninf.wav", seconds=3.0, bad=[47999], value=-np.inf)
    write_float(tmp_path / "allnan.wav", bad=range(SR))
    assert probe(str(tmp_path / "mid.wav")).reason == "non-finite samples (NaN/inf in the window at sample 16000)"
    assert probe(str(tmp_path / "inf.wav")).reason == "non-finite samples (NaN/inf in the window at sample 0)"
    assert probe(str(tmp_path / "ninf.wav")).reason == "non-finite samples (NaN/inf in the window at sample 32000)"
    all_nan = probe(str(tmp_path / "allnan.wav")).reason
    assert all_nan.startswith("non-finite samples") and "silent" not in all_nan


def test_read_audio_refuses_non_finite_spans_only(tmp_path):
    x = write_float(tmp_path / "x.wav", seconds=2.0, bad=[20000, 20001, 20002])
    with pytest.raises(AudioError, match=r"x\.wav: non-finite samples \(3 NaN/inf values of 32000 read\)"):
        read_audio(tmp_path / "x.wav")
    with pytest.raises(AudioError, match=r"non-finite samples \(1 NaN/inf values of 1001 read\)"):
        read_audio(tmp_path / "x.wav", 19000, 1001)  # the span 19000..20000 reaches the first NaN
    np.testing.assert_array_equal(read_audio(tmp_path / "x.wav", 0, 20000), x[:20000])  # a clean span reads


def test_prepare_reports_non_finite_files(tmp_path):
    write_audio(tmp_path / "c" / "s" / "ok.wav")
    write_float(tmp_path / "c" / "s" / "nan.wav", bad=[100])
    write_float(tmp_path / "c" / "s" / "allnan.wav", bad=range(SR))
    s = prepare("folder", tmp_path / "c", tmp_path / "out", progress=False)
    assert (s["files"], s["kept"], s["rejected"], s["skipped"]) == (3, 1, 2, 0)
    rows = report_rows(tmp_path / "out")
    for name in ("nan.wav", "allnan.wav"):
        action, reason = rows[str(tmp_path / "c" / "s" / name)]
        assert action == "rejected" and reason.startswith("non-finite samples"), (name, reason)
    assert [e.path for e in read_manifest(tmp_path / "out" / "manifest.csv")] == [str(tmp_path / "c" / "s" / "ok.wav")]


def nan_between_windows(path):
    """A 5-s float file whose NaN lies between the probe's start, middle and end windows."""
    return write_float(path, seconds=5.0, bad=range(24000, 24100))


def test_dataset_skips_a_file_with_nan_past_the_probe(tmp_path, caplog):
    nan_between_windows(tmp_path / "hidden.wav")
    assert probe(str(tmp_path / "hidden.wav")).reason is None  # the probe reads parts: it passes
    entries = [Entry(str(tmp_path / "hidden.wav"), None, 5.0)]
    for i in range(3):
        write_audio(tmp_path / f"u{i}.wav", seconds=5.0, freq=150.0 + 40 * i)
        entries.append(Entry(str(tmp_path / f"u{i}.wav"), None, 5.0))
    ds = SegmentDataset(entries, crop_seconds=5.0, n_views=2, seed=1)  # a whole-file crop reaches the NaN
    item = ds[(0, 0)]
    assert item["index"] != 0 and bool(item["wave"].isfinite().all())
    assert ds.skipped_files() == [(str(tmp_path / "hidden.wav"), "non-finite samples (100 NaN/inf values of 80000 read)")]
    assert "hidden.wav" in caplog.text and "non-finite" in caplog.text
    assert ds[(1, 0)]["index"] != 0 and len(ds.skipped_files()) == 1  # reported once, skipped every time


def test_memory_cache_never_quantises_nan(tmp_path):
    nan_between_windows(tmp_path / "hidden.wav")
    write_audio(tmp_path / "ok.wav", seconds=5.0)
    entries = [Entry(str(tmp_path / "hidden.wav"), None, 5.0), Entry(str(tmp_path / "ok.wav"), None, 5.0)]
    ds = SegmentDataset(entries, crop_seconds=1.0, n_views=2, seed=0, cache_bytes=1e6)
    assert ds.cache.enabled
    ds.cache.fill(threads=1, progress=False)
    assert len(ds.cache) == 1 and 0 not in ds.cache._store  # the NaN file is not cached
    with pytest.raises(AudioError, match="hidden.wav: non-finite samples"):
        ds.cache.get(0)
    item = ds[(0, 0)]
    assert item["index"] == 1 and bool(item["wave"].isfinite().all())
    assert [p for p, _ in ds.skipped_files()] == [str(tmp_path / "hidden.wav")]
    with pytest.raises(AudioError, match="where.wav: non-finite samples"):
        to_int16(np.array([0.5, np.nan], np.float32), "where.wav")
    np.testing.assert_array_equal(to_int16(np.array([0.5, -1.0, 1.0], np.float32), "x"), [16384, -32768, 32767])


def test_dataset_all_non_finite_names_a_file(tmp_path):
    entries = []
    for i in range(3):
        write_float(tmp_path / f"n{i}.wav", bad=range(SR))
        entries.append(Entry(str(tmp_path / f"n{i}.wav"), None, 1.0))
    ds = SegmentDataset(entries, crop_seconds=0.5, seed=0)
    with pytest.raises(RuntimeError, match=r"20 unreadable files in a row: .*3 skipped so far, e\.g\. .*n2\.wav: "
                                           r"non-finite samples"):
        ds[(0, 0)]


def test_read_audio_names_missing_files_and_folders(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: no such file$"):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a folder, not an audio file"):
        read_audio(tmp_path)


# ---- the scanner: symlink loops, names that are not UTF-8 -------------------------------------

def test_scan_enters_no_folder_twice(tmp_path):
    root = tmp_path / "c"
    write_audio(root / "a" / "x.wav")
    write_audio(root / "b" / "y.wav")
    os.symlink("..", root / "a" / "up")  # a loop back to the root
    os.symlink(root / "b", root / "b2")  # a second way into b
    os.symlink("self", root / "self")  # a link to itself: ELOOP when followed
    skipped = []
    found = scan(root, skipped=skipped)
    assert found == [root / "a" / "x.wav", root / "b" / "y.wav"] or found == [root / "a" / "x.wav", root / "b2" / "y.wav"]
    reasons = dict(skipped)
    assert reasons[str(root / "a" / "up")] == "folder already scanned (a symlink loop, or a second link to one folder)"
    assert reasons[str(root / "self")].startswith("symlink cannot be followed (Too many levels of symbolic links")
    assert len(skipped) == 3


def test_prepare_skips_symlink_loops_and_reports_them(tmp_path):
    root = tmp_path / "c"
    write_audio(root / "s" / "x.wav")
    os.symlink("..", root / "s" / "loop")
    s = prepare("folder", root, tmp_path / "out", progress=False)
    assert (s["files"], s["kept"], s["skipped"]) == (1, 1, 1)
    assert report_rows(tmp_path / "out") == {
        str(root / "s" / "loop"): ("skipped", "folder already scanned (a symlink loop, or a second link to one folder)")}


def test_prepare_skips_names_that_are_not_utf8(tmp_path):
    root = tmp_path / "c"
    write_audio(root / "s" / "ok.wav")
    bad_file = os.fsencode(root / "s") + b"/bad\xff.wav"
    with open(bad_file, "wb") as f:
        f.write((root / "s" / "ok.wav").read_bytes())
    os.makedirs(os.fsencode(root) + b"/sp\xe9ker")
    with open(os.fsencode(root) + b"/sp\xe9ker/u.wav", "wb") as f:
        f.write((root / "s" / "ok.wav").read_bytes())
    s = prepare("folder", root, tmp_path / "out", progress=False)
    assert (s["files"], s["kept"], s["skipped"]) == (1, 1, 2)
    assert report_rows(tmp_path / "out") == {
        f"{root}/s/bad\\xff.wav": ("skipped", "file name is not UTF-8"),
        f"{root}/sp\\xe9ker": ("skipped", "folder name is not UTF-8")}
    assert temp_files(tmp_path / "out") == []
    assert shown_name(os.fsdecode(b"/a/b\xff")) == "/a/b\\xff"


# ---- outputs: atomic, nothing left behind ------------------------------------------------------

def dead_pid():
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_prepare_leaves_no_temp_file_on_a_failed_write(tmp_path, monkeypatch):
    root = tmp_path / "vox"
    write_audio(root / "wav" / "id10001" / "v" / "a.wav")
    (root / "veri_test2.txt").write_text("1 id10001/v/a.wav id10001/v/a.wav\n")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".manifest.csv.tmp{dead_pid()}"  # what a killed run leaves
    stale.write_text("half a manifest")

    def failing_write(path, trials):
        with prepare_mod.atomic_open(path, "w") as f:
            f.write("0 half")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_mod, "write_trials", failing_write)
    with pytest.raises(OSError, match=r"out/veri_test2\.txt: cannot be written \(No space left on device\)"):
        prepare("voxceleb1", root, out, progress=False)
    assert temp_files(out) == [] and not (out / "veri_test2.txt").exists()


def test_prepare_reads_trial_lists_before_writing(tmp_path):
    root = tmp_path / "vox"
    write_audio(root / "wav" / "id10001" / "v" / "a.wav")
    (root / "veri_test2.txt").write_bytes(b"1 id10001/v/a.wav id10001/v/a.wav\n0 id10001/v/\xff.wav x.wav\n")
    with pytest.raises(ValueError, match=r"veri_test2\.txt:2: not UTF-8 text \(byte b'\\xff' at column 13\)"):
        prepare("voxceleb1", root, tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_list_readers_name_text_that_is_not_utf8(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"1 a.wav b.wav\n1 \xe9.wav b.wav\n")
    with pytest.raises(ValueError, match=r"t\.txt:2: not UTF-8 text"):
        read_trials(tmp_path / "t.txt")
    (tmp_path / "m.csv").write_bytes(b"path,speaker,duration\n\xe9.wav,s,1.0\n")
    with pytest.raises(ValueError, match=r"m\.csv: not UTF-8 text"):
        read_manifest(tmp_path / "m.csv")


# ---- the command: bad input is one line and exit code 2 ----------------------------------------

def run_prepare(capsys, *args):
    rc = main(["prepare", *map(str, args), "--quiet"])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_prepare_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    write_audio(tmp_path / "c" / "s" / "x.wav")
    (tmp_path / "file.txt").write_text("not a folder")
    rc, err = run_prepare(capsys, "folder", tmp_path / "missing", "--out", tmp_path / "o")
    assert rc == 2 and err == [f"error: {tmp_path / 'missing'}: no such folder"]
    rc, err = run_prepare(capsys, "librispeech", tmp_path / "file.txt", "--out", tmp_path / "o")
    assert rc == 2 and err == [f"error: {tmp_path / 'file.txt'}: is a file, not a corpus folder"]
    rc, err = run_prepare(capsys, "folder", tmp_path / "c", "--out", tmp_path / "file.txt")
    assert rc == 2 and err == [f"error: output folder {tmp_path / 'file.txt'}: is a file, not a folder"]
    rc, err = run_prepare(capsys, "folder", tmp_path / "c", "--out", tmp_path / "file.txt" / "sub")
    assert rc == 2 and err == [f"error: output folder {tmp_path / 'file.txt' / 'sub'}: cannot be created (Not a directory)"]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "timit", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "invalid choice: 'timit'" in capsys.readouterr().err


def test_prepare_refuses_an_unknown_kind_through_the_api(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus kind 'timit'; choose one of folder, voxceleb1"):
        prepare("timit", tmp_path, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_prepare_refuses_an_unwritable_output_folder(tmp_path, capsys, monkeypatch):
    write_audio(tmp_path / "c" / "s" / "x.wav")
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(prepare_mod.os, "access",  # root may write anywhere: stand in for a read-only folder
                        lambda p, mode: False if str(p) == str(tmp_path / "ro") else real_access(p, mode))
    rc, err = run_prepare(capsys, "folder", tmp_path / "c", "--out", tmp_path / "ro")
    assert rc == 2 and err == [f"error: output folder {tmp_path / 'ro'}: not writable"]
    assert list((tmp_path / "ro").iterdir()) == []


def test_prepare_refuses_folders_and_lists_that_are_not_utf8(tmp_path):
    write_audio(tmp_path / "c" / "s" / "x.wav")
    with pytest.raises(ValueError, match=r"o\\xff: the output folder's name is not UTF-8"):
        prepare("folder", tmp_path / "c", os.fsdecode(os.fsencode(tmp_path) + b"/o\xff"), progress=False)
    os.makedirs(os.fsencode(tmp_path) + b"/c\xff")
    with pytest.raises(ValueError, match=r"c\\xff: the corpus folder's name is not UTF-8"):
        prepare("folder", os.fsdecode(os.fsencode(tmp_path) + b"/c\xff"), tmp_path / "o", progress=False)
    write_audio(tmp_path / "rirs" / "real" / "r.wav", seconds=0.3)
    (tmp_path / "rirs" / "real" / "rir_list").write_bytes(b"--rir-id r \xe9 real/r.wav\n")
    with pytest.raises(ValueError, match=r"rir_list: not UTF-8 text \(byte b'\\xe9'\)"):
        prepare("rirs", tmp_path / "rirs", tmp_path / "o", progress=False)
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--min-duration", "-1"], "min_duration must be a number of seconds >= 0, got -1.0"),
    (["--min-duration", "nan"], "min_duration must be a number of seconds >= 0, got nan"),
    (["--sample-rate", "0"], "sample_rate must be a positive integer (Hz), got 0"),
])
def test_prepare_command_refuses_bad_policy_options(tmp_path, capsys, args, message):
    write_audio(tmp_path / "c" / "s" / "x.wav")
    rc, err = run_prepare(capsys, "folder", tmp_path / "c", "--out", tmp_path / "o", *args)
    assert rc == 2 and err == [f"error: {message}"] and not (tmp_path / "o").exists()


def test_scan_reports_a_folder_it_cannot_list(tmp_path, monkeypatch):
    import sslspeaker.data.folders as folders

    write_audio(tmp_path / "c" / "a" / "x.wav")
    write_audio(tmp_path / "c" / "locked" / "y.wav")
    real = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(folders.os, "scandir", scandir)
    skipped = []
    assert scan(tmp_path / "c", skipped=skipped) == [tmp_path / "c" / "a" / "x.wav"]
    assert skipped == [(str(tmp_path / "c" / "locked"), "folder cannot be listed (Permission denied)")]
    with pytest.raises(PermissionError):  # the root itself is not skipped: it is the input
        scan(tmp_path / "c" / "locked")
