"""kernels: fused distillation losses (Triton) with plain-torch references.

Public API — every loss is a scalar, the teacher side never receives gradients, and each
takes `impl="auto" | "triton" | "torch"`:

    attention_score_mse(s_q, s_k, t_q, t_k, mask)                   TinyBERT, from Q/K
    attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature=1.0)    MiniLM, from Q/K
    attention_map_mse(s_attn, t_attn, mask)                         on materialised maps
    hidden_mse(s_h, t_h, mask)
    fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature=2.0, mask=None)

q/k are [B, H, L, D] (student and teacher may differ in D ≤ 128, not in B, H, L); mask is
[B, L] with 1 for real tokens (padding may be anywhere). "auto" runs Triton on CUDA tensors
when Triton is importable and the torch reference (kernels.reference) everywhere else.
"triton" on CPU tensors needs TRITON_INTERPRET=1 set before triton is first imported (the
test suite does this). Imports nothing else of this project.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from . import reference

__all__ = ["attention_score_mse", "attention_prob_kl", "attention_map_mse", "hidden_mse",
           "fused_linear_kl", "triton_available", "reference"]

_IMPLS = ("auto", "triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(impl: str, x) -> bool:
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    if impl == "auto":
        return x.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("impl='triton' but triton is not installed (pip install lightmbert[triton])")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 in the "
                           "environment before triton is imported (the Triton interpreter)")
    return True


def _triton(module: str):
    return importlib.import_module(f"{__name__}.{module}")


def attention_score_mse(s_q, s_k, t_q, t_k, mask, impl: str = "auto"):
    """Σ_b Σ_h Σ_{valid i,j} (S_s − S_t)² / (H · Σ_b n_b²), S = q·kᵀ/√D per model."""
    if _use_triton(impl, s_q):
        return _triton("attention").attention_score_mse(s_q, s_k, t_q, t_k, mask)
    return reference.attention_score_mse(s_q, s_k, t_q, t_k, mask)


def attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature: float = 1.0, impl: str = "auto"):
    """KL(softmax(S_t/T) ‖ softmax(S_s/T)) over real keys, mean over real queries and heads."""
    if _use_triton(impl, s_q):
        return _triton("attention").attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature)
    return reference.attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature)


def attention_map_mse(s_attn, t_attn, mask, impl: str = "auto"):
    """attention_score_mse on already materialised [B, H, L, L] maps."""
    if _use_triton(impl, s_attn):
        return _triton("elementwise").attention_map_mse(s_attn, t_attn, mask)
    return reference.attention_map_mse(s_attn, t_attn, mask)


def hidden_mse(s_h, t_h, mask, impl: str = "auto"):
    """Σ over real tokens and features of (s − t)² / (n_real · d)."""
    if _use_triton(impl, s_h):
        return _triton("elementwise").hidden_mse(s_h, t_h, mask)
    return reference.hidden_mse(s_h, t_h, mask)


def fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature: float = 2.0,
                    mask=None, impl: str = "auto"):
    """T² · mean over real rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)), z = h·Wᵀ + b,
    without the [N, V] logits of all rows at once (Triton path)."""
    if _use_triton(impl, s_h):
        return _triton("linear_kl").fused_linear_kl(s_h, s_w, t_h, t_w, s_b, t_b, temperature, mask)
    return reference.fused_linear_kl(s_h, s_w, t_h, t_w, s_b, t_b, temperature, mask)
