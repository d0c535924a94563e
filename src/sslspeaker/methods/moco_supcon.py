"""Semi-supervised MoCo: MoCo's InfoNCE on every utterance plus SupCon on the labelled part.

The labels come from the data: with ``data.labelled_fraction`` = f < 1 the dataset keeps the
labels of a seeded fraction f of the speakers and gives −1 to the others (Tencent's
semi-supervised comparison keeps 15 % of the speakers). SupCon (Khosla et al. 2020) runs over
the queries (with gradients) and keys (momentum encoder, no gradients) of the labelled rows of
the global batch: every labelled query has at least its own key as a positive, plus every other
query/key of the same speaker; unlabelled rows take no part. Under DDP the embeddings are
gathered with gradients and the mean runs over the anchors of all ranks.

loss = InfoNCE (MoCo) + supcon_weight · SupCon(τ = supcon_temperature, default MoCo's τ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..distributed import gather_nograd, gather_with_grad
from .losses import supcon
from .moco import EncodedPairs, MoCo, MoCoOptions
from .options import option
from .registry import register_method
from .views import local_offset, share_of_global_mean, require_labels, supcon_anchor_count


@dataclass
class MoCoSupConOptions(MoCoOptions):
    """MoCo's options plus the SupCon term."""

    supcon_weight: float = option(1.0, "weight w of SupCon in InfoNCE + w·SupCon")
    supcon_temperature: float | None = option(None, "SupCon temperature; default MoCo's τ")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.supcon_weight < 0 or (self.supcon_temperature is not None and self.supcon_temperature <= 0):
            raise ValueError(f"moco_supcon: need supcon_weight >= 0 and supcon_temperature > 0, got "
                             f"{self.supcon_weight}, {self.supcon_temperature}")


@register_method("moco_supcon")
class MoCoSupCon(MoCo):
    """Semi-supervised: MoCo InfoNCE plus SupCon on the labelled rows (label >= 0) of the batch (needs labels)."""

    Options = MoCoSupConOptions
    needs_labels = True
    log_names = ("loss", "info_nce", "supcon", "pos_cos", "neg_cos", "top1", "labelled")

    def __init__(self, encoder: nn.Module, options: MoCoSupConOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        self.supcon_weight = float(o.supcon_weight)
        self.supcon_temperature = float(o.supcon_temperature if o.supcon_temperature is not None else self.temperature)

    def loss(self, pairs: EncodedPairs) -> tuple[Tensor, dict[str, float]]:
        """The loss hook: InfoNCE (MoCo) + w·SupCon over the queries and keys; labels [B], −1 = unlabelled."""
        y = require_labels(self.name, pairs.labels, pairs.queries[0].shape[0])
        parts = [self._contrast(q, k, pairs.queue, pairs.own) for q, k in zip(pairs.queries, pairs.keys)]
        info_nce = torch.stack([p[0] for p in parts]).mean()
        z = torch.cat([t for qk in zip(pairs.queries, pairs.keys) for t in qk])  # [q; k] per pair: 2·B rows (4·B if symmetric)
        zy = y.repeat(2 * len(pairs.queries))
        sc_sum = supcon(z, zy, self.supcon_temperature, gather_with_grad(z), gather_nograd(zy),
                        local_offset(z.shape[0]), reduction="sum")
        sc = share_of_global_mean(sc_sum, supcon_anchor_count(zy))
        loss = info_nce + self.supcon_weight * sc
        values = torch.stack([p[1] for p in parts]).mean(dim=0)
        values = torch.cat([loss.detach()[None], values[:1], sc.detach()[None], values[1:],
                            (y >= 0).float().mean()[None]]).tolist()
        return loss, dict(zip(self.log_names, values))


__all__ = ["MoCoSupCon", "MoCoSupConOptions"]
