"""Logit distillation without materialising [N, V] logits for all rows at once.

    loss = T² · mean over real rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)),   z = h·Wᵀ + b

Rows are processed in chunks sized so that one chunk's logits stay within a fixed budget:
per chunk, two matmuls (cuBLAS) make the student's and teacher's logits; `_kl_rows` makes
two passes over each row (online max/sum for both models, then KL and the gradient) and
writes T·(p_s − p_t) — ∂loss/∂z_s without its 1/N, values of order 1 that fp16 holds — over
the student's logits in place; matmuls turn that into the gradients of h, W and b, scaled by
1/N in fp32 and kept in fp32 (Liger's fused-linear pattern: the whole backward is done in the
forward, and backward() only multiplies by grad_output, in fp32, and casts once — a gradient
scaled before the cast flushes to zero in fp16, and DeepSpeed's loss scale 65536 overflows
it). Only the inputs that need a gradient get one: a frozen decoder weight tied to frozen
embeddings (LightMBERT's default) costs no [V, d] gradient and a quarter fewer GEMM FLOPs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOGIT_BUDGET = 1 << 26  # elements of one chunk's logits per model (256 MB in fp32)


@triton.jit
def _kl_rows(ZS, ZT, LOSS, stride_s, stride_t, V, inv_t, grad_scale, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    zs_row, zt_row = ZS + row * stride_s, ZT + row * stride_t
    m_s, l_s, m_t, l_t = -1.0e30, 0.0, -1.0e30, 0.0  # finite −∞: no inf − inf
    for start in range(0, V, BLOCK_V):        # pass 1: both log-sum-exps, online
        cols = start + tl.arange(0, BLOCK_V)
        inb = cols < V  # padding lanes: −1e30 in fp32 (as an fp16 load default it would be −inf)
        s = tl.where(inb, tl.load(zs_row + cols, mask=inb, other=0.0).to(tl.float32) * inv_t, -1.0e30)
        t = tl.where(inb, tl.load(zt_row + cols, mask=inb, other=0.0).to(tl.float32) * inv_t, -1.0e30)
        new_s = tl.maximum(m_s, tl.max(s, axis=0))
        new_t = tl.maximum(m_t, tl.max(t, axis=0))
        l_s = l_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(s - new_s), axis=0)
        l_t = l_t * tl.exp(m_t - new_t) + tl.sum(tl.exp(t - new_t), axis=0)
        m_s, m_t = new_s, new_t
    lse_s = m_s + tl.log(l_s)
    lse_t = m_t + tl.log(l_t)
    kl = 0.0
    for start in range(0, V, BLOCK_V):        # pass 2: KL and grad_scale·(p_s − p_t)
        cols = start + tl.arange(0, BLOCK_V)
        inb = cols < V
        s = tl.load(zs_row + cols, mask=inb, other=0.0).to(tl.float32) * inv_t - lse_s
        t = tl.load(zt_row + cols, mask=inb, other=0.0).to(tl.float32) * inv_t - lse_t
        p_t = tl.exp(t)
        kl += tl.sum(tl.where(inb, p_t * (t - s), 0.0), axis=0)
        grad = (tl.exp(s) - p_t) * grad_scale
        tl.store(zs_row + cols, grad.to(ZS.dtype.element_ty), mask=inb)
    tl.store(LOSS + row, kl)


def chunk_rows(n: int, v: int) -> int:
    return max(1, min(n, LOGIT_BUDGET // max(v, 1)))


class _FusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_h, s_w, s_b, t_h, t_w, t_b, temperature: float):
        n, V = s_h.shape[0], s_w.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = s_b is not None and ctx.needs_input_grad[2]
        step = chunk_rows(n, V)
        f32 = dict(device=s_h.device, dtype=torch.float32)
        g_h = torch.empty(s_h.shape, **f32) if need_h else None
        g_w = torch.zeros(s_w.shape, **f32) if need_w else None
        g_b = torch.zeros(V, **f32) if need_b else None
        kl = torch.empty(n, **f32)
        inv_n = 1.0 / max(n, 1)  # d(T²·mean KL)/dz_s = T·(p_s − p_t)/n: the kernel writes T·(p_s − p_t)
        block_v = min(triton.next_power_of_2(V), 1024 if not s_h.is_cuda else 4096)
        for a in range(0, n, step):
            hs, ht = s_h[a:a + step], t_h[a:a + step]
            z_s = torch.nn.functional.linear(hs, s_w, s_b).contiguous()
            z_t = torch.nn.functional.linear(ht, t_w, t_b).contiguous()
            _kl_rows[(hs.shape[0],)](z_s, z_t, kl[a:a + step], z_s.stride(0), z_t.stride(0), V,
                                     1.0 / temperature, float(temperature), BLOCK_V=block_v)
            if need_h:
                g_h[a:a + step] = (z_s @ s_w).float() * inv_n   # z_s now holds T·(p_s − p_t)
            if need_w:
                g_w += (z_s.t() @ hs).float() * inv_n
            if need_b:
                g_b += z_s.float().sum(0) * inv_n
        ctx.save_for_backward(*(g for g in (g_h, g_w, g_b) if g is not None))
        ctx.needs = (need_h, need_w, need_b)
        ctx.dtypes = (s_h.dtype, s_w.dtype)
        return temperature ** 2 * kl.sum() * inv_n

    @staticmethod
    def backward(ctx, go):
        saved = iter(ctx.saved_tensors)
        h_dtype, w_dtype = ctx.dtypes
        go = go.float()
        grads = [(next(saved) * go).to(dt) if need else None
                 for need, dt in zip(ctx.needs, (h_dtype, w_dtype, w_dtype))]
        return (*grads, None, None, None, None)


def fused_linear_kl(s_h, s_w, t_h, t_w, s_b=None, t_b=None, temperature: float = 2.0, mask=None):
    """Rows are tokens: s_h [..., d_s], t_h [..., d_t] (any leading dims, flattened)."""
    s_h, t_h = s_h.reshape(-1, s_h.shape[-1]), t_h.reshape(-1, t_h.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).bool()
        s_h, t_h = s_h[keep], t_h[keep]
    if s_h.shape[0] == 0:
        return s_h.sum() * 0.0
    with torch.no_grad():
        t_h, t_w = t_h.detach(), t_w.detach()
        t_b = t_b.detach() if t_b is not None else None
    return _FusedLinearKL.apply(s_h, s_w, s_b, t_h, t_w, t_b, float(temperature))
