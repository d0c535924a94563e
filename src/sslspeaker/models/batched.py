"""Embedding many utterances of different lengths, and very long ones, with any registered encoder.

``embed_padded``: waveforms sorted by length, in batches of at most ``batch_frames`` padded
feature frames; each row's features are computed on its own samples (so feature normalisation
sees only them), padded with zeros, and the encoder runs under ``frames.frame_ranges`` (the
padding re-masked before every convolution, statistics over each row's own frames), so an
utterance embeds the same in a batch as alone. Rows of one length skip the masking.

``embed_chunked``: one utterance of any length with memory that does not grow with it beyond
its log mel frames (``LogMel.chunked``): the encoder runs on chunks of ``chunk_frames`` frames
(a multiple of its time stride) that overlap by its receptive field on each side, the
utterance-level statistics pooled across chunks exactly, in passes (``frames.StreamStats``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sslspeaker.models.frames import StopPass, StreamStats, frame_ranges, receptive_field


def time_stride(encoder: nn.Module) -> int:
    """Input frames per frame before pooling: the product of the time strides of the convs wider than 1."""
    stride = 1
    for m in encoder.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.kernel_size[-1] > 1:
            stride *= m.stride[-1]
    return stride


def length_batches(lengths: Sequence[int], batch_frames: int) -> list[list[int]]:
    """Indices sorted by length (longest first), grouped so that rows x longest <= ``batch_frames``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_frames:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _padded_batch(encoder: nn.Module, feats: list[Tensor]) -> Tensor:
    frames = torch.tensor([f.shape[-1] for f in feats], device=feats[0].device)
    size = int(frames.max())
    if bool((frames == size).all()):
        return encoder(torch.cat(feats))
    x = torch.zeros((len(feats), feats[0].shape[1], size), dtype=feats[0].dtype, device=feats[0].device)
    for row, f in enumerate(feats):
        x[row, :, :f.shape[-1]] = f[0]
    with frame_ranges(encoder, torch.zeros_like(frames), frames, size, zero_padding=True) as ctx:
        out = encoder(x)
    if ctx.averages == 0:  # an encoder that does not pool through ``frames``: one row at a time
        return torch.cat([encoder(f) for f in feats])
    return out


@torch.inference_mode()
def embed_padded(encoder: nn.Module, features: nn.Module, waves: Sequence[Tensor],
                 batch_frames: int = 60_000) -> Tensor:
    """Unnormalised embeddings [N, D] of 1-D waveforms of any lengths, batched by length (see the module docstring)."""
    feats = [features(w.reshape(1, -1)) for w in waves]
    out: list[Tensor | None] = [None] * len(feats)
    for batch in length_batches([f.shape[-1] for f in feats], batch_frames):
        emb = _padded_batch(encoder, [feats[i] for i in batch]).float()
        for row, i in enumerate(batch):
            out[i] = emb[row]
    return torch.stack(out)  # type: ignore[arg-type]


def chunk_geometry(encoder: nn.Module, chunk_frames: int) -> tuple[int, int]:
    """(chunk, margin) in feature frames: both multiples of the encoder's time stride, margin >= its receptive field."""
    stride = time_stride(encoder)
    margin = -(-(receptive_field(encoder) + stride) // stride) * stride
    return max(stride, chunk_frames // stride * stride), margin


@torch.inference_mode()
def embed_chunked(encoder: nn.Module, features: nn.Module, wave: Tensor, chunk_frames: int = 6000) -> Tensor:
    """Unnormalised embedding [1, D] of one long waveform, chunk by chunk (see the module docstring)."""
    feats = features.chunked(wave.reshape(1, -1), chunk_frames) if hasattr(features, "chunked") \
        else features(wave.reshape(1, -1))
    total = feats.shape[-1]
    chunk, margin = chunk_geometry(encoder, chunk_frames)
    stats = StreamStats()
    while True:
        for a in range(0, total, chunk):
            b, s0 = min(a + chunk, total), max(a - margin, 0)
            s1 = min(b + margin, total)
            lo, hi = torch.tensor([a - s0]), torch.tensor([b - s0])
            try:
                with frame_ranges(encoder, lo.to(feats.device), hi.to(feats.device), s1 - s0,
                                  zero_padding=False, stream=stats) as ctx:
                    out = encoder(feats[..., s0:s1])
                return out if ctx.averages else encoder(feats)  # no sites: the encoder cannot stream
            except StopPass:
                continue
        stats.end_pass()


__all__ = ["chunk_geometry", "embed_chunked", "embed_padded", "length_batches", "time_stride"]
