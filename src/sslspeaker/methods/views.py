"""Helpers shared by the in-batch methods: shape checks, encoding all views in one pass, DDP offsets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_nograd, get_rank, get_world_size


def check_views(name: str, feats: Tensor, min_views: int) -> None:
    if feats.dim() != 4 or feats.shape[1] < min_views:
        raise ValueError(f"{name}: feats must be [B, V>={min_views}, n_mels, frames], got {tuple(feats.shape)}")


def encode_views(encoder: nn.Module, head: nn.Module, feats: Tensor, normalize: bool = True) -> Tensor:
    """[B, V, n_mels, frames] → [B, V, D]: every view in one forward pass (one BN batch), float32."""
    B, V = feats.shape[:2]
    z = head(encoder(feats.reshape(B * V, *feats.shape[2:]))).float()
    z = F.normalize(z, dim=-1) if normalize else z
    return z.reshape(B, V, -1)


def local_offset(n_local: int) -> int:
    """Row of this rank's first example in a batch gathered in rank order (equal shards)."""
    return get_rank() * n_local


def require_labels(name: str, labels: Tensor | None, n: int) -> Tensor:
    """The batch labels [n] or a clear error when the trainer did not pass them."""
    if labels is None:
        raise ValueError(f"{name}: this method needs speaker labels (needs_labels=True: the trainer reads the "
                         f"manifest's speaker column); forward() got labels=None")
    if labels.shape != (n,):
        raise ValueError(f"{name}: labels must be [{n}], got {tuple(labels.shape)}")
    return labels.long()


def global_mean(local_sum: Tensor, local_count: Tensor) -> Tensor:
    """Σ_local / (N_global / world): DDP's average of this over ranks is the mean over all ranks' terms."""
    total = gather_nograd(local_count.detach().reshape(1).float()).sum()
    return local_sum * get_world_size() / total.clamp(min=1.0)


@torch.no_grad()
def supcon_anchor_count(labels: Tensor) -> Tensor:
    """Local rows SupCon averages over: labelled, with another row of their label in the gathered batch."""
    labels_all = gather_nograd(labels)
    others = (labels[:, None] == labels_all[None, :]).sum(dim=1) - 1  # minus the row itself
    return ((labels >= 0) & (others > 0)).sum()


__all__ = ["check_views", "encode_views", "global_mean", "local_offset", "require_labels", "supcon_anchor_count"]
