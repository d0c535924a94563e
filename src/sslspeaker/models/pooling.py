"""Temporal pooling layers: [B, C, T] frame features -> [B, out_dim] utterance vector.

All run in float32 with autocast disabled: a softmax over hundreds of frames and a
variance computed as E[x^2] - E[x]^2 lose too much precision in bf16. Every layer has
``out_dim``; the statistics layers floor the variance at ``eps`` so that one frame, or
constant frames, give a finite std and gradient. Under a frame context (``models.frames``:
padded batches, chunked streams) every average over time is a ``time_average`` over the
counted frames; without one the plain code below runs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sslspeaker.models.frames import active, time_average


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

    def logits(self, x: Tensor) -> Tensor:
        """Attention logits [B, 1, T] of frames x [B, C, T] (float32)."""
        return (torch.tanh(self.proj(x.transpose(1, 2))) @ self.context).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            if active() is not None:
                x = x.float()
                return time_average(x, self.logits(x))
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
            if active() is not None:
                x = x.float()
                mean, sq = time_average(torch.cat([x, x * x], dim=1), self.logits(x)).chunk(2, dim=1)
            else:
                x, w = self._prepare(x)
                mean, sq = torch.bmm(w, x).squeeze(1), torch.bmm(w, x * x).squeeze(1)
            var = sq - mean * mean
            return torch.cat([mean, var.clamp(min=self.eps).sqrt()], dim=1)


class TemporalStatisticsPooling(nn.Module):
    """TSTP / x-vector statistics pooling: [mean_t x_t, std_t x_t] with uniform weights."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.out_dim = 2 * channels
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            mean, var = mean_and_variance(x)  # two-pass, population variance: defined for one frame
            return torch.cat([mean.squeeze(2), var.clamp(min=self.eps).sqrt()], dim=1)


def mean_and_variance(x: Tensor, logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Two-pass mean [B, C, 1] and population variance [B, C] over time of x [B, C, T], uniform or
    softmax(logits)-weighted, over the counted frames under a frame context."""
    if active() is not None:
        mean = time_average(x, logits).unsqueeze(2)
        return mean, time_average((x - mean).square(), logits)
    if logits is None:
        mean = x.mean(dim=2, keepdim=True)
        return mean, (x - mean).square().mean(dim=2)
    w = torch.softmax(logits, dim=2)
    mean = (w * x).sum(dim=2, keepdim=True)
    return mean, (w * (x - mean).square()).sum(dim=2)


class ContextAttentiveStatisticsPooling(nn.Module):
    """ECAPA-TDNN pooling (Desplanques et al. 2020): channel- and context-dependent ASP.

    e_tc = v_c . tanh(W [h_t; mean(h); std(h)] + b) + k_c, softmax over t per channel c, then
    the weighted mean and std per channel. The attention sees each frame next to the utterance's
    uniform mean and std (``global_context``), so what counts as salient depends on the whole
    recording. W is a 1x1 conv to ``attention_dim`` (128 in the paper); v, k a 1x1 conv back to C.
    """

    def __init__(self, channels: int, attention_dim: int = 128, global_context: bool = True, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.out_dim = 2 * channels
        self.global_context = global_context
        self.eps = eps
        in_ch = 3 * channels if global_context else channels
        self.attention = nn.Sequential(
            nn.Conv1d(in_ch, attention_dim, 1), nn.Tanh(), nn.Conv1d(attention_dim, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            ctx = x
            if self.global_context:
                mean, var = mean_and_variance(x)
                std = var.unsqueeze(2).clamp(min=self.eps).sqrt()
                ctx = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)  # expand_as: T stays symbolic in ONNX
            mean, var = mean_and_variance(x, self.attention(ctx))  # two-pass: no cancellation for large means
            return torch.cat([mean.squeeze(2), var.clamp(min=self.eps).sqrt()], dim=1)


_POOLINGS = {
    "sap": SelfAttentivePooling,
    "asp": AttentiveStatisticsPooling,
    "tstp": TemporalStatisticsPooling,
    "ecapa_asp": ContextAttentiveStatisticsPooling,
}


def build_pooling(name: str, channels: int, **kwargs) -> nn.Module:
    """Pooling layer by name ("sap", "asp", "tstp", "ecapa_asp") for ``channels``-dim frame features."""
    try:
        cls = _POOLINGS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; known: {', '.join(_POOLINGS)}") from None
    return cls(channels, **kwargs)
