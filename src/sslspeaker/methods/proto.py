"""Prototypical (P) and angular prototypical (AP) pretext tasks (MoCoVox, Lee, Koh & Yoon 2020,
Table 2; losses of Chung et al. 2020, "In defence of metric learning for speaker recognition").

Each utterance of the batch is its own class with M = V ≥ 2 segments: the query is segment 0,
the support centroid the mean of the other M−1 segments; cross-entropy over the utterances of
the batch (under DDP the centroids are gathered from all ranks with gradients, so each query is
classified among all utterances of the global batch).

  P:  logits_ij = −‖q_i − c_j‖²        (raw embeddings, as in voxceleb_trainer's ``proto``)
  AP: logits_ij = w·cos(q_i, c_j) + b  (w, b learnable, init 10 and −5; w kept ≥ 1e-6)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_with_grad
from .base import Method
from .losses import angular_prototypical_logits, prototypical_logits
from .options import Options, option
from .registry import register_method
from .views import check_views, encode_views, local_offset

W_MIN = 1e-6


@dataclass
class AngProtoOptions(Options):
    """Angular prototypical options."""

    init_w: float = option(10.0, "initial scale w of the cosine logits (learned, kept > 0)")
    init_b: float = option(-5.0, "initial bias b of the cosine logits (learned)")

    def __post_init__(self) -> None:
        if self.init_w <= 0:
            raise ValueError(f"angproto: init_w must be > 0, got {self.init_w}")


class _Prototypical(Method):
    def __init__(self, encoder: nn.Module, options: Options | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        self.head = nn.Identity()

    def logits(self, queries: Tensor, centroids: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, M≥2, n_mels, frames]; returns (cross-entropy over the batch's utterances, logs)."""
        check_views(self.name, feats, 2)
        z = encode_views(self.encoder, self.head, feats, normalize=False)  # [B, M, D]
        queries, centroids = z[:, 0], z[:, 1:].mean(dim=1)
        logits = self.logits(queries, gather_with_grad(centroids))
        target = torch.arange(z.shape[0], device=z.device) + local_offset(z.shape[0])
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            stats = torch.stack([loss.detach(), (logits.argmax(dim=1) == target).float().mean()])
        return loss, dict(zip(("loss", "top1"), stats.tolist()))


@register_method("proto")
class Prototypical(_Prototypical):
    """Prototypical pretext task: query segment vs centroids of the other segments, logits −‖q − c‖²."""

    def logits(self, queries: Tensor, centroids: Tensor) -> Tensor:
        return prototypical_logits(queries, centroids)


@register_method("angproto")
class AngularPrototypical(_Prototypical):
    """Angular prototypical pretext task: logits w·cos(q, c) + b with learnable w > 0, b."""

    Options = AngProtoOptions

    def __init__(self, encoder: nn.Module, options: AngProtoOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        self.w = nn.Parameter(torch.tensor(float(self.options.init_w)))
        self.b = nn.Parameter(torch.tensor(float(self.options.init_b)))

    def logits(self, queries: Tensor, centroids: Tensor) -> Tensor:
        return angular_prototypical_logits(queries, centroids, self.w, self.b)

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        loss, logs = super().forward(feats, labels)
        logs["scale_w"], logs["bias_b"] = float(self.w.detach().clamp(min=W_MIN)), float(self.b.detach())
        return loss, logs

    def after_step(self, step: int, total_steps: int) -> None:
        """Keep w ≥ 1e-6 in the parameter itself (the logits already use max(w, 1e-6))."""
        with torch.no_grad():
            self.w.clamp_(min=W_MIN)
