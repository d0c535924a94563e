"""MoCo (He et al. 2020) for speakers as in MoCoVox (Lee, Koh & Yoon 2020).

View 0 of each utterance is the query, view 1 its positive key (another segment of the same
utterance); the negatives are a FIFO queue of keys from earlier batches, all encoded by a
momentum copy of the query encoder. Extra views (V > 2) are ignored.

Batch-norm leakage ("shuffle BN"): with batch statistics a query and its key computed over the
same set of utterances share a batch signature that the positive has and the queued negatives
lack, so the task can be solved without learning speakers. Queries are therefore encoded in
``bn_splits`` contiguous sub-batches of each rank's batch (as each GPU does in multi-GPU MoCo),
and keys in sub-batches of a random permutation of the global batch (gathered from all ranks).
A query's BN batch and its key's BN batch are thus different random subsets; on one device
with ``bn_splits = 4`` this emulates four GPUs. Under DDP the ranks already provide the
split, so the default there is 1 (a larger value further splits each rank's shard).
In eval mode BN uses running statistics: nothing is shuffled, queued or counted.

Own keys (``exclude_own_keys``, default on): the queue remembers each key's dataset index, and
a query's logits exclude queued keys of its own utterance. When the queue holds about an
epoch of keys (small data: the queue is clamped to the data size) about half the queries would
otherwise meet a key of their own utterance, from the previous epoch, among the negatives.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import broadcast, gather_nograd, get_rank, get_world_size
from .base import Method, momentum_update_
from .losses import contrastive_logits, positive_cross_entropy, positive_top1
from .registry import register_method

log = logging.getLogger(__name__)


def mlp_projector(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """MoCo v2 style head: Linear → BN → ReLU → Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


def shuffle_permutation(n: int, seed: int, count: int) -> Tensor:
    """Permutation number ``count`` of the key-shuffle stream seeded by ``seed`` (CPU, int64)."""
    # Reseeding from (seed, count) makes the stream's whole state two integers (saveable buffers).
    g = torch.Generator().manual_seed((seed * 1_000_003 + count) & (2**63 - 1))
    return torch.randperm(n, generator=g)


@register_method("moco")
class MoCo(Method):
    """MoCo/MoCoVox: InfoNCE between two segments of an utterance, negatives from a momentum-encoded queue."""

    wants = ("index",)  # dataset indices: keys of the query's own utterance are not negatives

    def __init__(
        self,
        encoder: nn.Module,
        *,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.07,
        margin: float = 0.0,
        projector: str = "none",
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        symmetric: bool = False,
        exclude_own_keys: bool = True,
        bn_splits: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(encoder)
        if projector not in ("none", "mlp"):
            raise ValueError(f"moco: projector must be 'none' or 'mlp', got {projector!r}")
        if queue_size < 1 or not 0.0 <= momentum <= 1.0 or temperature <= 0.0:
            raise ValueError(f"moco: need queue_size >= 1, 0 <= momentum <= 1, temperature > 0; got "
                             f"{queue_size}, {momentum}, {temperature}")
        if bn_splits is not None and bn_splits < 1:
            raise ValueError(f"moco: bn_splits must be >= 1, got {bn_splits}")
        if not hasattr(encoder, "embed_dim"):
            raise ValueError("moco: the encoder must have an `embed_dim` attribute")
        embed_dim = int(encoder.embed_dim)
        self.momentum, self.temperature, self.margin = momentum, temperature, margin
        self.symmetric, self._bn_splits = symmetric, bn_splits
        self.exclude_own_keys = exclude_own_keys
        self.projector = mlp_projector(embed_dim, proj_hidden, proj_dim) if projector == "mlp" else nn.Identity()
        dim = proj_dim if projector == "mlp" else embed_dim

        self.key_encoder = copy.deepcopy(encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for p in [*self.key_encoder.parameters(), *self.key_projector.parameters()]:
            p.requires_grad_(False)

        # Default: the trainer's torch.manual_seed, identical on every rank, so all ranks start
        # from the same queue and shuffle stream without a broadcast.
        seed = (torch.initial_seed() if seed is None else seed) & (2**63 - 1)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=g), dim=1))
        self.register_buffer("queue_index", torch.full((queue_size,), -1, dtype=torch.long))  # -1: unknown
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("shuffle_seed", torch.tensor(seed, dtype=torch.long))
        self.register_buffer("shuffle_count", torch.zeros((), dtype=torch.long))

    @property
    def bn_splits(self) -> int:
        """BN sub-batches per rank; default 4 in a single process, 1 under DDP (the ranks split)."""
        if self._bn_splits is not None:
            return self._bn_splits
        return 4 if get_world_size() == 1 else 1

    # ---- encoding -------------------------------------------------------------------------
    def _embed(self, encoder: nn.Module, projector: nn.Module, x: Tensor) -> Tensor:
        return F.normalize(projector(encoder(x)).float(), dim=1)

    def _embed_split(self, encoder: nn.Module, projector: nn.Module, x: Tensor) -> Tensor:
        """Embeddings of ``x`` computed in ``bn_splits`` contiguous sub-batches (separate BN statistics)."""
        # at least 2 rows per sub-batch: BatchNorm1d on [1, C] (MLP head) has no batch statistics
        n = max(1, min(self.bn_splits, x.shape[0] // 2)) if self.training else 1
        return torch.cat([self._embed(encoder, projector, c) for c in x.tensor_split(n)])

    def encode_queries(self, x: Tensor) -> Tensor:
        """L2-normalised queries for the local batch x: [B, n_mels, frames] → [B, D]."""
        return self._embed_split(self.encoder, self.projector, x)

    @torch.no_grad()
    def encode_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised keys for the local batch and for the global batch (rank order), with shuffle BN.

        In eval mode: no shuffle, and the second value is the local keys too (nothing is enqueued).
        """
        if not self.training:
            k = self._embed(self.key_encoder, self.key_projector, x)
            return k, k
        world, rank = get_world_size(), get_rank()
        x_all = gather_nograd(x)
        perm = self._next_permutation(x_all.shape[0], x.device)
        shard = perm.tensor_split(world)[rank]
        k_shuffled = gather_nograd(self._embed_split(self.key_encoder, self.key_projector, x_all[shard]))
        k_all = torch.empty_like(k_shuffled)
        k_all[perm] = k_shuffled  # unshuffle: row perm[j] of the batch was encoded at position j
        return k_all.tensor_split(world)[rank], k_all

    def _next_permutation(self, n: int, device: torch.device) -> Tensor:
        perm = shuffle_permutation(n, int(self.shuffle_seed), int(self.shuffle_count)).to(device)
        self.shuffle_count += 1
        return broadcast(perm)  # rank 0's permutation is authoritative

    # ---- loss -----------------------------------------------------------------------------
    def own_keys(self, index: Tensor | None) -> Tensor | None:
        """[N, K] bool: queued key j comes from query i's own utterance (None when not excluded/unknown)."""
        if not self.exclude_own_keys or index is None:
            return None
        return self.queue_index[None, :] == index.to(self.queue_index.device).long()[:, None]

    def _contrast(self, q: Tensor, k: Tensor, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # clone: the queue is overwritten in place (enqueue) before backward needs it
        logits = contrastive_logits(q, k, self.queue.clone(), self.temperature, self.margin)
        # own keys leave the denominator (−inf); the logged means are over all queued keys
        masked = logits if own is None else torch.cat([logits[:, :1], logits[:, 1:].masked_fill(own, -torch.inf)], 1)
        loss = positive_cross_entropy(masked)  # == info_nce(q, k, queue, τ, margin) without own keys
        with torch.no_grad():
            stats = torch.stack([
                loss.detach(),
                logits[:, 0].mean() * self.temperature + self.margin,
                logits[:, 1:].mean() * self.temperature,
                positive_top1(masked, torch.zeros_like(masked[:, 0], dtype=torch.long), self.margin, self.temperature),
            ])
        return loss, stats

    def forward(self, feats: Tensor, labels: Tensor | None = None,
                index: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥2, n_mels, frames], index: dataset indices [B] (optional); returns (InfoNCE loss, logs)
        and enqueues the keys when training."""
        if feats.dim() != 4 or feats.shape[1] < 2:
            raise ValueError(f"moco: feats must be [B, V>=2, n_mels, frames], got {tuple(feats.shape)}")
        pairs = [(feats[:, 0], feats[:, 1])] + ([(feats[:, 1], feats[:, 0])] if self.symmetric else [])
        own = self.own_keys(index)
        losses, stats, new_keys = [], [], []
        for xq, xk in pairs:
            q = self.encode_queries(xq)
            k, k_all = self.encode_keys(xk)
            loss, s = self._contrast(q, k, own)
            losses.append(loss)
            stats.append(s)
            new_keys.append(k_all)
        if self.training:
            self.enqueue(torch.cat(new_keys), self.key_indices(index, len(pairs)))
        loss = torch.stack(losses).mean()
        values = torch.stack(stats).mean(dim=0).tolist()  # one device sync for all logs
        return loss, dict(zip(("loss", "pos_cos", "neg_cos", "top1"), values))

    # ---- state updates --------------------------------------------------------------------
    @staticmethod
    def key_indices(index: Tensor | None, repeats: int) -> Tensor | None:
        """Dataset indices of the global batch's keys in enqueue order (rank order, once per pair)."""
        return None if index is None else gather_nograd(index.long()).repeat(repeats)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, index: Tensor | None = None) -> None:
        """Write keys (and their dataset indices, −1 if unknown) over the oldest queue entries (FIFO,
        wrapping); keeps the newest K if more."""
        size, n = self.queue.shape[0], keys.shape[0]
        index = torch.full((n,), -1, dtype=torch.long) if index is None else index.long()
        if n > size:
            self.queue_ptr.add_(n - size).remainder_(size)
            keys, index, n = keys[n - size :], index[n - size :], size
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_index[idx] = index.to(self.queue_index.device)
        self.queue_ptr.add_(n).remainder_(size)

    def after_step(self, step: int, total_steps: int) -> None:
        """θ_k ← m·θ_k + (1−m)·θ_q (MoCo eq. 2) for the key encoder and key projector."""
        momentum_update_(self.key_encoder, self.encoder, self.momentum)
        momentum_update_(self.key_projector, self.projector, self.momentum)

    def on_train_start(self, n_train_examples: int, global_batch_size: int) -> None:
        self.clamp_queue(n_train_examples, global_batch_size)

    def clamp_queue(self, n_train_examples: int, global_batch_size: int) -> int:
        """Shrink K to the largest multiple of the keys per step covering ≤ n_train_examples utterances.

        A longer queue would hold two keys of one utterance (from successive epochs): false
        negatives. Call before wrapping in DDP (the buffer is replaced). Returns the new K.
        """
        per_utt = 2 if self.symmetric else 1
        limit = max(n_train_examples // global_batch_size, 1) * global_batch_size * per_utt
        size = self.queue.shape[0]
        if size <= limit:
            return size
        log.warning(
            "moco: queue_size %d > %d keys per epoch (%d training utterances, global batch %d): repeated "
            "keys of one utterance would be false negatives; clamping the queue to %d",
            size, n_train_examples * per_utt, n_train_examples, global_batch_size, limit,
        )
        self.queue = self.queue[:limit].clone()
        self.queue_index = self.queue_index[:limit].clone()
        self.queue_ptr.remainder_(limit)
        return limit

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # A checkpoint written after clamp_queue has a shorter queue: adopt its length.
        saved = state_dict.get(prefix + "queue")
        size, dim = self.queue.shape
        if saved is not None and saved.dim() == 2 and saved.shape[1] == dim and saved.shape[0] != size:
            self.queue = torch.empty(saved.shape, dtype=self.queue.dtype, device=self.queue.device)
            self.queue_index = torch.empty(saved.shape[0], dtype=torch.long, device=self.queue.device)
        if saved is not None and prefix + "queue_index" not in state_dict:  # written before own-key exclusion
            state_dict[prefix + "queue_index"] = torch.full((saved.shape[0],), -1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
