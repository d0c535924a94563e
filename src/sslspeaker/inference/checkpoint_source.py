"""A training run folder or ``.pt`` checkpoint read as a model: encoder weights and model-file metadata.

Needs only the checkpoint format (``sslspeaker.runs``), the config, the encoder registry and
``LogMel``: the features are ``LogMel.from_description`` of the config's ``features`` section,
the mapping the trainer's own front end follows.

Which encoder's weights: a checkpoint names its method's inference encoder (``"inference_encoder"``:
``encoder``, or ``key_encoder`` for DINO's teacher; checkpoints written before it was recorded
mean ``encoder``). ``encoder=`` picks one of ``ENCODER_CHOICES``: ``inference`` (that one),
``online`` (``encoder.*``, the gradient-trained one), ``momentum`` (``key_encoder.*``, the EMA copy
of MoCo and DINO) or ``auto`` (the momentum copy when there is one, else the inference encoder:
what ``sslspeaker pseudolabel`` clusters with).
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
MOMENTUM_ENCODER = "key_encoder"
ENCODER_CHOICES = ("inference", "online", "momentum", "auto")


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


def encoder_name(ckpt: dict, ckpt_path: Path, encoder: str = "inference") -> str:
    """The attribute name (``encoder`` or ``key_encoder``) of the checkpoint's encoder asked for by ``encoder``."""
    if encoder not in ENCODER_CHOICES:
        raise ModelError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, got {encoder!r}")
    has_momentum = any(k.startswith(MOMENTUM_ENCODER + ".") for k in ckpt["method"])
    if encoder == "auto":
        encoder = "momentum" if has_momentum else "inference"
    if encoder == "momentum" and not has_momentum:
        raise ModelError(f"{ckpt_path}: the checkpoint has no momentum encoder ({MOMENTUM_ENCODER}.*); "
                         "its method trains one encoder")
    return {"online": "encoder", "momentum": MOMENTUM_ENCODER}.get(encoder) or \
        str(ckpt.get("inference_encoder") or "encoder")


def encoder_state(ckpt: dict, ckpt_path: Path, name: str = "encoder") -> dict[str, torch.Tensor]:
    """The ``name.*`` entries of the method's state (``encoder.*`` by default), without the prefix."""
    prefix = name + "."
    state = {k[len(prefix):]: v for k, v in ckpt["method"].items() if k.startswith(prefix)}
    if not state:
        raise ModelError(f"{ckpt_path}: the checkpoint holds no encoder weights (no '{prefix}*' keys)")
    return state


def read_checkpoint(src: str | os.PathLike,
                    encoder: str = "inference") -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(encoder state_dict, model metadata without embed_dim and threshold, checkpoint path).

    ``encoder``: which of the checkpoint's encoders (``ENCODER_CHOICES``); the provenance names it.
    """
    ckpt_path = checkpoint_path(src)
    ckpt = load_checkpoint(ckpt_path)
    cfg = _read_config(ckpt, ckpt_path)
    name = encoder_name(ckpt, ckpt_path, encoder)
    state = encoder_state(ckpt, ckpt_path, name)
    position = ckpt.get("position") or {}
    provenance = {"checkpoint": str(ckpt_path.resolve()), "step": position.get("step"),
                  "epoch": position.get("epoch"), "method": cfg.method.name, "train_config": ckpt["config"],
                  "encoder_weights": name, "inference_encoder": str(ckpt.get("inference_encoder") or "encoder")}
    try:
        features = features_of(cfg)
    except ValueError as exc:
        raise ModelError(f"{ckpt_path}: bad feature settings ({exc})") from None
    return state, model_metadata(cfg.model.encoder, cfg.model.options, features, provenance), ckpt_path


__all__ = ["ENCODER_CHOICES", "checkpoint_path", "encoder_name", "encoder_state", "features_of", "read_checkpoint"]
