"""Writes tests/data/old_format/ with the sslspeaker of commit 376c79f (before the inference split).

Run from the repository root with that version's sources first on the path:

    PYTHONPATH=/tmp/before/src python tests/data/make_old_format.py

It writes a tiny training run folder (checkpoints/last.pt), the model file that version exported
from it, and the embeddings that version computed from both and from the packaged default model
for the waves of ``waves()``, so the tests can check that today's code loads them the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import sslspeaker
from sslspeaker.config import Config, to_dict
from sslspeaker.inference.model import SpeakerEncoder, default_model_path, export_model
from sslspeaker.training.build import build_model
from sslspeaker.training.checkpoint import save_checkpoint

OUT = Path(__file__).resolve().parent / "old_format"


def waves() -> np.ndarray:
    """Two 1-s test waves [2, 16000]: noise, and an amplitude-modulated 180-Hz tone."""
    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return np.stack([0.1 * np.random.default_rng(0).standard_normal(16000), tone]).astype(np.float32)


def tiny_config() -> Config:
    cfg = Config()
    cfg.features.n_mels, cfg.features.norm, cfg.features.preemphasis = 24, "mean", 0.9
    cfg.model.options = {"embed_dim": 16, "channels": [4, 4, 8, 8], "layers": [1, 1, 1, 1]}
    cfg.method.options = {"queue_size": 8}
    return cfg


def main() -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    method = build_model(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    run = OUT / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", {"format": "sslspeaker-checkpoint-1", "config": to_dict(cfg),
                                                      "method": method.state_dict(),
                                                      "position": {"step": 3, "epoch": 1, "batch": 0}})
    model_path = export_model(run, OUT / "model.safetensors", threshold=0.25, threshold_source="made by 376c79f")
    w = waves()
    emb = {name: SpeakerEncoder.load(src).embed_batch(list(w))
           for name, src in (("run", run), ("model", model_path), ("default", default_model_path()))}
    np.savez(OUT / "embeddings.npz", waves=w, **emb)
    (OUT / "made_by.json").write_text(json.dumps({"sslspeaker": sslspeaker.__version__, "commit": "376c79f"}) + "\n")


if __name__ == "__main__":
    main()
