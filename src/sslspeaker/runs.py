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
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if not _looks_like_torch_save(path):
        raise ValueError(f"{path}: not a .pt checkpoint (nor a .safetensors model or a training run folder)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as exc:
        raise ValueError(f"{path}: {refusal_reason(exc)}") from None


def _looks_like_torch_save(path: str | os.PathLike) -> bool:
    """A file that starts as ``torch.save`` writes: a zip archive, or a pickle (protocol 2+)."""
    if not os.path.isfile(path):
        return True  # let torch say what it is
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def refusal_reason(exc: BaseException) -> str:
    """Why torch refused a checkpoint, in one line: a refused Python object keeps that it would run code."""
    text = str(exc)
    if "Weights only load failed" in text:
        detail = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
        detail = detail.replace("WeightsUnpickler error: ", "").split(". Please use")[0][:160]
        return ("refused: it holds pickled Python objects, not only tensors and containers "
                f"({detail}); loading it would run code from the file, which sslspeaker never does")
    return (f"not a loadable sslspeaker checkpoint ({exc.__class__.__name__}: "
            f"{(text.splitlines() or [''])[0][:200]})")


__all__ = ["RUN_CHECKPOINT", "run_checkpoint", "load_checkpoint", "refusal_reason"]
