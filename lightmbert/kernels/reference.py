"""Plain-torch distillation losses: the CPU fallback and the test oracle.

They materialise everything (the L×L score maps, the N×V logits) and are written to be
obviously correct, not fast. Every loss is a scalar; the teacher side never receives
gradients (it is detached here). They compute in the dtype they are given — float64 in, float64
throughout (the tests' oracle) — except that half types are promoted to float32 (the CPU
fallback of a bf16 model must not accumulate L×L or V-wide sums in bf16). Shapes: q/k [B, H, L, D] (student and teacher may differ
in D), mask [B, L] with 1 for real tokens, hidden states [B, L, d], maps [B, H, L, L].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor, *others: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.dtype:
    """The compute dtype: `compute_dtype` when given (benchmarks: eager torch in the input
    dtype), else the widest of the inputs' dtypes, at least float32."""
    if compute_dtype is not None:
        return compute_dtype
    dt = torch.float32
    for t in (x, *others):
        if t is not None and t.is_floating_point():
            dt = torch.promote_types(dt, t.dtype)
    return dt


def _scores(q: torch.Tensor, k: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) / math.sqrt(q.shape[-1])


def _pair_mask(mask: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    m = mask.to(dt)
    return m[:, None, :, None] * m[:, None, None, :]  # [B, 1, L, L]: query and key real


def attention_map_mse(s_attn: torch.Tensor, t_attn: torch.Tensor, mask: torch.Tensor,
                      compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """TinyBERT's attention loss on materialised maps:
    Σ_b Σ_h Σ_{valid i,j} (A_s − A_t)² / (H · Σ_b n_b²)."""
    H, dt = s_attn.shape[1], _acc(s_attn, t_attn, compute_dtype=compute_dtype)
    valid = _pair_mask(mask, dt)
    diff = (s_attn.to(dt) - t_attn.detach().to(dt)) * valid
    denom = H * (mask.to(dt).sum(-1) ** 2).sum()
    return (diff * diff).sum() / denom.clamp_min(1.0)


def attention_score_mse(s_q, s_k, t_q, t_k, mask, compute_dtype=None) -> torch.Tensor:
    """TinyBERT's attention loss on the pre-softmax scores S = q·kᵀ/√D of each model."""
    dt = _acc(s_q, t_q, compute_dtype=compute_dtype)
    with torch.no_grad():
        t_scores = _scores(t_q, t_k, dt)
    return attention_map_mse(_scores(s_q, s_k, dt), t_scores, mask, dt)


def attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature: float = 1.0, compute_dtype=None) -> torch.Tensor:
    """MiniLM's attention loss: softmax over the real keys of S/T for each model,
    KL(P_t ‖ P_s) summed over keys, averaged over real queries and heads."""
    H, dt = s_q.shape[1], _acc(s_q, t_q, compute_dtype=compute_dtype)
    keys = mask.bool()[:, None, None, :]                         # [B, 1, 1, L]
    neg = torch.finfo(dt).min
    log_ps = torch.log_softmax((_scores(s_q, s_k, dt) / temperature).masked_fill(~keys, neg), -1)
    with torch.no_grad():
        log_pt = torch.log_softmax((_scores(t_q, t_k, dt) / temperature).masked_fill(~keys, neg), -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~keys, 0.0).sum(-1)  # [B, H, L]
    queries = mask.to(dt)[:, None, :]
    denom = H * mask.to(dt).sum()
    return (kl * queries).sum() / denom.clamp_min(1.0)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, d] → [B, heads, L, d / heads] (a view): a projection's output split into
    attention heads, or into MiniLMv2's relation heads (any count that divides d)."""
    B, L, d = x.shape
    return x.view(B, L, heads, d // heads).transpose(1, 2)


def hidden_mse(s_h: torch.Tensor, t_h: torch.Tensor, mask: torch.Tensor,
               compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Σ over real tokens and features of (s − t)² / (n_real · d)."""
    dt = _acc(s_h, t_h, compute_dtype=compute_dtype)
    m = mask.to(dt)[..., None]
    diff = (s_h.to(dt) - t_h.detach().to(dt)) * m
    return (diff * diff).sum() / (m.sum() * s_h.shape[-1]).clamp_min(1.0)


def fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature: float = 2.0,
                    mask=None, compute_dtype=None) -> torch.Tensor:
    """Logit KD: T² · mean over real rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)),
    z = h·Wᵀ + b; rows are tokens [..., d] (leading dims flattened), mask [...] or None."""
    dt = _acc(s_h, s_w, t_h, t_w, compute_dtype=compute_dtype)
    s_h, t_h = s_h.reshape(-1, s_h.shape[-1]), t_h.reshape(-1, t_h.shape[-1])
    z_s = F.linear(s_h.to(dt), s_w.to(dt), None if s_b is None else s_b.to(dt))
    with torch.no_grad():
        z_t = F.linear(t_h.to(dt), t_w.to(dt), None if t_b is None else t_b.to(dt))
        log_pt = torch.log_softmax(z_t / temperature, -1)
    log_ps = torch.log_softmax(z_s / temperature, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)              # [N]
    if mask is None:
        return temperature ** 2 * kl.mean()
    m = mask.reshape(-1).to(dt)
    return temperature ** 2 * (kl * m).sum() / m.sum().clamp_min(1.0)
