"""Plain-torch distillation losses: the CPU fallback and the test oracle.

They materialise everything (the L×L score maps, the N×V logits) and are written to be
obviously correct, not fast. Every loss is a scalar; the teacher side never receives
gradients (it is detached here). Shapes: q/k [B, H, L, D] (student and teacher may differ
in D), mask [B, L] with 1 for real tokens, hidden states [B, L, d], maps [B, H, L, L].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return m[:, None, :, None] * m[:, None, None, :]  # [B, 1, L, L]: query and key real


def attention_map_mse(s_attn: torch.Tensor, t_attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT's attention loss on materialised maps:
    Σ_b Σ_h Σ_{valid i,j} (A_s − A_t)² / (H · Σ_b n_b²)."""
    H = s_attn.shape[1]
    valid = _pair_mask(mask)
    diff = (s_attn.float() - t_attn.detach().float()) * valid
    denom = H * (mask.float().sum(-1) ** 2).sum()
    return (diff * diff).sum() / denom.clamp_min(1.0)


def attention_score_mse(s_q, s_k, t_q, t_k, mask) -> torch.Tensor:
    """TinyBERT's attention loss on the pre-softmax scores S = q·kᵀ/√D of each model."""
    with torch.no_grad():
        t_scores = _scores(t_q, t_k)
    return attention_map_mse(_scores(s_q, s_k), t_scores, mask)


def attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature: float = 1.0) -> torch.Tensor:
    """MiniLM's attention loss: softmax over the real keys of S/T for each model,
    KL(P_t ‖ P_s) summed over keys, averaged over real queries and heads."""
    H = s_q.shape[1]
    keys = mask.bool()[:, None, None, :]                         # [B, 1, 1, L]
    neg = torch.finfo(torch.float32).min
    log_ps = torch.log_softmax((_scores(s_q, s_k) / temperature).masked_fill(~keys, neg), -1)
    with torch.no_grad():
        log_pt = torch.log_softmax((_scores(t_q, t_k) / temperature).masked_fill(~keys, neg), -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~keys, 0.0).sum(-1)  # [B, H, L]
    queries = mask.float()[:, None, :]
    denom = H * mask.float().sum()
    return (kl * queries).sum() / denom.clamp_min(1.0)


def hidden_mse(s_h: torch.Tensor, t_h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over real tokens and features of (s − t)² / (n_real · d)."""
    m = mask.float()[..., None]
    diff = (s_h.float() - t_h.detach().float()) * m
    return (diff * diff).sum() / (m.sum() * s_h.shape[-1]).clamp_min(1.0)


def fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature: float = 2.0,
                    mask=None) -> torch.Tensor:
    """Logit KD: T² · mean over real rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)),
    z = h·Wᵀ + b; rows are tokens [N, d]."""
    z_s = F.linear(s_h.float(), s_w.float(), None if s_b is None else s_b.float())
    with torch.no_grad():
        z_t = F.linear(t_h.float(), t_w.float(), None if t_b is None else t_b.float())
        log_pt = torch.log_softmax(z_t / temperature, -1)
    log_ps = torch.log_softmax(z_s / temperature, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)              # [N]
    if mask is None:
        return temperature ** 2 * kl.mean()
    m = mask.reshape(-1).float()
    return temperature ** 2 * (kl * m).sum() / m.sum().clamp_min(1.0)
