"""Utterance embeddings for scoring: one forward pass per utterance, L2-normalised."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.audio import SAMPLE_RATE, read_audio


@torch.inference_mode()
def embed_waveform(encoder: torch.nn.Module, features: torch.nn.Module, wave: np.ndarray | torch.Tensor,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised embedding [D] of one full utterance (any length)."""
    x = torch.as_tensor(wave, dtype=torch.float32, device=device).reshape(1, -1)
    return F.normalize(encoder(features(x)).float(), dim=-1)[0]


def embed_files(encoder, features, paths: Iterable[str], device="cpu", max_seconds: float = 0.0,
                progress: bool = True) -> dict[str, np.ndarray]:
    """``{path: embedding}`` of full utterances (optionally the first ``max_seconds``)."""
    paths = list(dict.fromkeys(paths))
    frames = int(max_seconds * SAMPLE_RATE) if max_seconds else -1
    was_training = encoder.training
    encoder.eval()
    out = {}
    for p in tqdm(paths, desc="embedding", unit="utt", disable=not progress, mininterval=2.0):
        out[p] = embed_waveform(encoder, features, read_audio(p, 0, frames), device).cpu().numpy()
    encoder.train(was_training)
    return out
