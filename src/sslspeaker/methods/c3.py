"""C3-MoCo: MoCo with multi-stage class-collision correction (Zhang & Yu 2022, "C3-DINO: Joint
contrastive and non-contrastive self-supervised learning for speaker verification", Tencent AI Lab).

In speaker MoCo the queue holds many keys of the anchor's own speaker (class collision): false
negatives. Three stages, each starting at a configured epoch:

1. plain InfoNCE (MoCo; ``epoch < reweight_start_epoch``);
2. re-weighted InfoNCE: an anchor is *flagged* when its positive is close (q·k⁺ > ``fn_min_pos``,
   0.4) and some queued key is nearly as close as the positive (q·k_j > ``fn_ratio``·q·k⁺, 0.8);
   L = ω1·L_tn + ω2·L_fn with L_tn / L_fn the per-anchor InfoNCE summed over the unflagged /
   flagged anchors and divided by the batch size (so ω1 = ω2 = 1 is plain InfoNCE).
   Optionally (``filter_false_negatives``) the flagged (anchor, key) pairs are also removed from
   the denominator ("false negative pair filtering");
3. + ProtoNCE (Li et al. 2021, PCL): after every epoch from ``proto_start_epoch − 1`` on, the
   momentum features of the whole training set (``EpochContext.embed_training_set`` with the key
   encoder and key projector) are clustered by k-means for each k in ``n_clusters``; an anchor's
   positive prototype is the centroid of its utterance's cluster (looked up by dataset
   ``index``), the other centroids are its negatives, each scaled by its concentration φ;
   L = L_reMoCo + ``proto_weight``·L_ProtoNCE, the ProtoNCE averaged over the clusterings.
   The stage needs both a start (``proto_start_epoch`` or ``proto_start_fraction``) and
   ``n_clusters``: either one without the other is an error, not a silently skipped stage. The
   training set is embedded whole (``cluster_crop_seconds`` unset), in padded batches.

The projection head: the C3/DINO slides' MoCo has "an MLP projection head that maps the latent
representation to an L2-normalised embedding where a contrastive loss is applied" (``projector:
mlp`` in the C3 recipes); the speaker embedding stays the encoder's output.

No clustering runs after the run's last epoch (``EpochContext.is_last_epoch``). Cluster assignments,
prototypes and concentrations are buffers (saved in checkpoints; loading adopts the saved sizes). Under DDP every rank clusters and rank 0's result is broadcast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import broadcast
from .base import EpochContext, replanned_point
from .clustering import concentration, kmeans
from .losses import positive_top1
from .moco import EncodedPairs, MoCo, MoCoOptions
from .options import option
from .registry import register_method

log = logging.getLogger(__name__)
NEVER = 2**31 - 1  # the start epoch of a stage that is not scheduled

__all__ = ["C3MoCo", "C3Options", "false_negative_mask", "false_negative_pairs", "proto_nce", "reweighted_info_nce"]


# ---- equations ----------------------------------------------------------------------------
def cosines(q: Tensor, k_pos: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
    """(q_i·k⁺_i [N], q_i·k_j [N, K]) in float32 (autocast off)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k_pos, queue = q.float(), k_pos.float(), queue.float()
        return (q * k_pos).sum(dim=1), q @ queue.t()


def false_negative_pairs(pos: Tensor, neg: Tensor, ratio: float = 0.8, min_pos: float = 0.4) -> Tensor:
    """F_ij = (q_i·k⁺_i > min_pos) ∧ (q_i·k_j > ratio·q_i·k⁺_i)  — queued key j is a likely false negative of anchor i; [N, K] bool."""
    return (pos > min_pos)[:, None] & (neg > ratio * pos[:, None])


def false_negative_mask(q: Tensor, k_pos: Tensor, queue: Tensor, ratio: float = 0.8, min_pos: float = 0.4) -> Tensor:
    """flag_i = (q_i·k⁺_i > min_pos) ∧ ∃j: q_i·k_j > ratio·q_i·k⁺_i  — anchor i has a likely false negative; [N] bool."""
    pos, neg = cosines(q, k_pos, queue)
    return false_negative_pairs(pos, neg, ratio, min_pos).any(dim=1)


def reweighted_info_nce(per_anchor: Tensor, flagged: Tensor, w_tn: float = 1.0, w_fn: float = 0.5) -> Tensor:
    """L = ω1·L_tn + ω2·L_fn,  L_tn = (1/N) Σ_{i not flagged} ℓ_i,  L_fn = (1/N) Σ_{i flagged} ℓ_i   (C3 re-weighting)."""
    n = per_anchor.shape[0]
    flagged = flagged.to(per_anchor.device)
    l_fn = (per_anchor * flagged).sum() / n
    l_tn = (per_anchor * ~flagged).sum() / n
    return w_tn * l_tn + w_fn * l_fn


def proto_nce(q: Tensor, assignments: Tensor, prototypes: Tensor, phi: Tensor) -> Tensor:
    """L = mean_i −log exp(q_i·c_{a_i}/φ_{a_i}) / Σ_j exp(q_i·c_j/φ_j)   (PCL eq. 11, one clustering, all other clusters as negatives)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q.float() @ prototypes.float().t()) / phi.float()[None]
        return F.cross_entropy(logits, assignments.long())


# ---- method -------------------------------------------------------------------------------
@dataclass
class C3Options(MoCoOptions):
    """MoCo's options plus the stages of class-collision correction."""

    reweight_start_epoch: int = option(10, "first epoch of the re-weighted InfoNCE")
    proto_start_epoch: int | None = option(None, "first epoch of ProtoNCE (clustering ends the epoch before); "
                                                 "unset (and no fraction): no ProtoNCE stage")
    reweight_start_fraction: float | None = option(None, "re-weighting start as a fraction of the planned epochs")
    proto_start_fraction: float | None = option(None, "ProtoNCE start as a fraction of the planned epochs")
    fn_ratio: float = option(0.8, "a queued key is a false negative when q·k > fn_ratio · q·k+")
    fn_min_pos: float = option(0.4, "... and the positive is closer than this (q·k+ > fn_min_pos)")
    tn_weight: float = option(1.0, "ω1, weight of the anchors without a false negative")
    fn_weight: float = option(0.5, "ω2, weight of the anchors with a false negative")
    filter_false_negatives: bool = option(False, "also drop flagged (anchor, key) pairs from the denominator")
    n_clusters: list[int] = option([], "k of each k-means clustering for ProtoNCE (empty: no ProtoNCE)")
    proto_weight: float = option(1.0, "weight of ProtoNCE in the loss")
    proto_temperature: float | None = option(None, "mean prototype concentration; default the InfoNCE τ")
    concentration_alpha: float = option(10.0, "α smoothing the concentration of small clusters (PCL)")
    cluster_iters: int = option(20, "k-means iterations")
    cluster_backend: str = option("torch", "k-means implementation: torch | sklearn")
    cluster_crop_seconds: float | None = option(None, "centred crop embedded for clustering; unset: whole utterances")

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(k < 2 for k in self.n_clusters):
            raise ValueError(f"c3_moco: every n_clusters value must be >= 2, got {self.n_clusters}")
        if self.reweight_start_epoch < 0 or (self.proto_start_epoch or 0) < 0:
            raise ValueError("c3_moco: stage start epochs must be >= 0")
        scheduled = self.proto_start_epoch is not None or self.proto_start_fraction is not None
        if scheduled and self.proto_weight > 0 and not self.n_clusters:
            raise ValueError("c3_moco: a ProtoNCE stage is scheduled (proto_start_epoch / proto_start_fraction) but "
                             "n_clusters is empty: give the k of each clustering, or unset the ProtoNCE start")
        if self.n_clusters and not scheduled:
            raise ValueError("c3_moco: n_clusters is given but no ProtoNCE start: set proto_start_epoch or "
                             "proto_start_fraction")
        for name in ("reweight_start_fraction", "proto_start_fraction"):
            f = getattr(self, name)
            if f is not None and not 0.0 <= f <= 1.0:
                raise ValueError(f"c3_moco: {name} must be in [0, 1], got {f}")
        if self.cluster_backend not in ("torch", "sklearn"):
            raise ValueError(f"c3_moco: cluster_backend must be 'torch' or 'sklearn', got {self.cluster_backend!r}")


@register_method("c3_moco")
class C3MoCo(MoCo):
    """C3-MoCo: MoCo with false-negative re-weighting and ProtoNCE over k-means prototypes, in stages."""

    Options = C3Options
    log_names = ("loss", "pos_cos", "neg_cos", "top1", "fn_frac", "proto_loss")

    def __init__(self, encoder: nn.Module, options: C3Options | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        # stage start epochs live in the checkpoint: a resumed run keeps the starts its re-plans chose
        proto_start = NEVER if o.proto_start_epoch is None else o.proto_start_epoch  # a fraction replaces it
        self.register_buffer("stage_starts", torch.tensor([o.reweight_start_epoch, proto_start]))
        # fractions of the planned epochs, when given, replace the start epochs (see on_schedule)
        self.reweight_start_fraction, self.proto_start_fraction = o.reweight_start_fraction, o.proto_start_fraction
        self.fn_ratio, self.fn_min_pos = o.fn_ratio, o.fn_min_pos
        self.tn_weight, self.fn_weight = o.tn_weight, o.fn_weight
        self.filter_false_negatives = o.filter_false_negatives
        self.n_clusters = [int(k) for k in o.n_clusters]
        self.proto_weight = o.proto_weight
        # PCL scales the mean concentration to the InfoNCE temperature
        self.proto_temperature = self.temperature if o.proto_temperature is None else o.proto_temperature
        self.concentration_alpha, self.cluster_iters = o.concentration_alpha, o.cluster_iters
        self.cluster_backend, self.cluster_crop_seconds = o.cluster_backend, o.cluster_crop_seconds
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("proto_epoch", torch.full((), -1, dtype=torch.long))  # epoch that clustered; -1 none
        dim = self.queue.shape[1]
        for m in range(len(self.n_clusters)):
            self.register_buffer(f"proto_assign_{m}", torch.zeros(0, dtype=torch.long))
            self.register_buffer(f"proto_centroids_{m}", torch.zeros(0, dim))
            self.register_buffer(f"proto_phi_{m}", torch.zeros(0))

    # ---- stages ---------------------------------------------------------------------------
    @property
    def embeds_training_set(self) -> bool:
        return bool(self.n_clusters) or self.ssps is not None

    @staticmethod
    def _stage_start(index: int) -> property:
        """A stage's start epoch, read from and written to the ``stage_starts`` buffer."""
        return property(lambda self: int(self.stage_starts[index]),
                        lambda self, epoch: self.stage_starts.__setitem__(index, epoch))

    reweight_start_epoch = _stage_start(0)
    proto_start_epoch = _stage_start(1)

    def stage(self, epoch: int | None = None) -> int:
        """0: InfoNCE, 1: re-weighted InfoNCE, 2: re-weighted InfoNCE + ProtoNCE (its loss once prototypes exist)."""
        e = int(self.epoch) if epoch is None else epoch
        if self.n_clusters and self.proto_weight > 0 and e >= self.proto_start_epoch:
            return 2
        return 1 if e >= self.reweight_start_epoch else 0

    def on_schedule(self, planned_epochs: int) -> None:
        """Stage starts given as fractions become epochs: start = round(fraction · planned epochs)."""
        # an entered stage is kept: a run in ProtoNCE (prototypes computed) never falls back to InfoNCE
        super().on_schedule(planned_epochs)
        e = int(self.epoch)
        self.reweight_start_epoch = replanned_point(self.reweight_start_epoch, e, self.reweight_start_fraction,
                                                    planned_epochs)
        self.proto_start_epoch = replanned_point(self.proto_start_epoch, e, self.proto_start_fraction, planned_epochs)

    def reweighting(self, epoch: int | None = None) -> bool:
        e = int(self.epoch) if epoch is None else epoch
        return e >= self.reweight_start_epoch

    def has_prototypes(self) -> bool:
        return int(self.proto_epoch) >= 0 and bool(self.n_clusters)

    def clusterings(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """[(assignments [N], prototypes [k, D] unit rows, φ [k])] for each k in n_clusters."""
        return [(getattr(self, f"proto_assign_{m}"), getattr(self, f"proto_centroids_{m}"),
                 getattr(self, f"proto_phi_{m}")) for m in range(len(self.n_clusters))]

    # ---- loss -----------------------------------------------------------------------------
    def _c3_contrast(self, q: Tensor, k: Tensor, queue: Tensor, reweight: bool,
                     own: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pos, neg = cosines(q, k, queue)
        stats_neg = neg.mean()
        if own is not None:  # keys of the anchor's own utterance are neither negatives nor flagged
            neg = neg.masked_fill(own, -torch.inf)
        logits = torch.cat([(pos - self.margin)[:, None], neg], dim=1) / self.temperature
        zeros = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        if reweight:
            pairs = false_negative_pairs(pos, neg, self.fn_ratio, self.fn_min_pos)
            flagged = pairs.any(dim=1)
            if self.filter_false_negatives:
                logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(pairs, float("-inf"))], dim=1)
            per_anchor = F.cross_entropy(logits, zeros, reduction="none")
            loss = reweighted_info_nce(per_anchor, flagged, self.tn_weight, self.fn_weight)
        else:
            flagged = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
            loss = F.cross_entropy(logits, zeros)
        with torch.no_grad():
            top1 = positive_top1(logits, zeros, self.margin, self.temperature)
            stats = torch.stack([pos.mean(), stats_neg, top1, flagged.float().mean()])
        return loss, stats

    def _proto(self, q: Tensor, index: Tensor) -> Tensor:
        losses = []
        for assign, protos, phi in self.clusterings():
            idx = index.to(assign.device).long()
            if idx.numel() and int(idx.max()) >= assign.shape[0]:
                raise ValueError(f"c3_moco: dataset index {int(idx.max())} beyond the {assign.shape[0]} clustered "
                                 "utterances (was the training set changed after clustering?)")
            losses.append(proto_nce(q, assign[idx], protos, phi))
        return torch.stack(losses).mean()

    def loss(self, pairs: EncodedPairs) -> tuple[Tensor, dict[str, float]]:
        """The loss hook: re-weighted InfoNCE (from its stage on) + proto_weight · ProtoNCE (once clustered)."""
        reweight = self.reweighting()
        use_proto = self.stage() == 2 and self.has_prototypes()
        if use_proto and pairs.index is None:
            raise ValueError("c3_moco: ProtoNCE needs the batch's dataset `index`")
        losses, stats, proto_losses = [], [], []
        for q, k in zip(pairs.queries, pairs.keys):
            loss, s = self._c3_contrast(q, k, pairs.queue, reweight, pairs.own)
            if use_proto:
                lp = self._proto(q, pairs.index)
                proto_losses.append(lp.detach())
                loss = loss + self.proto_weight * lp
            losses.append(loss)
            stats.append(s)
        loss = torch.stack(losses).mean()
        proto = torch.stack(proto_losses).mean() if proto_losses else torch.zeros((), device=loss.device)
        values = torch.cat([loss.detach()[None], torch.stack(stats).mean(dim=0), proto[None]]).tolist()
        logs = dict(zip(self.log_names, values))
        logs["stage"] = float(self.stage())
        return loss, logs

    # ---- clustering -----------------------------------------------------------------------
    @torch.no_grad()
    def update_prototypes(self, embeddings: Tensor, seed: int = 0) -> None:
        """k-means of the [N, D] momentum embeddings for each k; stores assignments, unit prototypes and φ."""
        x = F.normalize(embeddings.float(), dim=1)
        device = self.queue.device
        for m, k in enumerate(self.n_clusters):
            if k > x.shape[0]:
                log.warning("c3_moco: n_clusters %d > %d training utterances; using %d", k, x.shape[0], x.shape[0])
                k = x.shape[0]
            centroids, assign = kmeans(x, k, seed + m, n_iter=self.cluster_iters, backend=self.cluster_backend)
            phi = concentration(x, centroids, assign, alpha=self.concentration_alpha,
                                temperature=self.proto_temperature)
            protos = F.normalize(centroids, dim=1)
            protos, assign, phi = (broadcast(t.to(device).contiguous()) for t in (protos, assign, phi))
            setattr(self, f"proto_assign_{m}", assign.long())
            setattr(self, f"proto_centroids_{m}", protos.to(self.queue.dtype))
            setattr(self, f"proto_phi_{m}", phi.float())

    def on_epoch_end(self, context: EpochContext) -> None:
        """Advance the stage counter; before ProtoNCE epochs, cluster the key encoder's embeddings of the training set."""
        super().on_epoch_end(context)  # SSPS, when on
        epoch = context.epoch
        self.epoch.fill_(epoch + 1)
        if self.stage(epoch + 1) != 2 or context.is_last_epoch:  # last epoch: no training left to use prototypes
            return
        if context.embed_training_set is None:
            raise ValueError("c3_moco: on_epoch_end needs the training set's embeddings (embed_training_set) to cluster")
        key_model = nn.Sequential(self.key_encoder, self.key_projector)  # PCL: momentum features
        emb = context.embed_training_set(key_model, crop_seconds=self.cluster_crop_seconds)
        self.update_prototypes(emb, seed=int(self.shuffle_seed) + 7919 * (epoch + 1))
        self.proto_epoch.fill_(epoch)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        state_dict.setdefault(prefix + "stage_starts", self.stage_starts)  # checkpoints from before it was saved
        # prototypes depend on the data size and k: adopt the saved shapes
        for m in range(len(self.n_clusters)):
            for name in (f"proto_assign_{m}", f"proto_centroids_{m}", f"proto_phi_{m}"):
                saved = state_dict.get(prefix + name)
                own = getattr(self, name)
                if saved is not None and saved.shape != own.shape:
                    setattr(self, name, torch.empty(saved.shape, dtype=own.dtype, device=own.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
