"""ECAPA-TDNN (Desplanques et al. 2020, "Emphasized Channel Attention, Propagation and
Aggregation in TDNN Based Speaker Verification").

Architecture (from the paper): Conv1D+ReLU+BN (k=5, C channels); three SE-Res2Blocks (k=3,
dilation 2, 3, 4, scale 8, SE bottleneck 128), the input of each being the sum of the
outputs of the first layer and of all preceding blocks; multi-layer feature aggregation
(the three block outputs concatenated, Conv1D k=1 to 1536 + ReLU); channel- and
context-dependent attentive statistics pooling (bottleneck 128); BN; FC to 192; BN.
With 80 mels: C=1024 has 14,657,472 parameters (published 14.7 M), C=512 6,191,104 (6.2 M).
Pooling, the BN layers after it and the FC layer run in float32, also under autocast.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sslspeaker.models.frames import active, time_average
from sslspeaker.models.pooling import build_pooling
from sslspeaker.models.registry import register_encoder


class ConvReluBN(nn.Sequential):
    """Conv1D -> ReLU -> BN, the paper's frame-layer unit ("same" length output)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(out_ch),
        )


class Res2Conv(nn.Module):
    """Res2Net dilated conv: split C into ``scale`` groups; y1 = x1, y2 = K2(x2), yi = Ki(xi + y(i-1)).

    The growing chain of convolutions gives one layer several receptive-field sizes.
    """

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        self.width = channels // scale
        self.convs = nn.ModuleList(ConvReluBN(self.width, self.width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.width, dim=1)
        out, y = [parts[0]], None
        for conv, part in zip(self.convs, parts[1:]):
            y = conv(part if y is None else part + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SqueezeExcite1d(nn.Module):
    """Channel gating from the utterance mean: x * sigmoid(W2 relu(W1 mean_t(x)))."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.fc1 = nn.Conv1d(channels, bottleneck, 1)
        self.fc2 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=2, keepdim=True) if active() is None else time_average(x).unsqueeze(2)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(mean))))


class SERes2Block(nn.Module):
    """1x1 ConvReluBN -> dilated Res2 conv -> 1x1 ConvReluBN -> SE, plus the block input."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvReluBN(channels, channels),
            Res2Conv(channels, kernel, dilation, scale),
            ConvReluBN(channels, channels),
            SqueezeExcite1d(channels, se_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


@register_encoder("ecapa_tdnn")
class ECAPATDNN(nn.Module):
    """ECAPA-TDNN speaker encoder: [B, n_mels, T] log-mel -> [B, embed_dim] (unnormalised)."""

    def __init__(
        self,
        n_mels: int = 80,
        channels: int = 1024,
        embed_dim: int = 192,
        dilations: Sequence[int] = (2, 3, 4),
        kernel: int = 3,
        scale: int = 8,
        se_dim: int = 128,
        mfa_channels: int = 1536,
        attention_dim: int = 128,
    ):
        super().__init__()
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.layer1 = ConvReluBN(n_mels, channels, kernel=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, kernel, d, scale, se_dim) for d in dilations)
        self.mfa = nn.Sequential(nn.Conv1d(channels * len(dilations), mfa_channels, 1), nn.ReLU(inplace=True))
        self.pooling = build_pooling("ecapa_asp", mfa_channels, attention_dim=attention_dim)
        self.pool_bn = nn.BatchNorm1d(self.pooling.out_dim)
        self.fc = nn.Linear(self.pooling.out_dim, embed_dim)
        self.emb_bn = nn.BatchNorm1d(embed_dim)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[1] != self.n_mels:
            raise ValueError(f"expected features [B, {self.n_mels}, frames], got {tuple(features.shape)}")
        x = self.layer1(features.float())
        outs = []
        for block in self.blocks:
            outs.append(block(x))
            x = x + outs[-1]  # next block's input: first layer + all block outputs so far (summed)
        x = self.pooling(self.mfa(torch.cat(outs, dim=1)))  # float32
        with torch.autocast(x.device.type, enabled=False):
            return self.emb_bn(self.fc(self.pool_bn(x)))
