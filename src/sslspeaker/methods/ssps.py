"""SSPS: self-supervised positive sampling (Lepage & Dehak 2025, "SSPS: Self-Supervised Positive
Sampling for Robust Self-Supervised Speaker Verification", Interspeech 2025; and "Self-Supervised
Frameworks for Speaker Verification via Bootstrapped Positive Sampling", arXiv 2501.17772).

Standard SSL pairs two crops of one recording: they share its channel, which the encoder can
learn instead of the speaker. SSPS takes an anchor's positive from *another* utterance that is
close to it in the representation space, assumed to be the same speaker in another recording:

Implemented for SimCLR, the MoCo family and DINO (``ssps: true`` in their options).

1. reference representations: every training utterance embedded without augmentation by the
   method's inference encoder, and clustered by k-means into ``ssps_clusters`` clusters (the
   papers' KMEANS_REPR sampling; sslsv's defaults K = 50,000, 10 k-means iterations);
2. a memory of positive embeddings Q' (the embeddings the loss compares an anchor with, each
   with its utterance's index): MoCo's own queue of keys, or a queue of ``ssps_queue_size``
   (50,000 in sslsv) second-view projections for SimCLR, or of first-view teacher embeddings for
   DINO (the teacher's head then gives the pseudo-positive's target distribution);
3. for anchor i the positive is a queued positive j drawn uniformly among those whose utterance
   is in i's cluster and is not i itself (the papers' intra-cluster sampling over the whole
   cluster, inter-cluster window M = 0); an anchor without such a candidate keeps its own
   positive (its second crop).

SSPS starts at ``ssps_start_epoch`` (sslsv: epoch 100 of its 200-epoch runs; or
``ssps_start_fraction`` of the planned epochs), the clustering before it and after every epoch.

One departure, said so: the papers embed a longer unaugmented *reference frame* of each utterance at
every step and keep a queue of those; here the reference representations are the whole utterances
embedded once per epoch (``Trainer.embed_training_set``), which is the same information at most an
epoch old (the papers' reference queue is also up to its length old).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import broadcast, gather_nograd
from .base import EpochContext, replanned_point
from .clustering import kmeans
from .options import Options, option

__all__ = ["PositiveSampler", "SSPSOptions", "pseudo_positive_candidates", "sample_candidates"]

NEVER = 2**31 - 1


@dataclass
class SSPSOptions(Options):
    """The options of self-supervised positive sampling (off unless ``ssps: true``)."""

    ssps: bool = option(False, "self-supervised positive sampling: positives from nearby utterances (SSPS)")
    ssps_start_epoch: int = option(100, "first epoch with sampled positives (sslsv: 100 of 200)")
    ssps_start_fraction: float | None = option(None, "SSPS start as a fraction of the planned epochs")
    ssps_clusters: int = option(50000, "k-means clusters of the reference embeddings (sslsv: 50,000; at most N)")
    ssps_kmeans_iters: int = option(10, "k-means iterations of each clustering (sslsv: 10)")
    ssps_queue_size: int = option(50000, "SimCLR: queued positive embeddings Q' (sslsv: 50,000)")

    def __post_init__(self) -> None:
        if self.ssps_start_epoch < 0 or self.ssps_clusters < 2 or self.ssps_kmeans_iters < 1 \
                or self.ssps_queue_size < 1:
            raise ValueError("ssps: need ssps_start_epoch >= 0, ssps_clusters >= 2, ssps_kmeans_iters >= 1 "
                             "and ssps_queue_size >= 1")
        if self.ssps_start_fraction is not None and not 0.0 <= self.ssps_start_fraction <= 1.0:
            raise ValueError(f"ssps: ssps_start_fraction must be in [0, 1], got {self.ssps_start_fraction}")


# ---- equations ----------------------------------------------------------------------------
def pseudo_positive_candidates(anchor_index: Tensor, anchor_cluster: Tensor, queue_index: Tensor,
                               queue_cluster: Tensor) -> Tensor:
    """C_ij = (c(u_j) = c(u_i)) ∧ (u_j ≠ u_i) ∧ (u_j known, c(u_j) ≥ 0): queued positive j may stand in for anchor i's; [B, Q] bool."""
    same = queue_cluster[None, :] == anchor_cluster[:, None]
    known = (queue_index >= 0) & (queue_cluster >= 0)
    return same & known[None, :] & (queue_index[None, :] != anchor_index[:, None]) & (anchor_cluster >= 0)[:, None]


def sample_candidates(candidates: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """j_i ~ Uniform{j : C_ij} for each row i: (choice [B] long, found [B] bool = ∃j C_ij)."""
    u = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    choice = u.masked_fill(~candidates, -1.0).argmax(dim=1)
    return choice, candidates.any(dim=1)


# ---- the sampler ------------------------------------------------------------------------------
class PositiveSampler(nn.Module):
    """Clusters of the training set's reference embeddings, the stage's start, and (for methods
    without a queue of their own) the queue of positive embeddings Q'. All state is in buffers."""

    def __init__(self, options: SSPSOptions, dim: int, own_queue: bool) -> None:
        super().__init__()
        self.options = options
        self.register_buffer("start", torch.tensor(options.ssps_start_epoch, dtype=torch.long))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("assign", torch.zeros(0, dtype=torch.long))  # cluster per training utterance
        if own_queue:
            self.register_buffer("queue", torch.zeros(options.ssps_queue_size, dim))
            self.register_buffer("queue_index", torch.full((options.ssps_queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def active(self) -> bool:
        """Sampled positives this epoch: the stage has started and a clustering exists."""
        return int(self.epoch) >= int(self.start) and self.assign.numel() > 0

    def on_schedule(self, planned_epochs: int) -> None:
        """A start given as a fraction follows the planned epochs (kept once passed)."""
        self.start.fill_(replanned_point(int(self.start), int(self.epoch), self.options.ssps_start_fraction,
                                         planned_epochs))

    @torch.no_grad()
    def on_epoch_end(self, context: EpochContext, encoder: nn.Module, seed: int) -> None:
        """Advance the epoch; from the epoch before the start on, re-cluster the reference embeddings."""
        self.epoch.fill_(context.epoch + 1)
        if int(self.epoch) < int(self.start) or context.is_last_epoch:
            return
        if context.embed_training_set is None:
            raise ValueError("ssps: needs the training set's embeddings (embed_training_set) to cluster")
        ref = context.embed_training_set(encoder)  # whole utterances, no augmentation
        k = min(self.options.ssps_clusters, ref.shape[0])
        _, assign = kmeans(ref, k, seed=seed + 7919 * int(self.epoch), n_iter=self.options.ssps_kmeans_iters)
        self.assign = broadcast(assign.to(self.epoch.device).long().contiguous())  # rank 0's on every rank

    def clusters_of(self, index: Tensor) -> Tensor:
        """c(u) of dataset indices (−1 for unknown ones)."""
        index = index.to(self.assign.device).long()
        ok = (index >= 0) & (index < self.assign.numel())
        return torch.where(ok, self.assign[index.clamp(0, max(0, self.assign.numel() - 1))], -1)

    def sample(self, index: Tensor, queue: Tensor, queue_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For anchors of dataset indices ``index`` [B]: (pseudo-positives [B, D] from ``queue``, found [B],
        the chosen queue rows [B])."""
        cand = pseudo_positive_candidates(index.to(queue_index.device).long(), self.clusters_of(index),
                                          queue_index, self.clusters_of(queue_index))
        choice, found = sample_candidates(cand)
        return queue[choice], found, choice

    @torch.no_grad()
    def enqueue(self, emb: Tensor, index: Tensor, normalize: bool = True) -> None:
        """Q' ← the global batch's positive embeddings (unit rows unless ``normalize`` is False) and their
        indices, over the oldest entries (FIFO)."""
        emb, index = gather_nograd(emb.detach()), gather_nograd(index.long())
        size = self.queue.shape[0]
        emb, index = emb[-size:], index[-size:]
        rows = (self.queue_ptr + torch.arange(emb.shape[0], device=self.queue.device)) % size
        self.queue[rows] = (F.normalize(emb.float(), dim=1) if normalize else emb.float()).to(self.queue.dtype)
        self.queue_index[rows] = index.to(self.queue_index.device)
        self.queue_ptr.add_(emb.shape[0]).remainder_(size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        saved = state_dict.get(prefix + "assign")
        if saved is not None and saved.shape != self.assign.shape:  # adopt the saved clustering's size
            self.assign = torch.empty(saved.shape, dtype=self.assign.dtype, device=self.assign.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
