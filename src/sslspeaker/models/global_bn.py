"""Batch normalisation with statistics over the global batch of all ranks (SyncBatchNorm on any device).

Under DDP each rank normalises with its own batch's statistics unless its BN layers are converted.
Methods whose loss compares embeddings across the whole batch (SimCLR, DINO: the reference DINO
converts BN to SyncBN) declare ``Method.sync_batchnorm = True`` and the trainer converts their
modules with ``convert_to_global_bn`` before wrapping them in DDP. On CUDA (and the other devices
torch's ``nn.SyncBatchNorm`` supports) that is torch's layer; elsewhere (the CPU with gloo, as in
tests and CPU clusters) it is ``GlobalBatchNorm`` below, whose statistics are

    μ_c = Σ_r Σ_i x_ric / N,   σ²_c = Σ_r Σ_i x²_ric / N − μ_c²,   N = Σ_r n_r

all-reduced with autograd (``torch.distributed.nn.functional.all_reduce``), so the gradients flow
through the global mean and variance as in one process holding the whole batch. Running
statistics follow ``nn.BatchNorm`` (unbiased variance, ``momentum``, or the cumulative average
when momentum is None). In eval mode, or in a single process, it is plain batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["GlobalBatchNorm", "convert_to_global_bn", "global_batch_stats"]

TORCH_SYNC_DEVICES = ("cuda", "xpu", "hpu")


def global_batch_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(μ [C], σ² [C] biased, N) over dims 0 and 2.. of x on every rank: sums all-reduced with autograd."""
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]
    xf = x.float()
    count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
    stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
    c = x.shape[1]
    n = stats[-1]
    mean = stats[:c] / n
    return mean, (stats[c:2 * c] / n - mean * mean).clamp_min(0.0), n


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over [N, C, ...] inputs whose training statistics are those of every rank's batch together."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected an input of 2 or more dimensions, got {input.dim()}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        mean, var, n = global_batch_stats(x)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean.detach(), var.detach(), n.detach())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp_min(1.0)
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)


def convert_to_global_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by one over the global batch (weights and buffers kept)."""
    if device.type in TORCH_SYNC_DEVICES:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        bn = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        if module.affine:
            bn.weight.requires_grad_(module.weight.requires_grad)
            bn.bias.requires_grad_(module.bias.requires_grad)
        return bn.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        new = _convert(child)
        if new is not child:
            setattr(module, name, new)
    return module
