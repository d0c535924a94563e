"""Loss equations shared by the methods. Inputs are embeddings already L2-normalised.

Logits are computed in float32 with autocast off: at τ = 0.07 a bf16 cosine (≈3 significant
digits) would put errors of ~0.1 on the logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_logits(
    q: Tensor, k_pos: Tensor, negatives: Tensor, temperature: float, margin: float = 0.0
) -> Tensor:
    """logits_i = [(q_i·k⁺_i − m)/τ, q_i·n_1/τ, …, q_i·n_K/τ]  — positive in column 0, shape [N, 1+K]."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k_pos, negatives = q.float(), k_pos.float(), negatives.float()
        pos = (q * k_pos).sum(dim=1, keepdim=True) - margin
        neg = q @ negatives.t()
        return torch.cat([pos, neg], dim=1) / temperature


def positive_top1(logits: Tensor, target: Tensor, margin: float, temperature: float) -> Tensor:
    """Fraction of rows i with cos(q_i, k⁺_i) > max_j cos(q_i, n_j): the positive's margin added back, so an
    additive margin (which the loss demands) does not hide the retrieval accuracy of the embedding."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    pos = logits[rows, target] + margin / temperature
    others = logits.detach().clone()
    others[rows, target] = -torch.inf
    return (pos > others.max(dim=1).values).float().mean()


def info_nce(q: Tensor, k_pos: Tensor, queue: Tensor, temperature: float, margin: float = 0.0) -> Tensor:
    """L = mean_i −log e^((q_i·k⁺_i − m)/τ) / (e^((q_i·k⁺_i − m)/τ) + Σ_j e^(q_i·k_j/τ))  (MoCo eq. 1; m: MoCo-AM)."""
    logits = contrastive_logits(q, k_pos, queue, temperature, margin)
    return positive_cross_entropy(logits)


def positive_cross_entropy(logits: Tensor) -> Tensor:
    """mean_i −log softmax(logits_i)[0]  — cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


# ---- in-batch contrastive (SimCLR) ----------------------------------------------------------
def nt_xent_logits(
    z: Tensor, temperature: float, margin: float = 0.0, symmetric: bool = True,
    z_all: Tensor | None = None, offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """NT-Xent(-AM) logits and targets: each row an anchor, its positive at ``target``, −inf where excluded.

    z: [n, 2, D] unit embeddings of two views of the local utterances; z_all: [M, 2, D] the same
    for the whole (gathered) batch, with local utterance i at row ``offset + i`` (default z itself).
    symmetric (SimCLR, Lepage & Dehak's SNT-Xent): 2n anchors (both views), candidates all 2M views
    except the anchor itself, so 2M−2 negatives. Not symmetric: n anchors (view 0) against the
    M view-1 embeddings, M−1 negatives. The margin m is subtracted from the positive cosine.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        z_all = z if z_all is None else z_all.float()
        n, m_all = z.shape[0], z_all.shape[0]
        idx = torch.arange(n, device=z.device) + offset
        if symmetric:
            anchors = torch.cat([z[:, 0], z[:, 1]])  # rows: view 0 then view 1
            cands = torch.cat([z_all[:, 0], z_all[:, 1]])  # columns: view 0 then view 1
            self_col = torch.cat([idx, idx + m_all])
            target = torch.cat([idx + m_all, idx])  # the other view of the same utterance
        else:
            anchors, cands, self_col, target = z[:, 0], z_all[:, 1], None, idx
        sim = anchors @ cands.t()
        rows = torch.arange(sim.shape[0], device=z.device)
        pos = torch.zeros_like(sim)
        pos[rows, target] = margin
        logits = (sim - pos) / temperature
        if self_col is not None:
            logits = logits.index_put((rows, self_col), torch.tensor(float("-inf"), device=z.device))
        return logits, target


def nt_xent(
    z: Tensor, temperature: float, margin: float = 0.0, symmetric: bool = True,
    z_all: Tensor | None = None, offset: int = 0,
) -> Tensor:
    """L = mean_a −log e^((a·a⁺ − m)/τ) / (e^((a·a⁺ − m)/τ) + Σ_{n∈N(a)} e^(a·n/τ)); symmetric: a over both views, N(a) = both views of the other utterances (2N−2); else a = view 0, a⁺ = view 1, N(a) = view 1 of the others (N−1)."""
    logits, target = nt_xent_logits(z, temperature, margin, symmetric, z_all, offset)
    return F.cross_entropy(logits, target)


# ---- prototypical pretext tasks (each utterance its own class) -------------------------------
def prototypical_logits(queries: Tensor, centroids: Tensor) -> Tensor:
    """logits_ij = −‖q_i − c_j‖²  (prototypical networks; c_j = mean of the support segments of utterance j)."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q, c = queries.float(), centroids.float()
        d2 = q.pow(2).sum(1, keepdim=True) - 2.0 * q @ c.t() + c.pow(2).sum(1)[None, :]
        return -d2.clamp(min=0.0)


def angular_prototypical_logits(queries: Tensor, centroids: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """logits_ij = max(w, 1e-6)·cos(q_i, c_j) + b  (angular prototypical, Chung et al. 2020)."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        cos = F.normalize(queries.float(), dim=1) @ F.normalize(centroids.float(), dim=1).t()
        return cos * w.float().clamp(min=1e-6) + b.float()


# ---- margin softmax classifiers -----------------------------------------------------------------
def am_softmax_logits(cos: Tensor, labels: Tensor, margin: float, scale: float) -> Tensor:
    """logits_ij = s·(cos θ_ij − m·[j = y_i])  (AM-softmax / CosFace)."""
    with torch.autocast(device_type=cos.device.type, enabled=False):
        cos = cos.float()
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return scale * (cos - margin * onehot)


def aam_softmax_logits(cos: Tensor, labels: Tensor, margin: float, scale: float, easy_margin: bool = False) -> Tensor:
    """logits_ij = s·cos θ_ij for j ≠ y_i; s·cos(θ_iy + m) if θ_iy + m < π else s·(cos θ_iy − m·sin m) (easy_margin: cos(θ+m) only where cos θ > 0, else cos θ)  (AAM-softmax / ArcFace)."""
    with torch.autocast(device_type=cos.device.type, enabled=False):
        cos = cos.float()
        sine = (1.0 - cos * cos).clamp(min=1e-12).sqrt()
        phi = cos * math.cos(margin) - sine * math.sin(margin)  # cos(θ + m)
        if easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        else:
            # past θ = π − m, cos(θ + m) would increase again: continue linearly instead
            phi = torch.where(cos > math.cos(math.pi - margin), phi, cos - math.sin(math.pi - margin) * margin)
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return scale * torch.where(onehot, phi, cos)


# ---- supervised contrastive ---------------------------------------------------------------------
def supcon(
    z: Tensor, labels: Tensor, temperature: float, z_all: Tensor | None = None,
    labels_all: Tensor | None = None, offset: int = 0, reduction: str = "mean", margin: float = 0.0,
) -> Tensor:
    """L = mean_{i: y_i ≥ 0, P(i) ≠ ∅} −1/|P(i)| Σ_{p∈P(i)} log e^((z_i·z_p − m)/τ) / Σ_{a∈A(i)} e^((z_i·z_a − m·[a∈P(i)])/τ); A(i) = rows with y ≥ 0 except i, P(i) = {a ∈ A(i): y_a = y_i}  (SupCon L_out, Khosla et al. 2020 eq. 2; m > 0: an additive margin on the positives' cosines, as NT-Xent-AM)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"supcon: reduction must be 'mean' or 'sum', got {reduction!r}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        z_all, labels_all = (z, labels) if z_all is None else (z_all.float(), labels_all)
        if labels_all is None:
            raise ValueError("supcon: z_all needs labels_all")
        with torch.no_grad():
            self_mask = torch.zeros(z.shape[0], z_all.shape[0], dtype=torch.bool, device=z.device)
            rows = torch.arange(z.shape[0], device=z.device)
            self_mask[rows, rows + offset] = True
            cand = (labels_all >= 0)[None, :] & ~self_mask
            pos = (labels[:, None] == labels_all[None, :]) & cand
            keep = (labels >= 0) & pos.any(dim=1)  # anchors that have at least one positive
        if not bool(keep.any()):
            return z.sum() * 0.0  # no labelled pair: zero, still attached to the graph
        # only anchors with a positive: a row with no candidate at all would give NaN gradients
        pos = pos[keep]
        logits = ((z[keep] @ z_all.t() - margin * pos) / temperature).masked_fill(~cand[keep], float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1)
        return per_anchor.mean() if reduction == "mean" else per_anchor.sum()


# ---- per-sample losses and loss gates (label noise of pseudo-labels) ----------------------------
def per_sample_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """ℓ_i = −log(e^(logits_i,y_i) / Σ_j e^(logits_ij))  — each row's cross-entropy, shape [N], float32."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels, reduction="none")


def fraction_gate(losses: Tensor, fraction: float) -> Tensor:
    """g = ℓ_(n−⌊q·n⌋+1), the smallest of the ⌊q·n⌋ highest of the n finite losses (+∞ when ⌊q·n⌋ = 0): ℓ < g leaves them out."""
    finite = losses[torch.isfinite(losses)].float()
    n = finite.numel()
    dropped = math.floor(fraction * n)
    if dropped == 0:
        return torch.tensor(math.inf, device=losses.device)
    return finite.kthvalue(n - dropped + 1).values


def gated_mean(losses: Tensor, gate: Tensor | float, reduction: str = "mean") -> Tensor:
    """L = Σ_i ℓ_i·[ℓ_i < g] / max(1, Σ_i [ℓ_i < g])  (loss-gated learning, Tao et al. 2022); 0 when no row is kept; "sum": the numerator."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"gated_mean: reduction must be 'mean' or 'sum', got {reduction!r}")
    kept = losses.detach() < gate
    total = torch.where(kept, losses, torch.zeros_like(losses)).sum()  # a left-out +∞ adds neither ∞ nor NaN
    return total if reduction == "sum" else total / kept.sum().clamp(min=1).to(total.dtype)


def relabelled(logits: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """ŷ_i = argmax_j p_ij if max_j p_ij > τ else y_i, p_i = softmax(logits_i)  (label correction, DLG-LC, Han et al. 2022)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        top, best = F.softmax(logits.float(), dim=1).max(dim=1)
    return torch.where(top > threshold, best, labels)
