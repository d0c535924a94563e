"""Projection heads, kept apart from the encoders: a training method picks its head, and
``embed`` always returns the encoder's output, never the head's.

``build_head(name, in_dim, **opts)``; every head has ``in_dim`` and ``out_dim``.
  none    identity
  linear  Linear(in_dim, out_dim)
  mlp     Linear -> BN -> ReLU -> Linear [-> BN]     (SimCLR / MoCo v2 / BYOL style)
  dino    3-layer MLP with GELU -> bottleneck -> L2-norm -> weight-normalised Linear to K
          (Caron et al. 2021)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class IdentityHead(nn.Identity):
    def __init__(self, in_dim: int):
        super().__init__()
        self.in_dim = self.out_dim = in_dim


class LinearHead(nn.Linear):
    def __init__(self, in_dim: int, out_dim: int | None = None, bias: bool = True):
        super().__init__(in_dim, out_dim or in_dim, bias=bias)
        self.in_dim, self.out_dim = in_dim, out_dim or in_dim


class MLPHead(nn.Sequential):
    """Linear -> BN -> ReLU -> Linear, optionally a final affine-free BN (SimSiam/BYOL-style output)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, last_bn: bool = False):
        layers = [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                  nn.Linear(hidden_dim, out_dim)]
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU between) -> L2-norm -> weight-normalised
    Linear(bottleneck, K, no bias).

    Weight norm: each output row is w_k = g_k v_k / |v_k|. With ``norm_last_layer`` g is fixed at
    1, so the logits are cosines between the normalised bottleneck and K unit prototypes; DINO
    found this stabilises training. ``last_layer`` is the module to freeze in the first epoch.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        dims = [in_dim, hidden_dim, hidden_dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if use_bn else []), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0  # [K, 1] row gains
        g.data.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


_HEADS = {"none": IdentityHead, "linear": LinearHead, "mlp": MLPHead, "dino": DINOHead}


def build_head(name: str, in_dim: int, **opts) -> nn.Module:
    """Head ``name`` ("none", "linear", "mlp", "dino") on ``in_dim``-d encoder embeddings."""
    try:
        cls = _HEADS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known: {', '.join(_HEADS)}") from None
    return cls(in_dim, **opts)


def list_heads() -> list[str]:
    return sorted(_HEADS)
