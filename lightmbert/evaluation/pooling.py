"""The sentence vector of an encoder: the masked mean of its token states.

One definition for training (the trainer's pooled/relation losses) and evaluation (retrieval,
transfer), so that what is trained is what is measured. Lives here, below both: the trainer
may import evaluation, never the other way round.
"""
from __future__ import annotations

import torch


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens in fp32: [B, L, d] → [B, d] (padding never counts)."""
    m = mask.unsqueeze(-1).float()
    return (h.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
