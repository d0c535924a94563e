"""Helpers shared by the methods: shape checks, heads, encoding all views in one pass, DDP offsets and means."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_nograd, get_rank, get_world_size
from ..models.heads import build_head
from .options import Options, option


def check_views(name: str, feats: Tensor, min_views: int) -> None:
    """feats must be [B, V ≥ min_views, n_mels, frames]; otherwise an error naming the method."""
    if feats.dim() != 4 or feats.shape[1] < min_views:
        raise ValueError(f"{name}: feats must be [B, V>={min_views}, n_mels, frames], got {tuple(feats.shape)}")


def embed_dim_of(name: str, encoder: nn.Module) -> int:
    """The encoder's output width, or an error naming the method when it does not declare one."""
    if not hasattr(encoder, "embed_dim"):
        raise ValueError(f"{name}: the encoder must have an `embed_dim` attribute")
    return int(encoder.embed_dim)


@dataclass
class ProjectorOptions(Options):
    """The options of a projection head after the encoder (``projection_head``)."""

    projector: str = option("none", "head after the encoder: none | linear | mlp")
    proj_hidden: int = option(2048, "hidden width of the mlp projector")
    proj_dim: int = option(256, "output width of the linear or mlp projector")


def projection_head(method: str, o: ProjectorOptions, in_dim: int) -> nn.Module:
    """``none`` | ``linear`` (→ proj_dim) | ``mlp`` (Linear → BN → ReLU → Linear, proj_hidden → proj_dim)."""
    if o.projector == "none":
        return build_head("none", in_dim)
    if o.projector == "linear":
        return build_head("linear", in_dim, out_dim=o.proj_dim)
    if o.projector == "mlp":
        return build_head("mlp", in_dim, hidden_dim=o.proj_hidden, out_dim=o.proj_dim)
    raise ValueError(f"{method}: projector must be 'none', 'linear' or 'mlp', got {o.projector!r}")


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


def share_of_global_mean(local_sum: Tensor, local_count: Tensor) -> Tensor:
    """Σ_local / (N_global / world): this rank's share of the mean over all ranks' terms (DDP's average
    of it over the ranks is that mean; in one process it is the mean)."""
    total = gather_nograd(local_count.detach().reshape(1).float()).sum()
    return local_sum * get_world_size() / total.clamp(min=1.0)


@torch.no_grad()
def supcon_anchor_count(labels: Tensor) -> Tensor:
    """Local rows SupCon averages over: labelled, with another row of their label in the gathered batch."""
    labels_all = gather_nograd(labels)
    others = (labels[:, None] == labels_all[None, :]).sum(dim=1) - 1  # minus the row itself
    return ((labels >= 0) & (others > 0)).sum()


__all__ = ["ProjectorOptions", "check_views", "embed_dim_of", "encode_views", "local_offset", "projection_head",
           "require_labels",
           "share_of_global_mean", "supcon_anchor_count"]
