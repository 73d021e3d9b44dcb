"""Logit distillation without materialising [N, V] logits for all rows at once.

    loss = T² · mean over real rows of KL(softmax(z_t/T) ‖ softmax(z_s/T)),   z = h·Wᵀ + b

Rows are processed in chunks (`chunk_rows`: sized from the free device memory, never fewer
rows than fill the GPU); per chunk, two matmuls (cuBLAS) make the student's and teacher's
logits; `_kl_rows` makes two passes over each row (online max/sum for both models, then KL and
the gradient) and writes S·T·(p_s − p_t) — ∂loss/∂z_s without its 1/N, times a power of two
S (`grad_scale_pow2`) — over the student's logits in place. S is there for fp16: p ≈ 1/V, so
at V = 250k an unscaled T·(p_s − p_t) ≈ 1e-6 lies in fp16's subnormal range (below 6.1e-5,
with fewer than 10 significant bits) and the gradients made from it lose most of their
digits; scaled, it is a normal number, and S is taken out again (exactly: a power of two) in
the fp32 scale of the GEMMs' output. The GEMMs turn that into the gradients of h, W and b
accumulated in fp32 in one pass (`_addmm_f32`: fp32 accumulator and output; a half-precision
GEMM output would round every chunk's partial sum and can overflow fp16 when many rows agree),
scaled by 1/(N·S) and kept in fp32 (Liger's fused-linear pattern: the whole backward is done in
the forward, and backward() only multiplies by grad_output, in fp32, and casts once — a
gradient scaled before the cast flushes to zero in fp16, and DeepSpeed's loss scale 65536
overflows it). Only the inputs that need a gradient get one: a frozen decoder weight tied to
frozen embeddings (LightMBERT's default) costs no [V, d] gradient and a quarter fewer GEMM FLOPs.

The KL of a row is summed as Σ_v p_t·(e^u − 1 − u), u = log p_s − log p_t: every term is ≥ 0
(the textbook Σ p_t·(log p_t − log p_s) adds terms of both signs, and near convergence its
rounding makes the logged loss slightly negative).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOGIT_BUDGET = 1 << 26  # CPU (interpreter): elements of one chunk's logits per model
MEM_FRACTION = 0.25     # CUDA: at most this share of the free memory for one chunk's buffers
MIN_ROWS = 1024         # CUDA: at least this many rows per chunk (GEMMs with M ≥ 1024, ...
ROWS_PER_SM = 4         # ... and ≥ 4 row programs per SM for _kl_rows)
GRAD_HEADROOM = 1 << 14  # S·T·|p_s − p_t| ≤ 2^14: far from fp16's 65504 (|p_s − p_t| ≤ 1)


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
    d_lse = lse_s - lse_t
    kl = 0.0
    for start in range(0, V, BLOCK_V):        # pass 2: KL and grad_scale·(p_s − p_t)
        cols = start + tl.arange(0, BLOCK_V)
        inb = cols < V
        zs = tl.load(zs_row + cols, mask=inb, other=0.0).to(tl.float32) * inv_t
        zt = tl.load(zt_row + cols, mask=inb, other=0.0).to(tl.float32) * inv_t
        p_t = tl.exp(zt - lse_t)
        p_s = tl.exp(zs - lse_s)
        # u = log p_s − log p_t from the logits' difference (exact-ish near convergence, where
        # the two log-probs, each ≈ −log V, agree in most of their digits)
        u = (zs - zt) - d_lse
        # p_t·(e^u − 1 − u) ≥ 0: a Taylor series where the direct form would cancel (|u| < ½,
        # truncation < 1e-6 relative), p_s − p_t·(1 + u) elsewhere (no e^u: no inf·0)
        series = u * u * (0.5 + u * (0.16666666666666666 + u * (0.041666666666666664 + u * (
            0.008333333333333333 + u * (0.001388888888888889 + u * 0.0001984126984126984)))))
        term = tl.where(tl.abs(u) < 0.5, p_t * series, p_s - p_t * (1.0 + u))
        kl += tl.sum(tl.where(inb, term, 0.0), axis=0)
        tl.store(zs_row + cols, ((p_s - p_t) * grad_scale).to(ZS.dtype.element_ty), mask=inb)
    tl.store(LOSS + row, tl.maximum(kl, 0.0))


def chunk_rows(n: int, v: int, bytes_per_row: int = 0, free_bytes: int | None = None,
               sm_count: int = 0) -> int:
    """Rows per chunk. CPU (free_bytes None): LOGIT_BUDGET elements of logits per model. CUDA:
    MEM_FRACTION of the free memory over a row's buffers (`bytes_per_row`), but never fewer than
    max(MIN_ROWS, ROWS_PER_SM · SMs): a fixed element budget gave ~268 rows at V = 250k — too few
    programs for 132 SMs and GEMMs with M ≈ 268. (A device too full for the floor runs out of
    memory here, as it would one layer later.)"""
    if free_bytes is None:
        return max(1, min(n, LOGIT_BUDGET // max(v, 1)))
    by_memory = int(free_bytes * MEM_FRACTION) // max(bytes_per_row, 1)
    return max(1, min(n, max(by_memory, MIN_ROWS, ROWS_PER_SM * sm_count)))


def grad_scale_pow2(v: int, temperature: float) -> float:
    """S: the power of two that lifts T·(p_s − p_t) ≈ T/V to O(T) in the stored gradient
    (S ≤ V), capped so that S·T·|p_s − p_t| ≤ S·T ≤ GRAD_HEADROOM."""
    s = 1.0
    while s * 2 <= v and s * 2 * temperature <= GRAD_HEADROOM:
        s *= 2
    return s


_OUT_DTYPE_OK: dict[str, bool] = {}


def _gemm_out_fp32(device: torch.device) -> bool:
    """Whether this torch has half-in/fp32-out GEMMs here (torch.addmm(out_dtype=...), CUDA
    only, torch ≥ 2.8): probed once per device type with a tiny GEMM."""
    key = str(device.type)
    if key not in _OUT_DTYPE_OK:
        try:
            a = torch.ones(2, 2, device=device, dtype=torch.float16)
            r = torch.addmm(torch.zeros(2, 2, device=device), a, a, out_dtype=torch.float32)
            _OUT_DTYPE_OK[key] = r.dtype == torch.float32 and bool(r[0, 0] == 2)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK[key] = False
    return _OUT_DTYPE_OK[key]


def _addmm_f32(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """acc + alpha·(a @ b) as one GEMM with fp32 accumulation and fp32 output (acc None: 0 +):
    no half-precision partial sums, no separate cast/scale/add passes over the output."""
    if a.dtype != torch.float32 and not _gemm_out_fp32(a.device):
        a, b = a.float(), b.float()  # CPU or an older torch: upcast (chunk_rows counts the copy)
    if a.dtype == torch.float32:
        if acc is None:
            return torch.mm(a, b).mul_(alpha)
        return acc.addmm_(a, b, alpha=alpha)
    if acc is None:
        acc = torch.empty(a.shape[0], b.shape[1], device=a.device, dtype=torch.float32)
        return torch.addmm(acc, a, b, beta=0.0, alpha=alpha, out_dtype=torch.float32)
    return torch.addmm(acc, a, b, alpha=alpha, out_dtype=torch.float32)


def _chunk_step(s_h: torch.Tensor, n: int, v: int) -> int:
    if not s_h.is_cuda:
        return chunk_rows(n, v)
    free, _ = torch.cuda.mem_get_info(s_h.device)
    esz = s_h.element_size()
    per_row = v * (2 * esz + (0 if esz == 4 or _gemm_out_fp32(s_h.device) else 4))  # both logits (+ upcast)
    sms = torch.cuda.get_device_properties(s_h.device).multi_processor_count
    return chunk_rows(n, v, per_row, free, sms)


class _FusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_h, s_w, s_b, t_h, t_w, t_b, temperature: float):
        n, V = s_h.shape[0], s_w.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = s_b is not None and ctx.needs_input_grad[2]
        step = _chunk_step(s_h, n, V)
        f32 = dict(device=s_h.device, dtype=torch.float32)
        g_h = torch.empty(s_h.shape, **f32) if need_h else None
        g_w = torch.zeros(s_w.shape, **f32) if need_w else None
        g_b = torch.zeros(V, **f32) if need_b else None
        kl = torch.empty(n, **f32)
        scale = grad_scale_pow2(V, temperature)
        # d(T²·mean KL)/dz_s = T·(p_s − p_t)/n: the kernel writes S·T·(p_s − p_t), the GEMMs undo S·n
        unscale = 1.0 / (max(n, 1) * scale)
        block_v = min(triton.next_power_of_2(V), 1024 if not s_h.is_cuda else 4096)
        for a in range(0, n, step):
            hs, ht = s_h[a:a + step], t_h[a:a + step]
            z_s = torch.nn.functional.linear(hs, s_w, s_b).contiguous()
            z_t = torch.nn.functional.linear(ht, t_w, t_b).contiguous()
            _kl_rows[(hs.shape[0],)](z_s, z_t, kl[a:a + step], z_s.stride(0), z_t.stride(0), V,
                                     1.0 / temperature, float(temperature) * scale, BLOCK_V=block_v)
            if need_h:                               # z_s now holds S·T·(p_s − p_t)
                g_h[a:a + step] = _addmm_f32(None, z_s, s_w, unscale)
            if need_w:
                g_w = _addmm_f32(g_w, z_s.t(), hs, unscale)
            if need_b:
                g_b += z_s.float().sum(0) * unscale
        ctx.save_for_backward(*(g for g in (g_h, g_w, g_b) if g is not None))
        ctx.needs = (need_h, need_w, need_b)
        ctx.dtypes = (s_h.dtype, s_w.dtype)
        return temperature ** 2 * kl.sum() / max(n, 1)

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
