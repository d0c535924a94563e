"""A training run folder or ``.pt`` checkpoint read as a model: encoder weights and model-file metadata.

Needs only the checkpoint format (``sslspeaker.runs``), the config, the encoder registry and
``LogMel``: the features are ``LogMel.from_description`` of the config's ``features`` section,
the mapping the trainer's own front end follows.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..config import Config, ConfigError, config_from_dict
from ..features.mel import LogMel
from ..runs import RUN_CHECKPOINT, load_checkpoint, run_checkpoint
from .model_file import ModelError, model_metadata

ENCODER_PREFIX = "encoder."


def checkpoint_path(src: str | os.PathLike) -> Path:
    """A run folder -> its checkpoint; a file -> itself."""
    src = Path(src)
    if src.is_dir():
        ckpt = run_checkpoint(src)
        if not ckpt.is_file():
            raise ModelError(f"{src}: a folder but not a training run (no {RUN_CHECKPOINT})")
        return ckpt
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such model, checkpoint or run folder")
    return src


def features_of(cfg: Config) -> LogMel:
    """The front end a run with config ``cfg`` trains with."""
    return LogMel.from_description(dataclasses.asdict(cfg.features))


def _read_config(ckpt: dict, ckpt_path: Path) -> Config:
    if not isinstance(ckpt, dict) or "config" not in ckpt or "method" not in ckpt:
        raise ModelError(f"{ckpt_path}: not an sslspeaker training checkpoint (needs 'config' and 'method')")
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise ModelError(f"{ckpt_path}: bad config in checkpoint ({exc})") from None


def encoder_state(ckpt: dict, ckpt_path: Path) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of the method's state, without the prefix."""
    state = {k[len(ENCODER_PREFIX):]: v for k, v in ckpt["method"].items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise ModelError(f"{ckpt_path}: the checkpoint holds no encoder weights (no 'encoder.*' keys)")
    return state


def read_checkpoint(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(encoder state_dict, model metadata without embed_dim and threshold, checkpoint path)."""
    ckpt_path = checkpoint_path(src)
    ckpt = load_checkpoint(ckpt_path)
    cfg = _read_config(ckpt, ckpt_path)
    state = encoder_state(ckpt, ckpt_path)
    position = ckpt.get("position") or {}
    provenance = {"checkpoint": str(ckpt_path.resolve()), "step": position.get("step"),
                  "epoch": position.get("epoch"), "method": cfg.method.name, "train_config": ckpt["config"]}
    try:
        features = features_of(cfg)
    except ValueError as exc:
        raise ModelError(f"{ckpt_path}: bad feature settings ({exc})") from None
    return state, model_metadata(cfg.model.encoder, cfg.model.options, features, provenance), ckpt_path


__all__ = ["checkpoint_path", "features_of", "encoder_state", "read_checkpoint"]
