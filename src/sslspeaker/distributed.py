"""Small torch.distributed helpers that degrade to no-ops in a single process.

Gathers concatenate along dim 0 in rank order and need the same shape on every rank
(the trainer's sampler pads / drops the last batch so this holds).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return get_rank() == 0


@torch.no_grad()
def gather_nograd(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along dim 0 (rank order); no gradient flows back."""
    if get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    # Every rank's loss may depend on every shard, so the gradient for the local shard is the
    # sum over ranks of the gradient w.r.t. that slice of the gathered tensor. DDP then averages
    # parameter gradients, which gives the gradient of the mean of the per-rank losses.
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = get_rank() * ctx.n
        return grad[start : start + ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along dim 0; gradients flow back to the local shard."""
    if get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """``x`` as held by rank ``src``, on every rank (in place)."""
    if get_world_size() > 1:
        dist.broadcast(x, src)
    return x
