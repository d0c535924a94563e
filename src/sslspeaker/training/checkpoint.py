"""Atomic checkpoints that load without unpickling code (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from ..fileio import atomic_open
from ..runs import load_checkpoint  # noqa: F401  (the checkpoint format lives below training)


RESUME_KEYS = ("config", "method", "optimizer", "scheduler", "scaler", "rng", "position", "history")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Written atomically (``fileio.atomic_open``): a crash never leaves a half-written file.

    The state is serialised in memory first, so that a failing write (a full disk) raises the
    ``OSError`` of the write itself, after which the temporary file is removed."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getbuffer())


def nonfinite_tensors(tree, prefix: str = "") -> Iterator[str]:
    """The dotted names of the floating-point tensors in ``tree`` (nested dicts and lists) holding NaN or inf."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from nonfinite_tensors(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from nonfinite_tensors(v, f"{prefix}{i}.")
    elif isinstance(tree, torch.Tensor) and tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
        yield prefix.rstrip(".")


def check_resumable(path: str | os.PathLike, ckpt) -> dict:
    """``ckpt`` when it holds everything a resume reads, else ``ValueError`` naming the file and what is missing."""
    missing = [k for k in RESUME_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a resumable training checkpoint (no {', '.join(missing)})")
    return ckpt


def rng_state() -> dict:
    """Every global RNG the training process draws from, in weights_only-safe types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
