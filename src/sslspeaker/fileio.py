"""Small file helpers every layer uses: atomic writes, file hashes, UTC timestamps.

An atomic write goes to a temporary file in the destination's folder (named for this process,
so two processes never share one), is flushed and fsynced, then renamed over the destination:
a reader sees the old file or the new one, never half of one. On any failure the temporary
file is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import IO, Iterator

TMP_MARK = ".tmp"


def temp_path_for(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary sibling of ``path`` this process writes before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    For writers that insist on a file name (``np.savez``, ``safetensors.save_file``); ``suffix``
    keeps an extension such writers add or check."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open`` for writing whose result appears at ``path`` only once the block ends without error."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open writes a new file: mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove temporary files a killed process left for destination ``name`` in ``folder``
    (those of live processes are kept); returns what was removed."""
    removed = []
    for p in Path(folder).glob(f".{name}{TMP_MARK}*"):
        pid = p.name[len(name) + 1 + len(TMP_MARK):].split(".")[0]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601 with a ``Z``: ``2026-12-01T23:40:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems (and /proc) refuse fsync: the rename still holds
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["atomic_path", "atomic_open", "atomic_write_text", "atomic_write_bytes", "remove_stale_temps",
           "temp_path_for", "file_sha256", "utc_now"]
