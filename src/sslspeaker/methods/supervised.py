"""Supervised references: softmax, AM-softmax, AAM-softmax speaker classifiers, and AAMSupCon
(supervised contrastive + AAM-softmax). All read speaker labels (``needs_labels = True``).

Every view of an utterance is a training example with the utterance's label. Rows labelled −1
(speakers whose labels were dropped by ``data.labelled_fraction < 1``) are encoded with the
batch but ignored by the losses; a batch without labelled rows gives a zero loss.

Number of classes: the classifier needs it when it is built, as the method option ``n_classes``.
0 (the default) means the number of distinct speakers in ``data.train``: the training build step
fills it in (``with_class_count``) and the run's saved config records it; the dataset numbers the
speakers 0..n−1 in sorted order (e.g. 1,211 for VoxCeleb1 dev, 5,994 for VoxCeleb2 dev). A method
built directly needs n_classes ≥ 2; a label ≥ n_classes stops training with an error naming the option.

Pseudo-labels (self-training on clusters) are noisy: the loss gate (``gate`` or ``gate_fraction``)
leaves each step's high-loss rows out of the mean, and ``relabel_threshold`` lets confident
predictions replace a row's label, both from ``gate_after`` of the planned steps on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_nograd, gather_with_grad
from .base import Method
from .losses import (aam_softmax_logits, am_softmax_logits, fraction_gate, gated_mean, per_sample_cross_entropy,
                     relabelled, supcon)
from .options import Options, option
from .registry import method_class, register_method
from .views import (ProjectorOptions, check_views, embed_dim_of, encode_views, local_offset, projection_head,
                    require_labels, share_of_global_mean, supcon_anchor_count)


@dataclass
class ClassifierOptions(Options):
    """A speaker classifier's options."""

    n_classes: int = option(0, "number of training speakers; 0: the speakers of data.train (the build step fills "
                               "it in and the run's config.yaml records it)")
    gate: float = option(0.0, "loss-gated learning (Tao et al. 2022): only rows whose cross-entropy is < gate enter "
                              "the mean (their code: 1, 3, 3, 5, 6 per pseudo-label round, AAM-softmax); 0: off")
    gate_fraction: float = option(0.0, "scale-free loss gate: leave out the highest-loss fraction q of each step's "
                                       "labelled rows (all ranks together); 0: off; not with gate")
    gate_after: float = option(0.0, "fraction of the planned steps trained on every row before the gate (and "
                                    "relabel_threshold) applies")
    relabel_threshold: float = option(0.0, "label correction (DLG-LC, Han et al. 2022): a row whose margin-free "
                                           "softmax gives another class a probability > this takes that class for "
                                           "the classification loss (and acc); 0: off; use with gate_after: an "
                                           "untrained classifier at scale 30 is confident already")

    def __post_init__(self) -> None:
        if self.gate < 0 or not 0 <= self.gate_fraction < 1 or (self.gate and self.gate_fraction):
            raise ValueError(f"need gate >= 0, 0 <= gate_fraction < 1 and not both set, got gate={self.gate}, "
                             f"gate_fraction={self.gate_fraction}")
        if not 0 <= self.gate_after < 1:
            raise ValueError(f"need 0 <= gate_after < 1, got gate_after={self.gate_after}")
        if not 0 <= self.relabel_threshold < 1:
            raise ValueError(f"need 0 <= relabel_threshold < 1, got relabel_threshold={self.relabel_threshold}")


@dataclass
class MarginOptions(ClassifierOptions):
    """A margin classifier's options."""

    margin: float = option(0.2, "margin m on the target class")
    scale: float = option(30.0, "logit scale s")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0 or self.margin < 0:
            raise ValueError(f"need scale > 0 and margin >= 0, got scale={self.scale}, margin={self.margin}")


@dataclass
class AAMOptions(MarginOptions):
    """AAM-softmax's options."""

    easy_margin: bool = option(False, "apply the angular margin only where cos θ > 0")


@dataclass
class AAMSupConOptions(AAMOptions, ProjectorOptions):
    """AAMSupCon's options."""

    margin: float = option(0.3, "margin m on the target class")
    scale: float = option(32.0, "logit scale s")
    temperature: float = option(0.07, "SupCon temperature")
    supcon_weight: float = option(1.0, "weight of SupCon in SupCon + AAM-softmax")
    aam_views: str = option("all", "views the AAM-softmax sees: all, or first (the published code: the first "
                                   "augmented view only)")
    supcon_margin: float = option(0.0, "additive margin on the positive pairs' cosines inside SupCon (as "
                                       "NT-Xent-AM does for SimCLR); 0: plain SupCon")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"aamsupcon: temperature must be > 0, got {self.temperature}")
        if self.aam_views not in ("all", "first"):
            raise ValueError(f"aamsupcon: aam_views must be 'all' or 'first', got {self.aam_views!r}")
        if not 0.0 <= self.supcon_margin < 1.0:
            raise ValueError(f"aamsupcon: supcon_margin must be in [0, 1), got {self.supcon_margin}")


def with_class_count(name: str, options: dict, n_speakers: int) -> dict:
    """A new options dict: n_classes = ``n_speakers`` when method ``name`` is a classifier whose n_classes is 0
    or absent; otherwise ``options`` unchanged."""
    if not issubclass(method_class(name).Options, ClassifierOptions) or options.get("n_classes", 0) != 0:
        return dict(options)
    return {**options, "n_classes": n_speakers}


class Classified(NamedTuple):
    """One batch's classification terms (local rows)."""

    loss_sum: Tensor  # Σ cross-entropy over the kept rows
    kept: Tensor  # number of rows in that sum
    correct: Tensor  # labelled rows whose argmax is their (corrected) label
    labelled: Tensor  # rows with a label ≥ 0
    relabelled: Tensor  # labelled rows whose label the correction replaced


class _Classifier(Method):
    """Encoder + a classifier over ``n_classes`` speakers; subclasses define the logits.

    Label noise (pseudo-labels): from ``gate_after`` of the planned steps on, ``relabel_threshold``
    corrects confident rows' labels and ``gate`` / ``gate_fraction`` leave the high-loss rows out of the mean.
    """

    Options = ClassifierOptions
    needs_labels = True

    def __init__(self, encoder: nn.Module, options: ClassifierOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        n_classes = self.options.n_classes
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"{self.name}: set the option n_classes to the number of training speakers "
                             f"(method.options.n_classes), got {n_classes!r}")
        self.n_classes = n_classes
        self.embed_dim = embed_dim_of(self.name, encoder)
        # the noise handling is on (kept in the checkpoint: a resumed run does not re-open its first phase)
        self.register_buffer("noise_handling", torch.tensor(self.options.gate_after == 0))

    @property
    def gated(self) -> bool:
        """A loss gate is configured."""
        return bool(self.options.gate or self.options.gate_fraction)

    def class_logits(self, emb: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def plain_logits(self, emb: Tensor) -> Tensor:
        """The logits without any target margin (what the classifier predicts)."""
        raise NotImplementedError

    def classifier_params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def labels_per_view(self, feats: Tensor, labels: Tensor | None) -> Tensor:
        B, V = feats.shape[:2]
        labels = require_labels(self.name, labels, B)
        top = int(labels.max()) if labels.numel() else -1
        if top >= self.n_classes:
            raise ValueError(f"{self.name}: label {top} >= n_classes={self.n_classes}; set method.options.n_classes "
                             f"to the number of speakers in data.train")
        return labels.repeat_interleave(V)

    def corrected_labels(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Labels with confident predictions taken over (relabel_threshold, once the noise handling is on)."""
        if not (self.options.relabel_threshold and bool(self.noise_handling)):
            return labels
        with torch.no_grad():
            return relabelled(self.plain_logits(emb.detach()), labels, self.options.relabel_threshold)

    def loss_gate(self, losses: Tensor) -> Tensor:
        """This step's gate g over the rows' losses [N] (+∞ at unlabelled rows): a row enters the mean if ℓ < g."""
        o = self.options
        if not (self.gated and bool(self.noise_handling)):
            return torch.tensor(math.inf, device=losses.device)
        if o.gate:
            return torch.tensor(float(o.gate), device=losses.device)
        return fraction_gate(gather_nograd(losses), o.gate_fraction)  # the same gate on every rank

    def classification_loss(self, emb: Tensor, labels: Tensor) -> Classified:
        """The (corrected) cross-entropy of the labelled rows, summed over the rows the loss gate keeps."""
        keep = labels >= 0
        row_losses = torch.full(labels.shape, math.inf, device=emb.device)  # +∞: unlabelled, never kept
        if not bool(keep.any()):
            self.loss_gate(row_losses)  # every rank joins the gate's gather
            zero = emb.sum() * 0.0 + sum(p.sum() for p in self.classifier_params()) * 0.0
            return Classified(zero, keep.sum(), keep.sum(), keep.sum(), keep.sum())
        y = self.corrected_labels(emb[keep], labels[keep])
        logits = self.class_logits(emb[keep], y)
        losses = per_sample_cross_entropy(logits, y)
        gate = self.loss_gate(row_losses.masked_scatter(keep, losses.detach()))
        correct = (logits.detach().argmax(dim=1) == y).sum()
        return Classified(gated_mean(losses, gate, "sum"), (losses.detach() < gate).sum(), correct, keep.sum(),
                          (y != labels[keep]).sum())

    def after_step(self, step: int, total_steps: int) -> None:
        """The noise handling switches on after round(gate_after · total_steps) steps (and stays on)."""
        super().after_step(step, total_steps)
        if not bool(self.noise_handling) and step + 1 >= round(self.options.gate_after * total_steps):
            self.noise_handling.fill_(True)

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥1, n_mels, frames], labels [B] (−1 = unlabelled); returns (mean cross-entropy, logs)."""
        check_views(self.name, feats, 1)
        y = self.labels_per_view(feats, labels)
        emb = encode_views(self.encoder, nn.Identity(), feats, normalize=False).flatten(0, 1)
        c = self.classification_loss(emb, y)
        loss = share_of_global_mean(c.loss_sum, c.kept)  # mean over the kept rows of all ranks
        with torch.no_grad():
            stats = torch.stack([loss.detach(), c.correct.float() / c.labelled.clamp(min=1), c.labelled.float()])
        return loss, {**dict(zip(("loss", "acc", "labelled"), stats.tolist())), **self.gate_logs(c)}

    def gate_logs(self, c: Classified) -> dict[str, float]:
        """The shares of labelled rows the loss gate kept and the correction relabelled (those configured)."""
        n = max(1, int(c.labelled))
        logs = {"kept": float(c.kept) / n} if self.gated else {}
        return {**logs, "relabelled": float(c.relabelled) / n} if self.options.relabel_threshold else logs

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        state_dict.setdefault(prefix + "noise_handling", self.noise_handling)  # checkpoints from before the gate
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_method("softmax")
class Softmax(_Classifier):
    """Supervised reference: linear softmax classifier over the training speakers (needs labels)."""

    def __init__(self, encoder: nn.Module, options: ClassifierOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        self.classifier = nn.Linear(self.embed_dim, self.n_classes)

    def class_logits(self, emb: Tensor, labels: Tensor) -> Tensor:
        return self.plain_logits(emb)

    def plain_logits(self, emb: Tensor) -> Tensor:
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return self.classifier(emb.float())

    def classifier_params(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())


class _MarginSoftmax(_Classifier):
    Options = MarginOptions

    def __init__(self, encoder: nn.Module, options: MarginOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        self.margin, self.scale = float(self.options.margin), float(self.options.scale)
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)

    def cosines(self, emb: Tensor) -> Tensor:
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return F.normalize(emb.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def plain_logits(self, emb: Tensor) -> Tensor:
        """s·cos θ_ij: the margin-free logits."""
        return self.scale * self.cosines(emb)

    def classifier_params(self) -> list[nn.Parameter]:
        return [self.weight]


@register_method("amsoftmax")
class AMSoftmax(_MarginSoftmax):
    """Supervised reference: AM-softmax, logits s·(cos θ − m) for the target (needs labels)."""

    def class_logits(self, emb: Tensor, labels: Tensor) -> Tensor:
        return am_softmax_logits(self.cosines(emb), labels, self.margin, self.scale)


@register_method("aamsoftmax")
class AAMSoftmax(_MarginSoftmax):
    """Supervised reference: AAM-softmax (ArcFace), logits s·cos(θ + m) for the target (needs labels)."""

    Options = AAMOptions

    def __init__(self, encoder: nn.Module, options: AAMOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        self.easy_margin = bool(self.options.easy_margin)

    def class_logits(self, emb: Tensor, labels: Tensor) -> Tensor:
        return aam_softmax_logits(self.cosines(emb), labels, self.margin, self.scale, self.easy_margin)


@register_method("aamsupcon")
class AAMSupCon(AAMSoftmax):
    """Supervised: SupCon over the augmented views of the (gathered) batch + AAM-softmax, summed (needs labels).

    The summed form matches the code the AAMSupCon paper links; ``aam_views: first`` applies the
    AAM-softmax to each utterance's first augmented view only, as that code does, and
    ``supcon_margin`` starts the margin inside SupCon itself (an additive margin on the positive
    pairs' cosines), as one of its authors' other repositories does.
    """

    Options = AAMSupConOptions

    def __init__(self, encoder: nn.Module, options: AAMSupConOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        self.temperature, self.supcon_weight = float(o.temperature), float(o.supcon_weight)
        self.projector = projection_head(self.name, o, self.embed_dim)

    def aam_rows(self, emb: Tensor, y: Tensor, views: int) -> tuple[Tensor, Tensor]:
        """The rows (embeddings [B·V, D], labels) the AAM-softmax sees: every view, or each utterance's first."""
        if self.options.aam_views == "all":
            return emb, y
        return emb.unflatten(0, (-1, views))[:, 0], y.unflatten(0, (-1, views))[:, 0]

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥2, n_mels, frames], labels [B]; loss = SupCon (views of the global batch) + AAM-softmax."""
        check_views(self.name, feats, 2)
        y = self.labels_per_view(feats, labels)
        emb = encode_views(self.encoder, nn.Identity(), feats, normalize=False).flatten(0, 1)  # [B·V, D]
        c = self.classification_loss(*self.aam_rows(emb, y, feats.shape[1]))
        aam = share_of_global_mean(c.loss_sum, c.kept)
        z = F.normalize(self.projector(emb).float(), dim=1)
        sc_sum = supcon(z, y, self.temperature, gather_with_grad(z), gather_nograd(y), local_offset(z.shape[0]),
                        reduction="sum", margin=self.options.supcon_margin)
        sc = share_of_global_mean(sc_sum, supcon_anchor_count(y))
        loss = self.supcon_weight * sc + aam
        with torch.no_grad():
            stats = torch.stack([loss.detach(), sc.detach(), aam.detach(), c.correct.float() / c.labelled.clamp(min=1)])
        return loss, {**dict(zip(("loss", "supcon", "aam", "acc"), stats.tolist())), **self.gate_logs(c)}

