"""The interface every training objective implements; the shared trainer calls only this."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Method(nn.Module):
    """A self-supervised (or supervised) training objective around an encoder."""

    needs_labels: bool = False
    # Extra batch fields passed to ``forward`` as keyword arguments when listed here:
    # "index" (dataset indices [B], e.g. cluster look-ups) and "local_feats"
    # ([B, V_local, n_mels, frames_local], multi-crop methods such as DINO).
    wants: tuple[str, ...] = ()

    def __init__(self, encoder: nn.Module, **options: Any) -> None:
        super().__init__()
        if options:
            raise ValueError(f"{type(self).__name__}: unknown option(s) {', '.join(sorted(options))}")
        self.encoder = encoder

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V, n_mels, frames] — V views (segments) of each of B utterances. Returns (loss, logs)."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer.step(): momentum updates etc."""

    def on_epoch_end(self, epoch: int, context: Any) -> None:
        """Epoch-end work (clustering in later methods); default no-op."""

    def on_schedule(self, planned_epochs: int) -> None:
        """Told the planned number of epochs at the start and whenever the trainer re-plans it
        (train.fit_to_budget), so schedules given as fractions of the run can follow; default no-op."""

    def on_train_start(self, n_train_examples: int, global_batch_size: int) -> None:
        """Once before training (before DDP wrapping): adapt to the data size; default no-op."""

    def inference_encoder(self) -> nn.Module:
        """The encoder whose output `embed` returns."""
        return self.encoder


def replanned_point(point: int, reached: int, fraction: float | None, planned: int, minimum: int = 0) -> int:
    """A schedule point given as a fraction of the run: max(minimum, round(fraction · planned)), kept once passed."""
    # A passed point (a stage entered, a warm-up ended) stays where it was: a longer re-plan under
    # train.fit_to_budget must not send a run back into an earlier stage or into its warm-up.
    if fraction is None or (reached > 0 and reached >= point):
        return point
    return max(minimum, round(fraction * planned))


@torch.no_grad()
def momentum_update_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """θ_t ← m·θ_t + (1−m)·θ_s for parameters; buffers (BN running statistics) are copied from source."""
    t_params, s_params = list(target.parameters()), list(source.parameters())
    t_bufs, s_bufs = list(target.buffers()), list(source.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError("momentum update between modules of different structure")
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for t, s in zip(t_bufs, s_bufs):
        t.copy_(s)
