"""TDNN x-vector encoder (Snyder et al. 2018, "X-vectors: robust DNN embeddings for speaker
recognition").

Five frame layers (affine + ReLU + BN): 512 ch with contexts [t-2, t+2], {t-2, t, t+2},
{t-3, t, t+3}, {t}, and 1500 ch with {t}; statistics pooling (mean and std); the segment
layer's affine output (512-d, before its ReLU) is the embedding, as in Kaldi's "embedding a".

The frame layers have no padding, as in the paper, so they see 15 frames of context. The input's
edge frames are repeated 7 times at each end (``edge_pad``) so that any input length, even one
frame, gives one frame-level output per input frame; ``edge_pad=False`` needs >= 15 frames.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslspeaker.models.frames import active
from sslspeaker.models.pooling import build_pooling
from sslspeaker.models.registry import register_encoder

# (kernel size, dilation) of the five frame layers: contexts [-2..2], [-2,0,2], [-3,0,3], {0}, {0}
FRAME_CONTEXTS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))


@register_encoder("tdnn")
class TDNN(nn.Module):
    """x-vector TDNN: [B, n_mels, T] log-mel -> [B, embed_dim] (unnormalised)."""

    def __init__(
        self,
        n_mels: int = 80,
        embed_dim: int = 512,
        channels: int = 512,
        stats_channels: int = 1500,
        edge_pad: bool = True,
        contexts: Sequence[Sequence[int]] = FRAME_CONTEXTS,
    ):
        super().__init__()
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.edge_pad = edge_pad
        widths = [channels] * (len(contexts) - 1) + [stats_channels]
        layers, in_ch = [], n_mels
        for (kernel, dilation), out_ch in zip(contexts, widths):
            layers += [nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation), nn.ReLU(inplace=True), nn.BatchNorm1d(out_ch)]
            in_ch = out_ch
        self.frames = nn.Sequential(*layers)
        self.context = sum(d * (k - 1) for k, d in contexts)  # frames lost without padding (14)
        self.pooling = build_pooling("tstp", stats_channels)
        self.fc = nn.Linear(self.pooling.out_dim, embed_dim)

    def _pad_edges(self, x: Tensor) -> Tensor:
        """Each row's own first and last valid frame repeated (``models.frames``: padded rows end early)."""
        left = self.context // 2
        ctx = active()
        if ctx is None or not ctx.zero_padding:
            return F.pad(x, (left, self.context - left), mode="replicate")
        _, hi = ctx.range_for(x.shape[-1])
        idx = torch.arange(-left, x.shape[-1] + self.context - left, device=x.device).clamp(min=0)
        idx = torch.minimum(idx[None], (hi - 1).clamp(min=0)[:, None])  # [B, T + context]
        return x.gather(2, idx[:, None, :].expand(-1, x.shape[1], -1))

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[1] != self.n_mels:
            raise ValueError(f"expected features [B, {self.n_mels}, frames], got {tuple(features.shape)}")
        x = features.float()
        if self.edge_pad:
            x = self._pad_edges(x)
        x = self.pooling(self.frames(x))  # float32
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(x)
