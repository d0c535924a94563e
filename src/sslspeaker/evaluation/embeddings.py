"""Utterance embeddings for scoring: full utterances, L2-normalised, in padded batches sorted by length."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.audio import SAMPLE_RATE, read_audio
from ..models.batched import embed_padded


def file_size(path: str) -> int:
    """Bytes of ``path`` (0 when unreadable): the sort key that groups utterances of similar length."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def embed_files(encoder, features, paths: Iterable[str], device="cpu", max_seconds: float = 0.0,
                progress: bool = True, group_size: int = 32) -> dict[str, np.ndarray]:
    """``{path: embedding}`` of full utterances (optionally the first ``max_seconds``).

    Files are taken in order of size, ``group_size`` at a time, and embedded in padded batches
    (``models.batched.embed_padded``): each the same as alone.
    """
    paths = sorted(dict.fromkeys(paths), key=file_size)
    frames = int(max_seconds * SAMPLE_RATE) if max_seconds else -1
    was_training = encoder.training
    encoder.eval()
    out = {}
    with tqdm(total=len(paths), desc="embedding", unit="utt", disable=not progress, mininterval=2.0) as bar:
        for i in range(0, len(paths), group_size):
            group = paths[i:i + group_size]
            waves = [torch.as_tensor(read_audio(p, 0, frames), device=device) for p in group]
            emb = F.normalize(embed_padded(encoder, features, waves), dim=-1).cpu().numpy()
            out.update(zip(group, emb))
            bar.update(len(group))
    encoder.train(was_training)
    return out
