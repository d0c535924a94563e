"""A training run folder's layout and the checkpoint file format, shared by training and inference.

A run folder holds ``checkpoints/last.pt``: a ``torch.save`` dict of tensors, containers and
numbers (``"config"``, ``"method"`` state, ``"position"``, ...), loaded with
``torch.load(weights_only=True)`` so that reading one never runs pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

RUN_CHECKPOINT = Path("checkpoints") / "last.pt"


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint file of the run folder ``run_dir`` (whether or not it exists)."""
    return Path(run_dir) / RUN_CHECKPOINT


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load tensors, containers and numbers only; anything else is refused by torch."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable sslspeaker checkpoint ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None


__all__ = ["RUN_CHECKPOINT", "run_checkpoint", "load_checkpoint"]
