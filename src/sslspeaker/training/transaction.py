"""A training step that either happens completely or leaves no trace.

A forward pass mutates the method's buffers (BatchNorm running statistics and batch counts,
MoCo/C3 queues and their pointers, the DINO centre, the momentum copies' statistics) before
the loss is known. ``BufferSnapshot`` copies them before the step and puts them back when
the step is skipped, so a non-finite loss changes no state.
"""

from __future__ import annotations

import torch
from torch import nn


class BufferSnapshot:
    """Copies of every buffer of ``module``, refreshed by ``take`` and written back by ``restore``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.buffers: list[torch.Tensor] = []
        self.copies: list[torch.Tensor] = []

    def take(self) -> None:
        """Copy the current buffers (into the copies of the last call when the buffers are the same tensors)."""
        buffers = list(self.module.buffers())
        if not self._same_layout(buffers):
            self.copies = [b.detach().clone() for b in buffers]
        elif buffers:
            torch._foreach_copy_(self.copies, [b.detach() for b in buffers])
        self.buffers = buffers

    def restore(self) -> None:
        """Put the buffers back as they were at the last ``take``."""
        with torch.no_grad():
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.copies)

    def _same_layout(self, buffers: list[torch.Tensor]) -> bool:
        if len(buffers) != len(self.buffers):
            return False
        return all(b is old and b.shape == c.shape for b, old, c in zip(buffers, self.buffers, self.copies))
