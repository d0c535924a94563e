"""Everything the trainer needs, built from a ``Config``: data, augmentation, features, model, optimiser."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..augment.augmenter import Augmenter
from ..augment.noise import NoiseBank
from ..augment.reverb import RirBank
from ..config import Config, ConfigError, ManifestRef
from ..data.audio import audio_info
from ..data.dataset import SegmentDataset
from ..data.shards import ShardDataset, ShardSet, open_shards
from ..data.manifest import Entry, read_manifest
from ..data.prepare import scan
from ..features.mel import LogMel
from ..methods import build_method
from ..methods.base import Method, replanned_point
from ..methods.supervised import with_class_count
from ..models import build_encoder


def load_entries(ref: ManifestRef, category: str | None = None) -> list[Entry]:
    """A manifest CSV (relative to ``ref.root`` or its folder), or every audio file in a folder."""
    p = Path(ref.manifest)
    if p.is_dir():
        entries = [Entry(str(f), None, audio_info(f).duration, category) for f in scan(p)]
    elif p.is_file():
        entries = read_manifest(p, base=ref.root)
        if category:
            entries = [Entry(e.path, e.speaker, e.duration, category) for e in entries]
    else:
        raise ConfigError(f"manifest {ref.manifest}: no such file or folder")
    if not entries:
        raise ConfigError(f"manifest {ref.manifest}: no audio listed")
    return entries


def load_all(refs: list[ManifestRef]) -> list[Entry]:
    return [e for r in refs for e in load_entries(r, r.category)]


def build_augmenter(cfg: Config, seed: int) -> Augmenter | None:
    """The configured augmentation with its noise and RIR banks; None when it changes nothing."""
    a = cfg.augment
    if a.mode == "none" and a.bandlimit == 0 and a.eq == 0:
        return None
    noise = NoiseBank(load_all(a.noise)) if a.noise and a.mode != "none" else None
    rir = RirBank(load_all(a.rir)) if a.rir and a.mode != "none" else None
    try:
        return Augmenter(a, noise, rir, mode=a.mode, apply_to=a.apply_to, seed=seed)
    except ValueError as exc:
        raise ConfigError(f"augment: {exc}") from None


def worker_augment(augmenter: Augmenter):
    """The data-worker path: augment one utterance's views [V, T] with the item's own RNG."""

    def augment(views: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return augmenter.augment_views(torch.from_numpy(views)[None], rng)[0].numpy()

    return augment


def build_features(cfg: Config) -> LogMel:
    f = cfg.features
    return LogMel(n_mels=f.n_mels, norm=f.norm, pre_emphasis=f.preemphasis)


def build_model(cfg: Config) -> Method:
    """The configured method around the configured encoder (bad options: ``ConfigError`` naming the section)."""
    try:
        encoder = build_encoder(cfg.model.encoder, n_mels=cfg.features.n_mels, **cfg.model.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None
    try:
        return build_method(cfg.method.name, encoder, **cfg.method.options)
    except ValueError as exc:
        raise ConfigError(f"method: {exc}") from None


def fill_class_count(cfg: Config, entries: list[Entry]) -> None:
    """A classifier's method.options.n_classes 0 or absent: the number of speakers in ``entries``, set in ``cfg``
    (so the run's saved config records it)."""
    speakers = len({e.speaker for e in entries if e.speaker})  # the speakers the dataset numbers 0..n−1
    try:
        cfg.method.options = with_class_count(cfg.method.name, cfg.method.options, speakers)
    except ValueError as exc:
        raise ConfigError(f"method: {exc}") from None


@dataclass
class TrainingParts:
    """What a training run is made of, built from its config (in this order: the RNG draws depend on it)."""

    augmenter: Augmenter | None
    method: Method
    dataset: SegmentDataset
    features: LogMel


def build_parts(cfg: Config) -> TrainingParts:
    """Data, augmentation, method and features of ``cfg`` (call after seeding torch with ``train.seed``)."""
    seed = cfg.train.seed
    shards = open_shard_set(cfg) if cfg.data.format == "shards" else None
    entries = shards.entries if shards is not None else load_all(cfg.data.train)
    fill_class_count(cfg, entries)
    augmenter = build_augmenter(cfg, seed)
    on_worker = augmenter is not None and not cfg.augment.on_device
    method = build_model(cfg)
    if shards is not None and method.embeds_training_set:
        raise ConfigError(f"data.format=shards: method {cfg.method.name} embeds the whole training set every epoch, "
                          "which reads files; train it with data.format=files")
    d = cfg.data
    common = dict(crop_seconds=d.crop_seconds, n_views=d.n_views, seed=seed,
                  augment=worker_augment(augmenter) if on_worker else None,
                  with_labels=method.needs_labels, local_crop_seconds=d.local_crop_seconds,
                  n_local_views=d.n_local_views, labelled_fraction=d.labelled_fraction)
    dataset = ShardDataset(shards, **common) if shards is not None else \
        SegmentDataset(entries, cache_bytes=d.cache_gb * 1e9, **common)
    return TrainingParts(augmenter, method, dataset, build_features(cfg))


def open_shard_set(cfg: Config) -> ShardSet:
    try:
        return open_shards([r.manifest for r in cfg.data.train])
    except ValueError as exc:
        raise ConfigError(f"data.train (data.format=shards): {exc}") from None


def decay_groups(named_parameters, weight_decay: float, exempt: set[str] = frozenset(),
                 decay_all: bool = False) -> list[dict]:
    """Two parameter groups, trainable parameters only: weight decay on weight matrices and kernels; none
    on biases, normalisation gains and shifts, learnt scalars (ndim <= 1) and the names in ``exempt``."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (decay if decay_all or (p.ndim > 1 and name not in exempt) else no_decay).append(p)
    if decay_all:
        return [{"params": decay, "weight_decay": weight_decay}]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, method, decay_all: bool | None = None) -> torch.optim.Optimizer:
    """The optimiser over ``method``'s trainable parameters, weight decay as ``decay_groups`` (all of them
    with ``optim.decay_all`` or ``decay_all=True``: the one group of runs from before the exemption)."""
    o = cfg.optim
    decay_all = o.decay_all if decay_all is None else decay_all
    groups = decay_groups(method.named_parameters(), o.weight_decay, set(method.no_weight_decay()), decay_all)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    raise ConfigError(f"optim.name={o.name!r}: expected sgd, adam or adamw")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay 0.5·(1 + cos(π·t)) over the remaining steps (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class BudgetLR(torch.optim.lr_scheduler.LRScheduler):
    """lr = base · lr_factor(step, total, warm-up, schedule), with the total read at every step (re-plans)."""

    def __init__(self, optimizer, total_steps: Callable[[], int], schedule: str, warmup_steps: int = 0,
                 warmup_fraction: float = 0.0) -> None:
        self.total_steps, self.schedule = total_steps, schedule
        self.warmup_steps, self.warmup_fraction = warmup_steps, warmup_fraction
        self.warmup_len: int | None = None  # the fraction's warm-up as last planned (saved with the state)
        super().__init__(optimizer)

    def warmup(self, step: int, total: int) -> int:
        if self.warmup_steps or not self.warmup_fraction:
            return self.warmup_steps
        planned = self.warmup_len if self.warmup_len is not None else round(self.warmup_fraction * total)
        self.warmup_len = replanned_point(planned, step, self.warmup_fraction, total)
        return self.warmup_len

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        if "warmup_kept" in state:  # checkpoints before warmup_len kept only an ended warm-up
            state["warmup_len"] = state.pop("warmup_kept")
        super().load_state_dict(state)

    def get_lr(self) -> list[float]:
        step, total = self.last_epoch, self.total_steps()
        factor = lr_factor(step, total, self.warmup(step, total), self.schedule)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        # the settings come from the config; total_steps is the trainer's (a callable, never pickled)
        own = ("total_steps", "schedule", "warmup_steps", "warmup_fraction")
        return {k: v for k, v in super().state_dict().items() if k not in own}


def build_scheduler(cfg: Config, optimizer, total_steps: Callable[[], int]) -> BudgetLR:
    """LR schedule over ``total_steps()`` steps, read at every step (the trainer may re-plan it)."""
    o = cfg.optim
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule={o.schedule!r}: expected cosine or constant")
    if not 0.0 <= o.warmup_fraction < 1.0 or (o.warmup_fraction and o.warmup_steps):
        raise ConfigError(f"optim.warmup_fraction={o.warmup_fraction}: expected 0 <= f < 1, and not together "
                          f"with optim.warmup_steps={o.warmup_steps}")
    return BudgetLR(optimizer, total_steps, o.schedule, o.warmup_steps, o.warmup_fraction)
