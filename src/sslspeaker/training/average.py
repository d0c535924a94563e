"""Weight averaging of runs that started from one encoder: the uniform "model soup".

Fine-tuned models that share their initialisation lie in one basin of the loss, and the average
of their weights often scores better than the best of them (Wortsman et al., ICML 2022, "Model
soups"; WeSpeaker and Kaldi average a run's last checkpoints the same way). The pipeline's
self-training rounds all start from the self-supervised encoder, so their encoders can be
averaged. The average is written as a run folder (``checkpoints/last.pt``) that every reader of
a run accepts: ``embed``, ``evaluate``, ``export``, ``pseudolabel`` and ``train.init_from``.
BatchNorm's running statistics are averaged with the weights; its step counters are kept from
the first run.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ConfigError
from ..fileio import utc_now
from ..inference.checkpoint_source import checkpoint_path, encoder_name, encoder_state
from ..runs import load_checkpoint, run_checkpoint
from .checkpoint import save_checkpoint

FORMAT = "sslspeaker-checkpoint-1"
SAME_ENCODER_KEYS = ("model", "features")  # config sections every averaged run must share


def uniform_average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """θ̄ = (1/M) Σ_m θ_m per floating-point tensor; integer tensors (BN's step counts) from the first state."""
    first = states[0]
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point()
            else v.clone() for k, v in first.items()}


def _read_encoder(src: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(checkpoint, its inference encoder's weights) of a run folder or checkpoint file."""
    try:
        path = checkpoint_path(src)
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or "config" not in ckpt or "method" not in ckpt:
            raise ValueError(f"{path}: not an sslspeaker training checkpoint (needs 'config' and 'method')")
        return ckpt, encoder_state(ckpt, path, encoder_name(ckpt, path))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _check_same_encoder(runs: list, ckpts: list[dict], states: list[dict]) -> None:
    """Every run has the first run's encoder and front end, and the same weight names and shapes."""
    ref_cfg, ref = ckpts[0]["config"], states[0]
    for run, ckpt, state in zip(runs[1:], ckpts[1:], states[1:]):
        for key in SAME_ENCODER_KEYS:
            if ckpt["config"].get(key) != ref_cfg.get(key):
                raise ConfigError(f"{run}: its {key} settings differ from {runs[0]}'s: only runs of one "
                                  "encoder average")
        if state.keys() != ref.keys() or any(state[k].shape != ref[k].shape for k in ref):
            raise ConfigError(f"{run}: its encoder weights do not match {runs[0]}'s in names or shapes")


def average_runs(runs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write the uniform average of the runs' inference encoders as the run folder ``out``; its checkpoint.

    The config (and so the front end and encoder) is the last run's; the averaged encoder is
    stored as its ``encoder``; the sources are named under ``averaged_from``."""
    if len(runs) < 2:
        raise ConfigError(f"averaging needs at least 2 runs (got {len(runs)})")
    read = [_read_encoder(r) for r in runs]
    ckpts, states = [c for c, _ in read], [s for _, s in read]
    _check_same_encoder(list(runs), ckpts, states)
    averaged = uniform_average(states)
    last = ckpts[-1]
    state = {"format": FORMAT, "config": last["config"], "inference_encoder": "encoder",
             "method": {f"encoder.{k}": v for k, v in averaged.items()},
             "position": dict(last.get("position") or {}),
             "averaged_from": [str(checkpoint_path(r).resolve()) for r in runs], "created": utc_now()}
    path = run_checkpoint(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return path


__all__ = ["uniform_average", "average_runs"]
