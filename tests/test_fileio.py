import hashlib
import os

import pytest

from sslspeaker.fileio import (atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, file_sha256,
                               remove_stale_temps, temp_path_for, utc_now)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "wb") as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin"]


def test_temp_name_is_per_process(tmp_path):
    t = temp_path_for(tmp_path / "x.pt")
    assert t.parent == tmp_path and str(os.getpid()) in t.name and t.name.startswith(".x.pt")


def test_atomic_path_keeps_suffix(tmp_path):
    with atomic_path(tmp_path / "c.npz", suffix=".npz") as tmp:
        assert tmp.name.endswith(".npz")
        tmp.write_bytes(b"z")
    assert (tmp_path / "c.npz").read_bytes() == b"z"


def test_remove_stale_temps_keeps_live_processes(tmp_path):
    dead = tmp_path / ".last.pt.tmp999999999"
    live = tmp_path / f".last.pt.tmp{os.getppid()}"
    other = tmp_path / ".other.pt.tmp999999999"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    removed = remove_stale_temps(tmp_path, "last.pt")
    assert removed == [dead] and live.exists() and other.exists()


def test_file_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "f"
    data = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert file_sha256(p, chunk=1 << 16) == hashlib.sha256(data).hexdigest()


def test_utc_now_format():
    s = utc_now()
    assert len(s) == 20 and s[10] == "T" and s.endswith("Z")
