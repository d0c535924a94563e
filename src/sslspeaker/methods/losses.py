"""Loss equations shared by the methods. Inputs are embeddings already L2-normalised.

Logits are computed in float32 with autocast off: at τ = 0.07 a bf16 cosine (≈3 significant
digits) would put errors of ~0.1 on the logits.
"""

from __future__ import annotations

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


def info_nce(q: Tensor, k_pos: Tensor, queue: Tensor, temperature: float, margin: float = 0.0) -> Tensor:
    """L = mean_i −log e^((q_i·k⁺_i − m)/τ) / (e^((q_i·k⁺_i − m)/τ) + Σ_j e^(q_i·k_j/τ))  (MoCo eq. 1; m: MoCo-AM)."""
    logits = contrastive_logits(q, k_pos, queue, temperature, margin)
    return positive_cross_entropy(logits)


def positive_cross_entropy(logits: Tensor) -> Tensor:
    """mean_i −log softmax(logits_i)[0]  — cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
