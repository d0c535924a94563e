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

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import broadcast, gather_nograd, get_rank, get_world_size
from .base import EpochContext, Method
from .losses import contrastive_logits, positive_cross_entropy, positive_top1
from .options import option
from .registry import register_method
from .ssps import PositiveSampler, SSPSOptions
from .views import check_views, embed_dim_of

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


def keys_per_epoch(n_examples: int, global_batch_size: int, symmetric: bool) -> int:
    """Keys enqueued in one epoch: full batches only, two keys per utterance when symmetric."""
    return max(n_examples // global_batch_size, 1) * global_batch_size * (2 if symmetric else 1)


@dataclass
class MoCoOptions(SSPSOptions):
    """MoCo's options."""

    queue_size: int = option(65536, "negatives kept in the FIFO queue (clamped to one epoch of keys)")
    momentum: float = option(0.999, "key encoder EMA coefficient m (MoCo eq. 2)")
    temperature: float = option(0.07, "InfoNCE temperature τ")
    margin: float = option(0.0, "additive margin subtracted from the positive cosine")
    projector: str = option("none", "head after the encoder: none | mlp")
    proj_hidden: int = option(2048, "hidden width of the mlp projector")
    proj_dim: int = option(128, "output width of the mlp projector")
    symmetric: bool = option(False, "also use view 1 as query and view 0 as key")
    exclude_own_keys: bool = option(True, "queued keys of the query's own utterance are not negatives")
    bn_splits: int | None = option(None, "BN sub-batches per rank (shuffle BN); default 4, 1 under DDP")
    seed: int | None = option(None, "queue and key-shuffle seed; default the trainer's torch seed")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projector not in ("none", "mlp"):
            raise ValueError(f"moco: projector must be 'none' or 'mlp', got {self.projector!r}")
        if self.queue_size < 1 or not 0.0 <= self.momentum <= 1.0 or self.temperature <= 0.0:
            raise ValueError(f"moco: need queue_size >= 1, 0 <= momentum <= 1, temperature > 0; got "
                             f"{self.queue_size}, {self.momentum}, {self.temperature}")
        if self.bn_splits is not None and self.bn_splits < 1:
            raise ValueError(f"moco: bn_splits must be >= 1, got {self.bn_splits}")


@dataclass
class EncodedPairs:
    """What MoCo's forward hands the loss hook: queries and keys of each (query view, key view) pair."""

    queries: list[Tensor]  # [B, D] each, unit rows, with gradients
    keys: list[Tensor]  # [B, D] each, unit rows, momentum encoder (no gradients)
    queue: Tensor  # [K, D] the negatives before this batch's keys were enqueued
    own: Tensor | None  # [B, K] bool: queued key of the query's own utterance (None: not excluded)
    labels: Tensor | None  # [B] as the trainer passed them
    index: Tensor | None  # [B] dataset indices


@register_method("moco")
class MoCo(Method):
    """MoCo/MoCoVox: InfoNCE between two segments of an utterance, negatives from a momentum-encoded queue."""

    Options = MoCoOptions
    wants = ("index",)  # dataset indices: keys of the query's own utterance are not negatives
    momentum_pairs = (("encoder", "key_encoder"), ("projector", "key_projector"))
    sync_batchnorm = False  # never: the shuffled key sub-batches exist to keep BN statistics apart
    log_names = ("loss", "pos_cos", "neg_cos", "top1")

    def __init__(self, encoder: nn.Module, options: MoCoOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        embed_dim = embed_dim_of(self.name, encoder)
        self.momentum, self.temperature, self.margin = o.momentum, o.temperature, o.margin
        self.symmetric, self._bn_splits, self.exclude_own_keys = o.symmetric, o.bn_splits, o.exclude_own_keys
        self.projector = mlp_projector(embed_dim, o.proj_hidden, o.proj_dim) if o.projector == "mlp" else nn.Identity()
        self.make_momentum_copies()
        self._init_queue(o.queue_size, o.proj_dim if o.projector == "mlp" else embed_dim, o.seed)
        # SSPS: a query's key may be a queued key of a nearby utterance (methods/ssps.py)
        self.ssps = PositiveSampler(o, self.queue.shape[1], own_queue=False) if o.ssps else None

    def _init_queue(self, size: int, dim: int, seed: int | None) -> None:
        # Default: the trainer's torch.manual_seed, identical on every rank, so all ranks start
        # from the same queue and shuffle stream without a broadcast.
        seed = (torch.initial_seed() if seed is None else seed) & (2**63 - 1)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("queue_index", torch.full((size,), -1, dtype=torch.long))  # -1: unknown
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("shuffle_seed", torch.tensor(seed, dtype=torch.long))
        self.register_buffer("shuffle_count", torch.zeros((), dtype=torch.long))

    @classmethod
    def fit_options_to_pool(cls, options: dict, n_examples: int, batch_size: int) -> dict:
        """``queue_size`` capped at the keys one epoch of ``n_examples`` enqueues (see ``clamp_queue``)."""
        fitted = dict(options)
        limit = keys_per_epoch(n_examples, batch_size, bool(fitted.get("symmetric", False)))
        if int(fitted.get("queue_size", cls.Options.queue_size)) > limit:
            fitted["queue_size"] = limit
        return fitted

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

    # ---- the forward: a template around one loss hook --------------------------------------
    def forward(self, feats: Tensor, labels: Tensor | None = None,
                index: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥2, n_mels, frames], index: dataset indices [B] (optional); returns (loss, logs)
        from ``loss`` and, when training, enqueues the keys."""
        check_views(self.name, feats, 2)
        # (query view, key view): [B, n_mels, frames] each; the symmetric loss swaps them too
        views = [(feats[:, 0], feats[:, 1])] + ([(feats[:, 1], feats[:, 0])] if self.symmetric else [])
        own = self.own_keys(index)  # [B, K] bool or None, against the queue before this batch
        queue = self.queue.clone()  # [K, D]: enqueue overwrites the buffer before backward needs it
        queries, keys, new_keys = [], [], []
        for xq, xk in views:
            queries.append(self.encode_queries(xq))  # [B, D], gradients
            k, k_all = self.encode_keys(xk)  # [B, D] local keys, [world·B, D] keys of the global batch
            keys.append(k)
            new_keys.append(k_all)
        if self.ssps is not None and self.ssps.active() and index is not None:
            keys, own = self.sampled_keys(keys, own, queue, index)
        loss, logs = self.loss(EncodedPairs(queries, keys, queue, own, labels, index))
        if self.training:
            self.enqueue(torch.cat(new_keys), self.key_indices(index, len(views)))
        return loss, logs

    def sampled_keys(self, keys: list[Tensor], own: Tensor | None, queue: Tensor,
                     index: Tensor) -> tuple[list[Tensor], Tensor]:
        """SSPS: where a queued key of a nearby utterance was drawn it is the positive (for every pair) and
        leaves the negatives; elsewhere the query keeps its own key."""
        pseudo, found, choice = self.ssps.sample(index, queue, self.queue_index)
        own = torch.zeros(index.shape[0], queue.shape[0], dtype=torch.bool, device=queue.device) if own is None \
            else own.clone()
        rows = torch.arange(index.shape[0], device=queue.device)[found]
        own[rows, choice[found]] = True
        f = found[:, None].to(queue.device)
        return [torch.where(f, pseudo.to(k.dtype), k) for k in keys], own

    def on_epoch_end(self, context: EpochContext) -> None:
        """SSPS: the reference clustering of the training set (from the epoch before its start on)."""
        if self.ssps is not None:
            self.ssps.on_epoch_end(context, self.inference_encoder(), seed=int(self.shuffle_seed))

    def on_schedule(self, planned_epochs: int) -> None:
        if self.ssps is not None:
            self.ssps.on_schedule(planned_epochs)

    def loss(self, pairs: EncodedPairs) -> tuple[Tensor, dict[str, float]]:
        """The loss hook: InfoNCE of each pair against the queue, averaged over the pairs."""
        parts = [self._contrast(q, k, pairs.queue, pairs.own) for q, k in zip(pairs.queries, pairs.keys)]
        loss = torch.stack([p[0] for p in parts]).mean()
        values = torch.stack([p[1] for p in parts]).mean(dim=0).tolist()  # one device sync for all logs
        return loss, dict(zip(self.log_names, values))

    def own_keys(self, index: Tensor | None) -> Tensor | None:
        """[N, K] bool: queued key j comes from query i's own utterance (None when not excluded/unknown)."""
        if not self.exclude_own_keys or index is None:
            return None
        return self.queue_index[None, :] == index.to(self.queue_index.device).long()[:, None]

    def _contrast(self, q: Tensor, k: Tensor, queue: Tensor, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(InfoNCE of queries q [B, D] with positives k [B, D] and negatives queue [K, D], 4 logged stats)."""
        logits = contrastive_logits(q, k, queue, self.temperature, self.margin)
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

    def momentum_at(self, step: int, total_steps: int) -> float:
        """θ_k ← m·θ_k + (1−m)·θ_q (MoCo eq. 2) with a constant m, for the key encoder and key projector."""
        return self.momentum

    def on_train_start(self, n_train_examples: int, global_batch_size: int) -> None:
        self.clamp_queue(n_train_examples, global_batch_size)

    def clamp_queue(self, n_train_examples: int, global_batch_size: int) -> int:
        """Shrink K to the largest multiple of the keys per step covering ≤ n_train_examples utterances.

        A longer queue would hold two keys of one utterance (from successive epochs): false
        negatives. Call before wrapping in DDP (the buffer is replaced). Returns the new K.
        """
        per_utt = 2 if self.symmetric else 1
        limit = keys_per_epoch(n_train_examples, global_batch_size, self.symmetric)
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
