"""Temporal pooling layers: [B, C, T] frame features -> [B, out_dim] utterance vector.

Both run in float32 with autocast disabled: a softmax over hundreds of frames and a
variance computed as E[x^2] - E[x]^2 lose too much precision in bf16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SelfAttentivePooling(nn.Module):
    """SAP (Cai et al. 2018): w = softmax_t(v . tanh(W x_t + b)); output sum_t w_t x_t."""

    def __init__(self, channels: int, attention_dim: int | None = None):
        super().__init__()
        attention_dim = attention_dim or channels
        self.channels = channels
        self.out_dim = channels
        self.proj = nn.Linear(channels, attention_dim)
        self.context = nn.Parameter(torch.empty(attention_dim))
        nn.init.normal_(self.context, std=math.sqrt(2.0 / (attention_dim + 1)))  # xavier-normal of a [d, 1] vector

    def weights(self, x: Tensor) -> Tensor:
        """Attention weights [B, T] for frames x [B, T, C] (float32)."""
        return torch.softmax(torch.tanh(self.proj(x)) @ self.context, dim=1)

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.float().transpose(1, 2)  # [B, T, C]
        return x, self.weights(x).unsqueeze(1)  # w: [B, 1, T]

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x, w = self._prepare(x)
            return torch.bmm(w, x).squeeze(1)


class AttentiveStatisticsPooling(SelfAttentivePooling):
    """ASP (Okabe et al. 2018): SAP weights; output [sum_t w_t x_t, sqrt(sum_t w_t x_t^2 - mean^2)]."""

    def __init__(self, channels: int, attention_dim: int | None = None, eps: float = 1e-5):
        super().__init__(channels, attention_dim)
        self.out_dim = 2 * channels
        self.eps = eps  # variance floor: keeps sqrt differentiable on constant inputs

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x, w = self._prepare(x)
            mean = torch.bmm(w, x).squeeze(1)
            var = torch.bmm(w, x * x).squeeze(1) - mean * mean
            return torch.cat([mean, var.clamp(min=self.eps).sqrt()], dim=1)


_POOLINGS = {"sap": SelfAttentivePooling, "asp": AttentiveStatisticsPooling}


def build_pooling(name: str, channels: int, **kwargs) -> SelfAttentivePooling:
    """Pooling layer by name ("sap" or "asp") for ``channels``-dim frame features."""
    try:
        return _POOLINGS[name.lower()](channels, **kwargs)
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; known: {', '.join(_POOLINGS)}") from None
