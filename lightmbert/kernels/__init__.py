"""kernels: fused distillation losses (Triton) with plain-torch references.

Public API — every loss is a scalar, the teacher side never receives gradients, and each
takes `impl="auto" | "triton" | "torch"`:

    attention_score_mse(s_q, s_k, t_q, t_k, mask)                   TinyBERT, from Q/K
    attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature=1.0)    MiniLM, from Q/K
    attention_relation_kl(s_x, t_x, mask, heads, temperature=1.0)   MiniLMv2, from Q, K or V
    attention_map_mse(s_attn, t_attn, mask)                         on materialised maps
    hidden_mse(s_h, t_h, mask)
    fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature=2.0, mask=None)

q/k are [B, H, L, D] (student and teacher may differ in D, not in B, H, L); the mask is
[B, L] (for hidden states and fused_linear_kl: the rows' leading shape), **bool or integer
0/1, 1 = real token** — what Hugging Face models take as `attention_mask`. Float masks and
additive (0/−inf) masks are rejected, as are mismatched shapes and tensors on different
devices: every error names the argument and both shapes. (An integer mask holding values
other than 0/1 is rejected on CPU; on CUDA that check would cost a host sync per call, so
there any nonzero value counts as a real token, in both implementations.)

"auto" runs Triton on CUDA tensors when Triton is importable and the device can (bf16
needs sm_80+; head dims up to 128), and the torch reference (lightmbert.kernels.reference) otherwise —
with a one-time warning when a CUDA call falls back. "triton" on CPU tensors needs
TRITON_INTERPRET=1 set before triton is first imported (the test suite does this).
Imports nothing else of this project.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import torch

from . import reference

__all__ = ["attention_score_mse", "attention_prob_kl", "attention_relation_kl", "attention_map_mse",
           "hidden_mse", "fused_linear_kl", "triton_available", "reference"]

_IMPLS = ("auto", "triton", "torch")
MAX_HEAD_DIM = 128
_warned: set[str] = set()


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"kernels: {msg}; using the torch reference", RuntimeWarning, stacklevel=3)


def _use_triton(impl: str, x: torch.Tensor, head_dims: tuple[int, ...] = ()) -> bool:
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    wide = [d for d in head_dims if d > MAX_HEAD_DIM]
    if impl == "auto":
        if not x.is_cuda:
            return False
        if not triton_available():  # a GPU run on the slow path must say so
            _warn_once("triton", "triton is not installed (pip install lightmbert[triton])")
            return False
        if x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) < (8, 0):
            _warn_once("bf16", f"bf16 needs compute capability 8.0+ for Triton's dot, "
                               f"{torch.cuda.get_device_name(x.device)} has "
                               f"{'.'.join(map(str, torch.cuda.get_device_capability(x.device)))}")
            return False
        if wide:
            _warn_once("head_dim", f"head dim {max(wide)} > {MAX_HEAD_DIM} is not supported by the Triton "
                                   f"attention kernels")
            return False
        return True
    if not triton_available():
        raise RuntimeError("impl='triton' but triton is not installed (pip install lightmbert[triton])")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 in the "
                           "environment before triton is imported (the Triton interpreter)")
    if wide:
        raise ValueError(f"impl='triton': head dim {max(wide)} > {MAX_HEAD_DIM} is not supported "
                         f"(impl='auto' falls back to torch)")
    return True


def _triton(module: str):
    return importlib.import_module(f"{__name__}.{module}")


# ---------------------------------------------------------------------------- validation
def _shape(x) -> tuple:
    return tuple(x.shape)


def _tensors(**named) -> None:
    """Floating tensors, all on one device."""
    first = None
    for name, x in named.items():
        if x is None:
            continue
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if first is None:
            first = (name, x.device)
        elif x.device != first[1]:
            raise ValueError(f"{name} is on {x.device} but {first[0]} on {first[1]}: put every input on one device")


def _check_mask(mask, lead: tuple, device, what: str):
    """The mask contract: bool or integer 0/1 with shape `lead` (1 = real token)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a tensor {what}, got {type(mask).__name__}")
    if _shape(mask) != lead:
        raise ValueError(f"mask: shape {_shape(mask)} does not match {what} = {lead}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask: dtype {mask.dtype} not accepted: pass a bool or integer 0/1 mask (1 = real "
                        f"token, Hugging Face's attention_mask), not a float or additive (0/−inf) one")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but the inputs on {device}")
    if mask.dtype != torch.bool:
        if mask.device.type == "cpu" and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask: integer values must be 0 or 1, got min {int(mask.min())}, max {int(mask.max())}")
        mask = mask != 0  # both implementations then see exactly 0/1
    return mask


def _check_attention(s_q, s_k, t_q, t_k, mask):
    _tensors(s_q=s_q, s_k=s_k, t_q=t_q, t_k=t_k)
    for name, x in (("s_q", s_q), ("s_k", s_k), ("t_q", t_q), ("t_k", t_k)):
        if x.dim() != 4:
            raise ValueError(f"{name}: expected [B, H, L, D], got shape {_shape(x)}")
    if _shape(s_k) != _shape(s_q):
        raise ValueError(f"s_k: shape {_shape(s_k)} differs from s_q's {_shape(s_q)}")
    if _shape(t_k) != _shape(t_q):
        raise ValueError(f"t_k: shape {_shape(t_k)} differs from t_q's {_shape(t_q)}")
    if _shape(t_q)[:3] != _shape(s_q)[:3]:
        raise ValueError(f"t_q: [B, H, L] = {_shape(t_q)[:3]} must equal the student's {_shape(s_q)[:3]} "
                         f"(s_q {_shape(s_q)}, t_q {_shape(t_q)}; only D may differ)")
    B, _, L, _ = s_q.shape
    return _check_mask(mask, (B, L), s_q.device, "[B, L] of s_q")


def _check_same(s, t, mask, names: tuple[str, str], rank: int | None = None):
    _tensors(**{names[0]: s, names[1]: t})
    if rank is not None and s.dim() != rank:
        raise ValueError(f"{names[0]}: expected {rank} dims, got shape {_shape(s)}")
    if _shape(s) != _shape(t):
        raise ValueError(f"{names[1]}: shape {_shape(t)} differs from {names[0]}'s {_shape(s)}")
    lead = (s.shape[0], s.shape[2]) if rank == 4 else _shape(s)[:-1]  # maps: [B, H, L, L] → [B, L]
    return _check_mask(mask, lead, s.device, f"{'[B, L]' if rank == 4 else 'the leading dims'} of {names[0]}")


# ---------------------------------------------------------------------------- losses
def attention_score_mse(s_q, s_k, t_q, t_k, mask, impl: str = "auto"):
    """Σ_b Σ_h Σ_{valid i,j} (S_s − S_t)² / (H · Σ_b n_b²), S = q·kᵀ/√D per model."""
    mask = _check_attention(s_q, s_k, t_q, t_k, mask)
    if _use_triton(impl, s_q, (s_q.shape[-1], t_q.shape[-1])):
        return _triton("attention").attention_score_mse(s_q, s_k, t_q, t_k, mask)
    return reference.attention_score_mse(s_q, s_k, t_q, t_k, mask)


def attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature: float = 1.0, impl: str = "auto"):
    """KL(softmax(S_t/T) ‖ softmax(S_s/T)) over real keys, mean over real queries and heads."""
    mask = _check_attention(s_q, s_k, t_q, t_k, mask)
    if _use_triton(impl, s_q, (s_q.shape[-1], t_q.shape[-1])):
        return _triton("attention").attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature)
    return reference.attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature)


def attention_relation_kl(s_x, t_x, mask, heads: int, temperature: float = 1.0, impl: str = "auto"):
    """MiniLMv2 self-attention relation KL of one projection (Q, K or V) of each model, given
    as [B, L, d] (the projection's output: all attention heads side by side; d may differ
    between the models). Both are split into `heads` relation heads (independent of either
    model's head count: a narrower student just gets narrower relation heads); per head the
    relation is softmax_j(x_i·x_jᵀ / √(d/heads)) over real tokens, and the loss is
    KL(teacher ‖ student), mean over real tokens and heads. It is `attention_prob_kl` with
    k = q, so the Triton path never stores an L×L map; autograd adds the two gradients
    (through the query and the key side) of the student's x."""
    _tensors(s_x=s_x, t_x=t_x)
    for name, x in (("s_x", s_x), ("t_x", t_x)):
        if x.dim() != 3:
            raise ValueError(f"{name}: expected [B, L, d], got shape {_shape(x)}")
    if _shape(t_x)[:2] != _shape(s_x)[:2]:
        raise ValueError(f"t_x: [B, L] = {_shape(t_x)[:2]} must equal the student's {_shape(s_x)[:2]} "
                         f"(s_x {_shape(s_x)}, t_x {_shape(t_x)}; only d may differ)")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads: expected a positive int, got {heads!r}")
    for name, x in (("s_x", s_x), ("t_x", t_x)):
        if x.shape[-1] % heads:
            raise ValueError(f"heads: {heads} relation heads do not divide {name}'s width {x.shape[-1]} "
                             f"(s_x {_shape(s_x)}, t_x {_shape(t_x)})")
    s, t = reference.split_heads(s_x, heads), reference.split_heads(t_x, heads)
    return attention_prob_kl(s, s, t, t, mask, temperature, impl=impl)


def attention_map_mse(s_attn, t_attn, mask, impl: str = "auto"):
    """attention_score_mse on already materialised [B, H, L, L] maps."""
    mask = _check_same(s_attn, t_attn, mask, ("s_attn", "t_attn"), rank=4)
    if s_attn.shape[2] != s_attn.shape[3] or s_attn.shape[2] != mask.shape[1]:
        raise ValueError(f"s_attn: expected [B, H, L, L] with L = mask's {mask.shape[1]}, got {_shape(s_attn)}")
    if _use_triton(impl, s_attn):
        return _triton("elementwise").attention_map_mse(s_attn, t_attn, mask)
    return reference.attention_map_mse(s_attn, t_attn, mask)


def hidden_mse(s_h, t_h, mask, impl: str = "auto"):
    """Σ over real tokens and features of (s − t)² / (n_real · d)."""
    mask = _check_same(s_h, t_h, mask, ("s_h", "t_h"))
    if _use_triton(impl, s_h):
        return _triton("elementwise").hidden_mse(s_h, t_h, mask)
    return reference.hidden_mse(s_h, t_h, mask)


def fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature: float = 2.0,
                    mask=None, impl: str = "auto"):
    """T² · mean over real rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)), z = h·Wᵀ + b, rows
    [..., d] (leading dims flattened), without the [N, V] logits of all rows at once (Triton)."""
    _tensors(s_h=s_h, s_w=s_w, t_h=t_h, t_w=t_w, s_b=s_b, t_b=t_b)
    if s_w.dim() != 2 or t_w.dim() != 2 or s_w.shape[0] != t_w.shape[0]:
        raise ValueError(f"s_w/t_w: expected [V, d] with one V, got {_shape(s_w)} and {_shape(t_w)}")
    if s_h.shape[-1] != s_w.shape[1] or t_h.shape[-1] != t_w.shape[1]:
        raise ValueError(f"s_h {_shape(s_h)} / t_h {_shape(t_h)}: last dim must match s_w {_shape(s_w)} / "
                         f"t_w {_shape(t_w)}")
    if _shape(s_h)[:-1] != _shape(t_h)[:-1]:
        raise ValueError(f"t_h: rows {_shape(t_h)[:-1]} differ from s_h's {_shape(s_h)[:-1]}")
    for name, b in (("s_b", s_b), ("t_b", t_b)):
        if b is not None and _shape(b) != (s_w.shape[0],):
            raise ValueError(f"{name}: expected [V] = ({s_w.shape[0]},), got {_shape(b)}")
    if mask is not None:
        mask = _check_mask(mask, _shape(s_h)[:-1], s_h.device, "the leading dims of s_h")
    if _use_triton(impl, s_h):
        return _triton("linear_kl").fused_linear_kl(s_h, s_w, t_h, t_w, s_b, t_b, temperature, mask)
    return reference.fused_linear_kl(s_h, s_w, t_h, t_w, s_b, t_b, temperature, mask)
