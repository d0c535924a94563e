"""The interface every training objective implements; the shared trainer calls only this."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .options import Options, read_options


@dataclass(frozen=True)
class EpochContext:
    """What a method learns from the trainer at the end of an epoch."""

    epoch: int  # the epoch that just ended (0-based)
    planned_epochs: int
    step: int  # optimiser steps taken so far
    steps_per_epoch: int
    total_steps: int  # steps_per_epoch · planned_epochs
    device: torch.device
    # (encoder, crop_seconds=None) -> [N, D] L2-normalised embeddings of the training set, dataset order
    embed_training_set: Callable[..., Tensor] | None = None

    @property
    def is_last_epoch(self) -> bool:
        """No training follows this epoch end."""
        return (self.epoch + 1) * self.steps_per_epoch >= self.total_steps


class Method(nn.Module):
    """A self-supervised (or supervised) training objective around an encoder."""

    name: ClassVar[str] = ""  # the registered name (set by ``register_method``)
    Options: ClassVar[type[Options]] = Options
    needs_labels: bool = False
    # Extra batch fields passed to ``forward`` as keyword arguments when listed here:
    # "index" (dataset indices [B], e.g. cluster look-ups) and "local_feats"
    # ([B, V_local, n_mels, frames_local], multi-crop methods such as DINO).
    wants: tuple[str, ...] = ()

    @property
    def embeds_training_set(self) -> bool:
        """Whether epoch ends embed every training utterance (``EpochContext.embed_training_set``: SSPS, C3's
        clustering), which reads them as files: not available with ``data.format=shards``."""
        return getattr(self, "ssps", None) is not None
    # (online module, momentum copy) attribute names: ``make_momentum_copies`` creates the copies,
    # ``after_step`` moves them towards the online modules with ``momentum_at``.
    momentum_pairs: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Under DDP: batch norm over the global batch of all ranks (SimCLR, DINO) instead of each rank's
    # own (the default; MoCo needs its BN batches kept apart, see moco.py's shuffle BN).
    sync_batchnorm: ClassVar[bool] = False

    def __init__(self, encoder: nn.Module, options: Options | None = None, **values: Any) -> None:
        """``options`` (a ``cls.Options``), or the option values as keywords, read strictly."""
        super().__init__()
        if options is not None and values:
            raise ValueError(f"{self.name}: pass options as an {type(options).__name__} or as keywords, not both")
        self.options = options if options is not None else self.read_options(values)
        self.encoder = encoder

    @classmethod
    def read_options(cls, values: dict[str, Any]) -> Options:
        """This method's options from a plain mapping (unknown option or wrong type: ``ConfigError``)."""
        return read_options(cls.Options, values, cls.name or cls.__name__)

    @classmethod
    def fit_options_to_pool(cls, options: dict[str, Any], n_examples: int, batch_size: int) -> dict[str, Any]:
        """Options adapted to a training pool of ``n_examples`` read in batches of ``batch_size``: unchanged."""
        return dict(options)

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V, n_mels, frames] — V views (segments) of each of B utterances. Returns (loss, logs)."""
        raise NotImplementedError

    # ---- momentum copies --------------------------------------------------------------------
    def make_momentum_copies(self) -> None:
        """Each declared momentum copy: the online module's weights, never trained by gradients."""
        for online, target in self.momentum_pairs:
            twin = copy.deepcopy(getattr(self, online))
            for p in twin.parameters():
                p.requires_grad_(False)
            setattr(self, target, twin)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The EMA coefficient m of the update after ``step``."""
        raise NotImplementedError(f"{type(self).__name__} declares momentum pairs but no momentum_at")

    def sync_momentum_copy(self, online: str) -> None:
        """Copy ``online``'s weights into its momentum copy (a run started from another run's encoder)."""
        for source, target in self.momentum_pairs:
            if source == online:
                getattr(self, target).load_state_dict(getattr(self, source).state_dict())

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer.step(): θ_copy ← m·θ_copy + (1−m)·θ_online for every momentum pair."""
        if not self.momentum_pairs:
            return
        m = self.momentum_at(step, total_steps)
        for online, target in self.momentum_pairs:
            momentum_update_(getattr(self, target), getattr(self, online), m)

    # ---- schedule hooks ----------------------------------------------------------------------
    def on_epoch_end(self, context: EpochContext) -> None:
        """Epoch-end work (clustering in later methods); default no-op."""

    def on_schedule(self, planned_epochs: int) -> None:
        """Told the planned number of epochs at the start and whenever the trainer re-plans it
        (train.fit_to_budget), so schedules given as fractions of the run can follow; default no-op."""

    def on_train_start(self, n_train_examples: int, global_batch_size: int) -> None:
        """Once before training (before DDP wrapping): adapt to the data size; default no-op."""

    def no_weight_decay(self) -> set[str]:
        """Names (as in ``named_parameters``) of weight matrices spared weight decay; biases, norms and
        scalars always are."""
        return set()

    def before_optimizer_step(self) -> None:
        """After backward (and gradient clipping), before the optimiser step: e.g. unset frozen gradients."""

    def inference_encoder_name(self) -> str:
        """The attribute holding the encoder that validation, export and embedding use (checkpoints record it)."""
        return "encoder"

    def inference_encoder(self) -> nn.Module:
        """The encoder whose output `embed` returns."""
        return getattr(self, self.inference_encoder_name())


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
