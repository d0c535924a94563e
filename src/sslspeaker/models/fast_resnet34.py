"""Fast ResNet-34 ("ResNetSE34L", Chung et al. 2020, "In defence of metric learning for
speaker recognition"), with the 256-d embedding used by MoCoVox (Lee, Koh & Yoon 2020).

Architecture (from the papers): log-mel [n_mels, T] as a 1-channel image; 7x7 conv, 16 ch,
stride (2, 1); four stages of squeeze-excitation basic blocks, [3, 4, 6, 3] blocks with
[16, 32, 64, 128] channels and strides 1, 2, 2, 1; frequency averaged out; self-attentive
(or attentive-statistics) pooling over time; linear projection to ``embed_dim``.

CPU speed: works with ``model.to(memory_format=torch.channels_last)`` (the input is
converted to match conv1's weight layout) and under ``torch.autocast("cpu", torch.bfloat16)``;
input normalisation, pooling and the final projection always run in float32.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sslspeaker.models.frames import active, time_average
from sslspeaker.models.pooling import build_pooling
from sslspeaker.models.registry import register_encoder


class SqueezeExcite(nn.Module):
    """Channel gating (Hu et al. 2018): x * sigmoid(W2 relu(W1 mean_hw(x)))."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3)) if active() is None else time_average(x, dims=(2,))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(mean))))
        return x * gate[:, :, None, None].to(x.dtype)


class SEBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, SE gate, identity (or 1x1 conv-BN) shortcut, ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int | tuple[int, int] = 1, reduction: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(channels, reduction)
        self.shortcut: nn.Module = nn.Identity()
        if stride not in (1, (1, 1)) or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


@register_encoder("fast_resnet34")
class FastResNet34(nn.Module):
    """Fast ResNet-34 speaker encoder: [B, n_mels, T] log-mel -> [B, embed_dim] (unnormalised).

    Input normalisation belongs to the feature stage (``features.norm: instance`` reproduces
    the published model's InstanceNorm1d). ``input_norm=True`` repeats that parameter-free
    per-band instance norm inside the encoder, for features that come unnormalised; it is off
    by default so it cannot silently override another ``features.norm`` choice.
    """

    def __init__(
        self,
        n_mels: int = 40,
        embed_dim: int = 256,
        pooling: str = "sap",
        channels: Sequence[int] = (16, 32, 64, 128),
        layers: Sequence[int] = (3, 4, 6, 3),
        se_reduction: int = 8,
        input_norm: bool = False,
    ):
        super().__init__()
        if len(channels) != 4 or len(layers) != 4:
            raise ValueError("channels and layers need one entry per stage (4)")
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.input_norm = input_norm
        self.conv1 = nn.Conv2d(1, channels[0], 7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], channels[0]
        for ch, n, stride in zip(channels, layers, (1, 2, 2, 1)):
            blocks = [SEBasicBlock(in_ch, ch, stride, se_reduction)]
            blocks += [SEBasicBlock(ch, ch, 1, se_reduction) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = ch
        self.stages = nn.Sequential(*stages)
        self.pooling = build_pooling(pooling, in_ch)
        self.fc = nn.Linear(self.pooling.out_dim, embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[1] != self.n_mels:
            raise ValueError(f"expected features [B, {self.n_mels}, frames], got {tuple(features.shape)}")
        x = features.float()
        if self.input_norm and active() is not None:  # over the counted frames (``models.frames``)
            mean = time_average(x).unsqueeze(2)
            x = (x - mean) * torch.rsqrt(time_average((x - mean).square()).unsqueeze(2) + 1e-5)
        elif self.input_norm:  # done by hand in float32: instance_norm has no bf16/channels_last concerns then
            x = (x - x.mean(dim=2, keepdim=True)) * torch.rsqrt(x.var(dim=2, keepdim=True, unbiased=False) + 1e-5)
        x = x.unsqueeze(1)  # [B, 1, n_mels, T]
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)  # [B, C, n_mels / 8, T / 4]
        x = x.mean(dim=2)  # collapse frequency -> [B, C, T']
        x = self.pooling(x)  # float32
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(x)
