"""SimCLR (Chen et al. 2020) for speakers, with NT-Xent-AM (Lepage & Dehak 2024).

Two views (segments) of each utterance; a view's positive is the other view of its utterance,
its negatives are the views of every other utterance in the batch, gathered from all ranks
*with* gradients (``gather_with_grad``), so the DDP gradient equals the single-process gradient
over the concatenated batch. Extra views (V > 2) are ignored.

``symmetric`` (default, standard SimCLR; Lepage & Dehak's "symmetric" NT-Xent): both views are
anchors and the negatives are all 2N−2 views of the other utterances. ``symmetric=False``: only
view 0 is an anchor, contrasted with the N view-1 embeddings (N−1 negatives), as in the
asymmetric NT-Xent those papers compare against. ``margin`` m > 0 subtracts m from the positive
cosine before the temperature (NT-Xent-AM).

Both views go through the encoder in one pass, so a positive pair and its negatives share the
BN batch statistics (no MoCo-style leakage: nothing here is encoded in a different BN batch). On
several devices that holds because SimCLR declares ``sync_batchnorm``: under DDP its batch norm
layers normalise with the statistics of the global batch (``models.global_bn``), the batch whose
views are contrasted, as SimCLR's global BN does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_with_grad
from .base import EpochContext, Method
from .losses import nt_xent_logits, positive_top1
from .options import option
from .registry import register_method
from .ssps import PositiveSampler, SSPSOptions
from .views import ProjectorOptions, check_views, embed_dim_of, encode_views, local_offset, projection_head


@dataclass
class SimCLROptions(ProjectorOptions, SSPSOptions):
    """SimCLR's options."""

    temperature: float = option(0.07, "NT-Xent temperature τ")
    margin: float = option(0.0, "additive margin subtracted from the positive cosine (NT-Xent-AM)")
    symmetric: bool = option(True, "both views are anchors (2N−2 negatives); false: view 0 only")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0.0:
            raise ValueError(f"simclr: temperature must be > 0, got {self.temperature}")


@register_method("simclr")
class SimCLR(Method):
    """SimCLR: NT-Xent(-AM) between two segments of an utterance, in-batch negatives gathered from all ranks."""

    sync_batchnorm = True  # global-batch BN statistics under DDP (SimCLR's global BN)

    Options = SimCLROptions

    def __init__(self, encoder: nn.Module, options: SimCLROptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        self.temperature, self.margin, self.symmetric = float(o.temperature), float(o.margin), bool(o.symmetric)
        self.projector = projection_head(self.name, o, embed_dim_of(self.name, encoder))
        self.ssps = None
        if o.ssps:  # positives sampled among queued second views of nearby utterances (methods/ssps.py)
            dim = embed_dim_of(self.name, encoder) if o.projector == "none" else o.proj_dim
            self.ssps = PositiveSampler(o, dim, own_queue=True)
            self.wants = ("index",)

    def embed(self, feats: Tensor) -> Tensor:
        """Unit embeddings of the first two views: [B, V, n_mels, frames] → [B, 2, D]."""
        return encode_views(self.encoder, self.projector, feats[:, :2])

    def forward(self, feats: Tensor, labels: Tensor | None = None,
                index: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥2, n_mels, frames], index: dataset indices [B] (SSPS); returns (NT-Xent loss, logs)."""
        check_views("simclr", feats, 2)
        z = self.embed(feats)
        z_all = gather_with_grad(z)
        logits, target = nt_xent_logits(z, self.temperature, self.margin, self.symmetric, z_all,
                                         local_offset(z.shape[0]))
        if self.ssps is not None and index is not None:
            logits = self._sampled_positives(z, logits, target, index)
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            rows = torch.arange(logits.shape[0], device=logits.device)
            pos = logits[rows, target] * self.temperature + self.margin
            neg_mask = torch.isfinite(logits)
            neg_mask[rows, target] = False
            neg = (logits * self.temperature).masked_fill(~neg_mask, 0.0).sum() / neg_mask.sum()
            stats = torch.stack([loss.detach(), pos.mean(), neg, positive_top1(logits, target, self.margin, self.temperature)])
        return loss, dict(zip(("loss", "pos_cos", "neg_cos", "top1"), stats.tolist()))

    def _sampled_positives(self, z: Tensor, logits: Tensor, target: Tensor, index: Tensor) -> Tensor:
        """SSPS: each anchor's positive column holds a queued positive of a nearby utterance where one was
        drawn (its second crop leaves the row); then this batch's second views join the queue."""
        if self.ssps.active():
            pseudo, found, _ = self.ssps.sample(index, self.ssps.queue, self.ssps.queue_index)
            anchors = torch.cat([z[:, 0], z[:, 1]]) if self.symmetric else z[:, 0]
            reps = anchors.shape[0] // z.shape[0]
            logits = with_pseudo_positives(logits, target, anchors, pseudo.repeat(reps, 1), found.repeat(reps),
                                           self.temperature, self.margin)
        if self.training:
            self.ssps.enqueue(z[:, 1], index)
        return logits

    def on_epoch_end(self, context: EpochContext) -> None:
        """SSPS: the reference clustering of the training set (from the epoch before its start on)."""
        if self.ssps is not None:
            self.ssps.on_epoch_end(context, self.inference_encoder(), seed=context.epoch)

    def on_schedule(self, planned_epochs: int) -> None:
        if self.ssps is not None:
            self.ssps.on_schedule(planned_epochs)


def with_pseudo_positives(logits: Tensor, target: Tensor, anchors: Tensor, pseudo: Tensor, found: Tensor,
                          temperature: float, margin: float) -> Tensor:
    """logits_i,t(i) ← (a_i·p_i − m)/τ where a pseudo-positive p_i was drawn (found_i), else unchanged  (SSPS)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        pos = ((anchors.float() * pseudo.float()).sum(dim=1) - margin) / temperature
        rows = torch.arange(logits.shape[0], device=logits.device)
        new = torch.where(found.to(logits.device), pos, logits[rows, target])
        return logits.index_put((rows, target), new)
