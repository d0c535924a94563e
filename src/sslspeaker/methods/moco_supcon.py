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

import inspect

import torch
from torch import Tensor, nn

from ..distributed import gather_nograd, gather_with_grad
from .losses import supcon
from .moco import MoCo
from .registry import register_method
from .views import global_mean, local_offset, require_labels, supcon_anchor_count


@register_method("moco_supcon")
class MoCoSupCon(MoCo):
    """Semi-supervised: MoCo InfoNCE plus SupCon on the labelled rows (label >= 0) of the batch (needs labels)."""

    needs_labels = True

    def __init__(self, encoder: nn.Module, *, supcon_weight: float = 1.0, supcon_temperature: float | None = None,
                 **moco_options) -> None:
        super().__init__(encoder, **moco_options)
        if supcon_weight < 0 or (supcon_temperature is not None and supcon_temperature <= 0):
            raise ValueError(f"moco_supcon: need supcon_weight >= 0 and supcon_temperature > 0, got "
                             f"{supcon_weight}, {supcon_temperature}")
        self.supcon_weight = float(supcon_weight)
        self.supcon_temperature = float(supcon_temperature if supcon_temperature is not None else self.temperature)

    def forward(self, feats: Tensor, labels: Tensor | None = None,
                index: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥2, n_mels, frames], labels [B] (−1 = unlabelled), index [B] (dataset indices, optional);
        returns (InfoNCE + w·SupCon, logs)."""
        if feats.dim() != 4 or feats.shape[1] < 2:
            raise ValueError(f"moco_supcon: feats must be [B, V>=2, n_mels, frames], got {tuple(feats.shape)}")
        y = require_labels("moco_supcon", labels, feats.shape[0])
        pairs = [(feats[:, 0], feats[:, 1])] + ([(feats[:, 1], feats[:, 0])] if self.symmetric else [])
        own = self.own_keys(index)
        losses, stats, new_keys, sc_rows = [], [], [], []
        for xq, xk in pairs:
            q = self.encode_queries(xq)
            k, k_all = self.encode_keys(xk)
            loss, s = self._contrast(q, k, own)
            losses.append(loss)
            stats.append(s)
            new_keys.append(k_all)
            sc_rows += [q, k]
        if self.training:
            self.enqueue(torch.cat(new_keys), self.key_indices(index, len(pairs)))
        info_nce = torch.stack(losses).mean()

        z = torch.cat(sc_rows)  # [q; k] per pair: 2·B rows (4·B if symmetric)
        zy = y.repeat(len(sc_rows))
        sc_sum = supcon(z, zy, self.supcon_temperature, gather_with_grad(z), gather_nograd(zy),
                        local_offset(z.shape[0]), reduction="sum")
        sc = global_mean(sc_sum, supcon_anchor_count(zy))
        loss = info_nce + self.supcon_weight * sc
        values = torch.stack(stats).mean(dim=0)
        values = torch.cat([loss.detach()[None], values[:1], sc.detach()[None], values[1:],
                            (y >= 0).float().mean()[None]]).tolist()
        return loss, dict(zip(("loss", "info_nce", "supcon", "pos_cos", "neg_cos", "top1", "labelled"), values))


def _signature() -> inspect.Signature:
    # List MoCo's options explicitly so build_method rejects unknown ones by name.
    own = list(inspect.signature(MoCoSupCon.__init__).parameters.values())[:4]  # self, encoder, 2 options
    moco = list(inspect.signature(MoCo.__init__).parameters.values())[2:]
    return inspect.Signature(own + moco)


MoCoSupCon.__init__.__signature__ = _signature()  # type: ignore[attr-defined]

__all__ = ["MoCoSupCon"]
