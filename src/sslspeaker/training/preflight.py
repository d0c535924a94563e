"""Checks made before a run builds anything: what it reads exists, its options make sense here.

A missing file found after an hour of training costs the hour; these checks name the file or
the option at the start instead (``ConfigError``: one line, exit code 2).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError, ValidationConfig
from ..data.manifest import Entry, read_trials, resolve

log = logging.getLogger(__name__)
MAX_CHECKED = 20000  # larger pools: this many files, evenly spaced, are checked for existence


def check_config(cfg: Config) -> None:
    """The training list is not empty, the device exists, the validation audio is there."""
    if not cfg.data.train:
        raise ConfigError("data.train=[]: expected at least one manifest or folder of training audio")
    check_device(cfg.train.device)
    if cfg.validation.trials:
        validation_paths(cfg.validation, check=True)


def check_device(device: str) -> None:
    """A ``cuda`` or ``mps`` device only where torch can use one."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device}: CUDA is not available here (use auto or cpu)")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"train.device={device}: only {torch.cuda.device_count()} CUDA devices here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps: MPS is not available here (use auto or cpu)")


def validation_paths(v: ValidationConfig, check: bool = False) -> list[str]:
    """The audio files of the validation trial list, in trial order (with ``check``: each must exist)."""
    if check and not Path(v.trials).is_file():
        raise ConfigError(f"validation.trials={v.trials}: no such file")
    root = v.audio_root or str(Path(v.trials).parent)
    paths = [resolve(p, root) for t in read_trials(v.trials) for p in (t.a, t.b)]
    if check:
        missing = next((p for p in dict.fromkeys(paths) if not os.path.isfile(p)), None)
        if missing is not None:
            raise ConfigError(f"validation.trials={v.trials}: audio file {missing}: no such file")
    return paths


def check_training_files(entries: list[Entry]) -> None:
    """Some training files exist (all missing: ``ConfigError``); a warning counts the missing ones."""
    step = max(1, len(entries) // MAX_CHECKED)
    checked = entries[::step]
    missing = [e.path for e in checked if not os.path.isfile(e.path)]
    if len(missing) == len(checked):
        raise ConfigError(f"data.train: none of the {len(checked)} training files checked exists "
                          f"(first: {missing[0]})")
    if missing:
        log.warning("data.train: %d of %d training files checked are missing (first: %s); they are skipped",
                    len(missing), len(checked), missing[0])


def warn_long_crop(entries: list[Entry], crop_seconds: float) -> str | None:
    """A warning (logged and returned) when the crop is longer than most training files: their views repeat."""
    durations = np.array([e.duration for e in entries if e.duration], dtype=float)
    if durations.size == 0 or np.median(durations) >= crop_seconds:
        return None
    share = float(np.mean(durations < crop_seconds))
    msg = (f"data.crop_seconds={crop_seconds} is longer than {share:.0%} of the training files (median "
           f"{np.median(durations):.2f} s): their crops are the file tiled, so the views of one file overlap")
    log.warning(msg)
    return msg


__all__ = ["check_config", "check_device", "validation_paths", "check_training_files", "warn_long_crop"]
