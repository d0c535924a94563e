"""One training process per run folder, and a finished run never replaced by accident.

``claim_run_folder`` holds an exclusive ``fcntl.flock`` on ``RUN/train.lock`` for the run's
life (the kernel drops it when the process ends, however it ends), refuses to start a new run
over an existing checkpoint unless told to (``--force`` moves the old run aside into
``RUN/replaced-<UTC stamp>/``, it never deletes it), and removes temporary files that killed
processes left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ..config import ConfigError
from ..fileio import remove_stale_temps, utc_now
from ..runs import RUN_CHECKPOINT, load_checkpoint

LOCK = "train.lock"
RUN_OUTPUTS = ("checkpoints", "log.jsonl", "config.yaml", "tensorboard")  # what a replaced run keeps together


class RunFolderBusy(ValueError):
    """Another live process trains in this run folder."""


@contextlib.contextmanager
def claim_run_folder(out: str | os.PathLike, resume: bool, force: bool = False) -> Iterator[Path]:
    """The run folder, locked for this process, checked for a run it would replace, cleared of stale temps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if not resume:
            _refuse_or_set_aside(out, force)
        _remove_stale_temps(out)
        yield out


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out/train.lock`` holding this process's pid; another holder: ``RunFolderBusy``."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunFolderBusy(f"{out} is in use by another training process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def checkpoint_step(path: Path) -> str:
    """The step a checkpoint was written at, as text ("?" when it cannot be read)."""
    try:
        return str(int(load_checkpoint(path)["position"]["step"]))
    except (OSError, ValueError, KeyError, TypeError):
        return "? (unreadable)"


def _refuse_or_set_aside(out: Path, force: bool) -> None:
    """A new run over a checkpoint: refused, or with ``force`` the old run's outputs moved aside."""
    ckpt = out / RUN_CHECKPOINT
    if not ckpt.is_file():
        return
    if not force:
        raise ConfigError(f"{out} has a checkpoint at step {checkpoint_step(ckpt)}: --resume to continue, "
                          f"--force to start over")
    aside = _free_name(out / f"replaced-{utc_now().replace('-', '').replace(':', '')}")
    aside.mkdir()
    for name in RUN_OUTPUTS:
        if (out / name).exists():
            os.replace(out / name, aside / name)


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... when it is taken."""
    n, free = 1, path
    while free.exists():
        n += 1
        free = path.with_name(f"{path.name}-{n}")
    return free


def _remove_stale_temps(out: Path) -> None:
    remove_stale_temps(out / RUN_CHECKPOINT.parent, RUN_CHECKPOINT.name)
    remove_stale_temps(out, "config.yaml")


__all__ = ["claim_run_folder", "RunFolderBusy", "checkpoint_step", "LOCK"]
