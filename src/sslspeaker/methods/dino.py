"""DINO (Caron et al. 2021, "Emerging properties in self-supervised vision transformers") for speakers,
as adapted by Chen et al. 2022 ("A comprehensive study on self-supervised distillation for speaker
representation learning", the wespeaker DINO recipe) and used as the second stage of C3-DINO
(Zhang & Yu 2022).

A student (encoder + DINO head) and a teacher of the same structure (``key_encoder`` + ``key_head``,
the name MoCo uses for its momentum copy, so that ``train.init_from`` also initialises the teacher)
see segments of the same utterance. The teacher is an exponential moving average of the student,
θ_t ← m·θ_t + (1−m)·θ_s, with m rising from ``momentum`` to ``momentum_final`` on a cosine over
training. Multi-crop: the V global views (``feats``, e.g. 2 × 3–4 s) go through teacher and
student, the local views (``local_feats``, e.g. 4 × 2 s, from ``data.n_local_views`` /
``data.local_crop_seconds``) through the student only. For every pair (teacher view t, student
view s ≠ t) the student's log-softmax(s/τ_s) is trained towards the teacher's softmax((t − C)/τ_t);
C is an EMA of the mean teacher output (centering) and τ_t < τ_s sharpens — together they prevent
collapse. τ_t warms up linearly over the first epochs, and the head's last layer is frozen
during the first ``freeze_last_layer`` epochs: its gradient is left unset (``None``) before the
optimiser step, as DINO's code does, so that neither SGD momentum nor weight decay moves it (a
zero gradient would still let both act). ``center_momentum`` defaults to
0.99 (a slower center than the 0.9 of DINO and the wespeaker recipe). The head
(``models.heads`` "dino") runs in float32, also under autocast.

The centre starts at zero (``center_init: zero``, DINO's code and the wespeaker recipe) or random
(``random``: C ~ N(0, 1/bottleneck_dim) per prototype, the spread of the head's first outputs,
which are cosines between a unit bottleneck vector and unit prototypes); the C3/DINO slides say
"encoders and C are randomly initialised" and "the initial center C is important".

The inference encoder (validation, export, ``embed``, ``train.init_from`` of a later run) is the
teacher (``key_encoder``), as DINO results are reported; ``inference_encoder: student`` picks the
student. Checkpoints record which.

Logged every step, to watch for collapse: ``teacher_entropy`` (mean entropy of the teacher's
distribution: → 0 when one prototype dominates, → log K when uniform), ``kl`` (mean KL(teacher ‖
student) over the pairs: → 0 when the student just copies a collapsed teacher) and ``embed_std``
(mean over dimensions of the batch std of the L2-normalised student embeddings: → 0 on collapse,
≈ 1/√D for embeddings spread over the sphere).

State (all in ``state_dict``): teacher weights, ``center``, ``epoch`` (drives τ_t and the
last-layer freeze) and ``momentum_now`` (the EMA coefficient of the last update; the schedule
itself is a function of the trainer's step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import get_world_size
from ..models.heads import build_head
from .base import EpochContext, Method, replanned_point
from .options import option
from .registry import register_method
from .ssps import PositiveSampler, SSPSOptions
from .views import embed_dim_of

__all__ = [
    "DINO",
    "DINOOptions",
    "center_update",
    "dino_cross_entropy",
    "initial_center",
    "teacher_momentum",
    "teacher_temperature",
]


# ---- equations ----------------------------------------------------------------------------
def teacher_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """m(step) = final − (final − base)·(1 + cos(π·step/total))/2   (DINO: 0.996 → 1, cosine over training)."""
    t = min(max(step, 0), max(total_steps, 1)) / max(total_steps, 1)
    return final - (final - base) * (1.0 + math.cos(math.pi * t)) / 2.0


def teacher_temperature(epoch: int, warmup_temp: float = 0.04, temp: float = 0.07, warmup_epochs: int = 30) -> float:
    """τ_t(e) = linspace(warmup_temp, temp, warmup_epochs)[e] for e < warmup_epochs, else temp   (DINO)."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


def dino_cross_entropy(student: Tensor, teacher: Tensor, center: Tensor, teacher_temp: float,
                       student_temp: float) -> Tensor:
    """L = mean_{(t, s), s≠t} mean_b −Σ_k softmax((t_b − C)/τ_t)_k · log softmax(s_b/τ_s)_k   (DINO eq. 1, multi-crop).

    student: [S, B, K] logits of S views (the first T are the teacher's views, in the same
    order); teacher: [T, B, K]; center: [K] or [1, K]. Computed in float32.
    """
    S, B, _ = student.shape
    T = teacher.shape[0]
    if T > S or teacher.shape[1] != B:
        raise ValueError(f"dino: teacher views {tuple(teacher.shape)} do not match student views {tuple(student.shape)}")
    n_pairs = T * S - T
    if n_pairs < 1:
        raise ValueError("dino: need at least two views (one teacher view and another student view)")
    with torch.autocast(device_type=student.device.type, enabled=False):
        p_t = F.softmax((teacher.float() - center.float().reshape(1, 1, -1)) / teacher_temp, dim=-1)
        log_p_s = F.log_softmax(student.float() / student_temp, dim=-1)
        # Σ_t Σ_{s≠t} <p_t, log p_s> = <Σ_t p_t, Σ_s log p_s> − Σ_t <p_t, log p_t'>   (t' = student view t)
        all_pairs = (p_t.sum(dim=0) * log_p_s.sum(dim=0)).sum()
        same_view = (p_t * log_p_s[:T]).sum()
        return -(all_pairs - same_view) / (n_pairs * B)


def center_update(center: Tensor, batch_mean: Tensor, momentum: float) -> Tensor:
    """C ← m·C + (1 − m)·mean_b t_b   (DINO eq. 4; the mean is over the teachers' outputs of all ranks)."""
    return center * momentum + batch_mean.reshape(center.shape) * (1.0 - momentum)


def initial_center(out_dim: int, bottleneck_dim: int, how: str) -> Tensor:
    """C₀ = 0 (``zero``), or C₀ ~ N(0, 1/bottleneck_dim) per prototype (``random``): [1, out_dim]."""
    if how == "zero":
        return torch.zeros(1, out_dim)
    return torch.randn(1, out_dim) / math.sqrt(bottleneck_dim)


@torch.no_grad()
def row_mean_over_ranks(x: Tensor) -> Tensor:
    """Mean over the rows of x of every rank (all ranks hold the same number of rows): [1, K]."""
    s = x.float().sum(dim=0, keepdim=True)
    world = get_world_size()
    if world > 1:
        dist.all_reduce(s)
    return s / (x.shape[0] * world)


def _entropy(p: Tensor) -> Tensor:
    """Mean over rows of −Σ_k p_k log p_k."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean()


# ---- method -------------------------------------------------------------------------------
@dataclass
class DINOOptions(SSPSOptions):
    """DINO's options."""

    out_dim: int = option(65536, "prototypes K of the DINO head")
    hidden_dim: int = option(2048, "hidden width of the head's MLP")
    bottleneck_dim: int = option(256, "bottleneck width before the prototypes")
    head_bn: bool = option(False, "batch norm in the head's MLP")
    norm_last_layer: bool = option(True, "weight-normalised last layer with its gain fixed at 1")
    momentum: float = option(0.996, "teacher EMA coefficient at the start (cosine to momentum_final)")
    momentum_final: float = option(1.0, "teacher EMA coefficient at the end of training")
    teacher_temp: float = option(0.07, "teacher temperature τ_t after the warm-up")
    warmup_teacher_temp: float = option(0.04, "teacher temperature at the start of the warm-up")
    warmup_teacher_temp_epochs: int = option(30, "epochs of the linear teacher-temperature warm-up")
    warmup_teacher_temp_fraction: float = option(0.0, "> 0: the warm-up as this fraction of the planned epochs")
    student_temp: float = option(0.1, "student temperature τ_s")
    center_momentum: float = option(0.99, "EMA coefficient of the center C (DINO and wespeaker: 0.9)")
    freeze_last_layer: int = option(1, "epochs in which the head's last layer gets no gradient")
    center_init: str = option("zero", "initial center C: zero (DINO's code) or random (N(0, 1/bottleneck_dim))")
    inference_encoder: str = option("teacher", "encoder that validation, export and embed use: teacher or student")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out_dim < 2 or self.teacher_temp <= 0 or self.warmup_teacher_temp <= 0 or self.student_temp <= 0:
            raise ValueError("dino: need out_dim >= 2 and positive temperatures")
        if not all(0.0 <= m <= 1.0 for m in (self.momentum, self.momentum_final, self.center_momentum)):
            raise ValueError("dino: momentum, momentum_final and center_momentum must be in [0, 1]")
        if self.warmup_teacher_temp_epochs < 0 or self.freeze_last_layer < 0:
            raise ValueError("dino: warmup_teacher_temp_epochs and freeze_last_layer must be >= 0")
        for name, allowed in (("center_init", ("zero", "random")), ("inference_encoder", ("teacher", "student"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"dino: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.warmup_teacher_temp_fraction < 1.0:
            raise ValueError(f"dino: warmup_teacher_temp_fraction must be in [0, 1), got "
                             f"{self.warmup_teacher_temp_fraction}")


@register_method("dino")
class DINO(Method):
    """DINO: self-distillation to a momentum teacher over multi-crop segments, with centering and sharpening."""

    Options = DINOOptions
    wants = ("local_feats",)
    momentum_pairs = (("encoder", "key_encoder"), ("head", "key_head"))  # the teacher: never trained by gradients
    sync_batchnorm = True  # DINO's reference converts BN to SyncBN under DDP (student and teacher)

    def __init__(self, encoder: nn.Module, options: DINOOptions | None = None, **values) -> None:
        super().__init__(encoder, options, **values)
        o = self.options
        self.momentum_base, self.momentum_final = o.momentum, o.momentum_final
        self.teacher_temp, self.warmup_teacher_temp = o.teacher_temp, o.warmup_teacher_temp
        # > 0: the warm-up is this fraction of the planned epochs ([wespeaker]'s
        # warmup_teacher_temp_epochs_ratio), set by on_schedule and kept in step with re-plans;
        # its length lives in the checkpoint so that a resumed run keeps what its re-plans chose
        self.warmup_teacher_temp_fraction = o.warmup_teacher_temp_fraction
        self.student_temp, self.center_momentum = o.student_temp, o.center_momentum
        self.freeze_last_layer = o.freeze_last_layer
        self.head = build_head("dino", embed_dim_of(self.name, encoder), out_dim=o.out_dim, hidden_dim=o.hidden_dim,
                               bottleneck_dim=o.bottleneck_dim, norm_last_layer=o.norm_last_layer, use_bn=o.head_bn)
        self.make_momentum_copies()  # same weights as the student at the start
        self.register_buffer("center", initial_center(o.out_dim, o.bottleneck_dim, o.center_init))
        self.ssps = None
        if o.ssps:  # the teacher's target from a queued teacher embedding of a nearby utterance (methods/ssps.py)
            self.ssps = PositiveSampler(o, embed_dim_of(self.name, encoder), own_queue=True)
            self.wants = ("local_feats", "index")
        self.register_buffer("warmup_epochs", torch.tensor(o.warmup_teacher_temp_epochs))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("momentum_now", torch.tensor(float(o.momentum), dtype=torch.float64))

    # ---- schedules ------------------------------------------------------------------------
    @property
    def warmup_teacher_temp_epochs(self) -> int:
        return int(self.warmup_epochs)

    @warmup_teacher_temp_epochs.setter
    def warmup_teacher_temp_epochs(self, epochs: int) -> None:
        self.warmup_epochs.fill_(epochs)

    def current_teacher_temp(self) -> float:
        return teacher_temperature(int(self.epoch), self.warmup_teacher_temp, self.teacher_temp,
                                   self.warmup_teacher_temp_epochs)

    def last_layer_frozen(self) -> bool:
        return int(self.epoch) < self.freeze_last_layer

    def before_optimizer_step(self) -> None:
        """In the frozen epochs the head's last layer has no gradient: the optimiser skips it entirely."""
        if self.last_layer_frozen():
            for p in self.head.last_layer.parameters():
                p.grad = None

    def no_weight_decay(self) -> set[str]:
        """The head's last layer (the prototypes) is spared weight decay."""
        return {f"head.last_layer.{n}" for n, _ in self.head.last_layer.named_parameters()}

    def inference_encoder_name(self) -> str:
        """The teacher (``key_encoder``) unless ``inference_encoder: student``."""
        return "encoder" if self.options.inference_encoder == "student" else "key_encoder"

    # ---- forward --------------------------------------------------------------------------
    @staticmethod
    def _views_first(x: Tensor) -> Tensor:
        """[B, V, n_mels, frames] → [V·B, n_mels, frames], view-major (rows v·B … v·B + B − 1 are view v)."""
        B, V = x.shape[:2]
        return x.transpose(0, 1).reshape(V * B, *x.shape[2:])

    @staticmethod
    def _head(head: nn.Module, emb: Tensor) -> Tensor:
        # float32 even under autocast: outputs are cosines in [-1, 1] divided by τ_t = 0.04, and a
        # bf16 cosine (~3 digits) would put errors of ~0.1 on the teacher's logits
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return head(emb.float())

    def forward(self, feats: Tensor, labels: Tensor | None = None, local_feats: Tensor | None = None,
                index: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """feats: [B, V, n_mels, frames] global views; local_feats: [B, V_local, n_mels, frames_local] or None."""
        if feats.dim() != 4:
            raise ValueError(f"dino: feats must be [B, V, n_mels, frames], got {tuple(feats.shape)}")
        B, V = feats.shape[:2]
        n_local = 0 if local_feats is None else local_feats.shape[1]
        if V + n_local < 2:
            raise ValueError("dino: need at least two views in all (global + local)")
        g = self._views_first(feats)
        emb = self.encoder(g)
        student = [self._head(self.head, emb)]
        if n_local:
            student.append(self._head(self.head, self.encoder(self._views_first(local_feats))))
        with torch.no_grad():
            t_emb = self.key_encoder(g)
            teacher = self._head(self.key_head, t_emb)
        s = torch.cat(student).float().reshape(V + n_local, B, -1)
        t = teacher.detach().float().reshape(V, B, -1)
        if self.ssps is not None and index is not None:
            t = self._sampled_targets(t, t_emb[:B], index)
        tau_t = self.current_teacher_temp()
        loss = dino_cross_entropy(s, t, self.center, tau_t, self.student_temp)
        with torch.no_grad():
            p_t = F.softmax((t - self.center) / tau_t, dim=-1)
            h_t = _entropy(p_t)
            # each teacher view is paired with the same number of student views, so the mean KL over
            # pairs is the mean cross-entropy minus the mean teacher entropy
            kl = loss.detach() - h_t
            z = F.normalize(emb.detach().float(), dim=1)
            embed_std = z.std(dim=0).mean() if z.shape[0] > 1 else torch.zeros((), device=z.device)
            stats = torch.stack([loss.detach(), h_t, kl, embed_std])
        if self.training:
            self.center.copy_(center_update(self.center, row_mean_over_ranks(teacher), self.center_momentum))
        values = stats.tolist()  # one device sync for all logs
        logs = dict(zip(("loss", "teacher_entropy", "kl", "embed_std"), values))
        logs.update(teacher_temp=tau_t, momentum=float(self.momentum_now))
        return loss, logs

    @torch.no_grad()
    def _sampled_targets(self, t: Tensor, t_emb: Tensor, index: Tensor) -> Tensor:
        """SSPS: every teacher view of anchor i becomes the teacher's output for a queued teacher embedding of a
        nearby utterance, where one was drawn; then this batch's first-view teacher embeddings join the queue."""
        if self.ssps.active():
            pseudo, found, _ = self.ssps.sample(index, self.ssps.queue, self.ssps.queue_index)
            p = self._head(self.key_head, pseudo.to(t_emb.dtype)).float()
            t = torch.where(found.to(t.device)[None, :, None], p[None], t)
        if self.training:
            self.ssps.enqueue(t_emb, index, normalize=False)
        return t

    # ---- state updates --------------------------------------------------------------------
    def momentum_at(self, step: int, total_steps: int) -> float:
        """θ_t ← m·θ_t + (1−m)·θ_s with m = teacher_momentum(step, total_steps) (teacher encoder and head)."""
        return teacher_momentum(step, total_steps, self.momentum_base, self.momentum_final)

    def after_step(self, step: int, total_steps: int) -> None:
        """The teacher's EMA update; ``momentum_now`` records its coefficient."""
        super().after_step(step, total_steps)
        self.momentum_now.fill_(self.momentum_at(step, total_steps))

    def on_schedule(self, planned_epochs: int) -> None:
        """With warmup_teacher_temp_fraction > 0: warm-up epochs = max(1, round(fraction · planned epochs))."""
        # an ended warm-up is kept: a longer re-plan must not lower the teacher temperature again
        if self.ssps is not None:
            self.ssps.on_schedule(planned_epochs)
        if self.warmup_teacher_temp_fraction > 0:
            self.warmup_teacher_temp_epochs = replanned_point(self.warmup_teacher_temp_epochs, int(self.epoch),
                                                              self.warmup_teacher_temp_fraction, planned_epochs, 1)

    def on_epoch_end(self, context: EpochContext) -> None:
        """Advance the epoch counter that drives the teacher temperature and the last-layer freeze (and SSPS's
        reference clustering, when on)."""
        self.epoch.fill_(context.epoch + 1)
        if self.ssps is not None:
            self.ssps.on_epoch_end(context, self.inference_encoder(), seed=context.epoch)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        state_dict.setdefault(prefix + "warmup_epochs", self.warmup_epochs)  # checkpoints from before it was saved
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
