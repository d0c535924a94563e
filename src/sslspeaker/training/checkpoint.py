"""Atomic checkpoints that load without unpickling code (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..fileio import atomic_open
from ..runs import load_checkpoint  # noqa: F401  (the checkpoint format lives below training)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Written atomically (``fileio.atomic_open``): a crash never leaves a half-written file."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


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
