"""Supervised references: softmax, AM-softmax, AAM-softmax speaker classifiers, and AAMSupCon
(supervised contrastive + AAM-softmax). All read speaker labels (``needs_labels = True``).

Every view of an utterance is a training example with the utterance's label. Rows labelled −1
(speakers whose labels were dropped by ``data.labelled_fraction < 1``) are encoded with the
batch but ignored by the losses; a batch without labelled rows gives a zero loss.

Number of classes: the classifier needs it when it is built, before the data is read, so it is
the method option ``n_classes`` (required): set it to the number of distinct speakers in
``data.train`` (the dataset numbers the speakers 0..n−1 in sorted order; e.g. 1,211 for
VoxCeleb1 dev, 5,994 for VoxCeleb2 dev). A label ≥ n_classes stops training with an error
naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_nograd, gather_with_grad
from .base import Method
from .losses import aam_softmax_logits, am_softmax_logits, supcon
from .options import Options, option
from .registry import register_method
from .views import (ProjectorOptions, check_views, embed_dim_of, encode_views, local_offset, projection_head,
                    require_labels, share_of_global_mean, supcon_anchor_count)


@dataclass
class ClassifierOptions(Options):
    """A speaker classifier's options."""

    n_classes: int = option(0, "number of training speakers (required)")


@dataclass
class MarginOptions(ClassifierOptions):
    """A margin classifier's options."""

    margin: float = option(0.2, "margin m on the target class")
    scale: float = option(30.0, "logit scale s")

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"aamsupcon: temperature must be > 0, got {self.temperature}")


class _Classifier(Method):
    """Encoder + a classifier over ``n_classes`` speakers; subclasses define the logits."""

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

    def class_logits(self, emb: Tensor, labels: Tensor) -> Tensor:
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

    def classification_loss(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(Σ cross-entropy over labelled rows, number of labelled rows, number correct)."""
        keep = labels >= 0
        if not bool(keep.any()):
            zero = emb.sum() * 0.0 + sum(p.sum() for p in self.classifier_params()) * 0.0
            return zero, keep.sum(), keep.sum()
        logits = self.class_logits(emb[keep], labels[keep])
        loss = F.cross_entropy(logits, labels[keep], reduction="sum")
        correct = (logits.detach().argmax(dim=1) == labels[keep]).sum()
        return loss, keep.sum(), correct

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥1, n_mels, frames], labels [B] (−1 = unlabelled); returns (mean cross-entropy, logs)."""
        check_views(self.name, feats, 1)
        y = self.labels_per_view(feats, labels)
        emb = encode_views(self.encoder, nn.Identity(), feats, normalize=False).flatten(0, 1)
        loss_sum, count, correct = self.classification_loss(emb, y)
        loss = share_of_global_mean(loss_sum, count)  # mean over the labelled rows of all ranks
        with torch.no_grad():
            stats = torch.stack([loss.detach(), correct.float() / count.clamp(min=1), count.float()])
        return loss, dict(zip(("loss", "acc", "labelled"), stats.tolist()))


@register_method("softmax")
class Softmax(_Classifier):
    """Supervised reference: linear softmax classifier over the training speakers (needs labels)."""

    def __init__(self, encoder: nn.Module, options: ClassifierOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        self.classifier = nn.Linear(self.embed_dim, self.n_classes)

    def class_logits(self, emb: Tensor, labels: Tensor) -> Tensor:
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
    """Supervised: SupCon over the augmented views of the (gathered) batch + AAM-softmax, summed (needs labels)."""

    Options = AAMSupConOptions

    def __init__(self, encoder: nn.Module, options: AAMSupConOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        self.temperature, self.supcon_weight = float(o.temperature), float(o.supcon_weight)
        self.projector = projection_head(self.name, o, self.embed_dim)

    def forward(self, feats: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V≥2, n_mels, frames], labels [B]; loss = SupCon (views of the global batch) + AAM-softmax."""
        check_views(self.name, feats, 2)
        y = self.labels_per_view(feats, labels)
        emb = encode_views(self.encoder, nn.Identity(), feats, normalize=False).flatten(0, 1)  # [B·V, D]
        aam_sum, count, correct = self.classification_loss(emb, y)
        aam = share_of_global_mean(aam_sum, count)
        z = F.normalize(self.projector(emb).float(), dim=1)
        sc_sum = supcon(z, y, self.temperature, gather_with_grad(z), gather_nograd(y), local_offset(z.shape[0]),
                        reduction="sum")
        sc = share_of_global_mean(sc_sum, supcon_anchor_count(y))
        loss = self.supcon_weight * sc + aam
        with torch.no_grad():
            stats = torch.stack([loss.detach(), sc.detach(), aam.detach(), correct.float() / count.clamp(min=1)])
        return loss, dict(zip(("loss", "supcon", "aam", "acc"), stats.tolist()))

