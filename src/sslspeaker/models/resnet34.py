"""ResNet-34 speaker encoder with 32 base channels, as in WeSpeaker (Wang et al. 2023, "r-vector").

Architecture (from the papers): log-mel [n_mels, T] as a 1-channel image; 3x3 conv, 32 ch,
stride 1; four stages of plain basic blocks, [3, 4, 6, 3] blocks with [32, 64, 128, 256]
channels and strides 1, 2, 2, 2 (frequency and time); the [C, F/8, T/8] map is flattened to
C*F/8 channels per frame and pooled over time (temporal statistics pooling by default);
linear embedding. With 80 mels and 256-d: 6,634,336 parameters (published 6.63 M).

``pooling="sap" | "asp"`` uses a 128-d attention bottleneck, since a full-width projection of
the 2,560 flattened channels would alone add 6.5 M parameters.
Works with ``channels_last`` and bf16 autocast like ``FastResNet34``; pooling and the
embedding layer run in float32.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sslspeaker.models.pooling import build_pooling
from sslspeaker.models.registry import register_encoder


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, identity (or 1x1 conv-BN) shortcut, ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _downsampled(n: int, strides: Sequence[int]) -> int:
    """Size after 3x3 (or 1x1) convs with padding 1 and these strides: ceil(n / s) each."""
    for s in strides:
        n = (n - 1) // s + 1
    return n


@register_encoder("resnet34")
class ResNet34(nn.Module):
    """ResNet-34 speaker encoder: [B, n_mels, T] log-mel -> [B, embed_dim] (unnormalised)."""

    def __init__(
        self,
        n_mels: int = 80,
        embed_dim: int = 256,
        pooling: str = "tstp",
        channels: Sequence[int] = (32, 64, 128, 256),
        layers: Sequence[int] = (3, 4, 6, 3),
        attention_dim: int = 128,
    ):
        super().__init__()
        if len(channels) != 4 or len(layers) != 4:
            raise ValueError("channels and layers need one entry per stage (4)")
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        strides = (1, 2, 2, 2)
        self.conv1 = nn.Conv2d(1, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], channels[0]
        for ch, n, stride in zip(channels, layers, strides):
            stages.append(nn.Sequential(BasicBlock(in_ch, ch, stride), *[BasicBlock(ch, ch) for _ in range(n - 1)]))
            in_ch = ch
        self.stages = nn.Sequential(*stages)
        flat = in_ch * _downsampled(n_mels, strides)  # channels x remaining frequency bins
        opts = {"attention_dim": attention_dim} if pooling.lower() in ("sap", "asp") else {}
        self.pooling = build_pooling(pooling, flat, **opts)
        self.fc = nn.Linear(self.pooling.out_dim, embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[1] != self.n_mels:
            raise ValueError(f"expected features [B, {self.n_mels}, frames], got {tuple(features.shape)}")
        x = features.float().unsqueeze(1)  # [B, 1, n_mels, T]
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stages(self.relu(self.bn1(self.conv1(x))))  # [B, C, F', T']
        x = self.pooling(x.flatten(1, 2))  # frames described by all channel x frequency values; float32
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(x)
