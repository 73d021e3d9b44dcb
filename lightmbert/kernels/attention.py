"""Attention-map distillation losses computed from Q and K in tiles, like flash-attention's
backward: no L×L score, probability or gradient map is ever stored, so both models can run
fused SDPA attention in their forward pass and only hand us their Q/K.

    score_mse : Σ_b Σ_h Σ_{valid i,j} (S_s − S_t)² / (H · Σ_b n_b²)          (TinyBERT)
    prob_kl   : Σ_{b,h, real i} KL(softmax_j(S_t/T) ‖ softmax_j(S_s/T)) / (H · Σ_b n_b)  (MiniLM)
with S = q·kᵀ/√D (each model its own D) and "valid" = query and key both real.

Kernels (grid = (query or key blocks, B·H); per-program partial sums, no atomics, so results
are deterministic):
  _fwd     one pass over the key blocks per query block: the MSE (and, when the student needs
           gradients, its dq — the MSE gradient needs no normaliser, so this saves a pass),
           or the KL with an online log-sum-exp for both models (saving both LSEs).
  _bwd_dq  KL only: recompute the tile's dS = P_s − P_t from the saved LSEs, accumulate dq.
  _bwd_dk  both: per key block, loop over query blocks, accumulate dk = dSᵀ·q.
fp32 inputs use IEEE fp32 dots; bf16/fp16 inputs use tensor-core dots with fp32
accumulation for the scores and tf32 dots for the gradients (dS·K, dSᵀ·Q), whose operands are
dS (fp32) and an fp32 copy of K or Q. TF32 keeps 10 mantissa bits: the copy of a bf16 (7 bits)
or fp16 (10 bits, subnormals included: TF32 has fp32's exponent) value is exact in it
(tests/test_kernels_triton.py checks this), so only dS is rounded, to 2^-11 relative — at or
below the rounding of the bf16/fp16 gradient that is returned. A bf16 dot would round dS to
2^-8 (what flash-attention's backward does); IEEE fp32 dots would cost ~3× on tensor cores
for no visible gain. Warps: 4, or 8 for head dims > 64 (128-wide tiles) in half precision:
there 64×128 tiles of q, k and the fp32 dq/dk accumulators do not fit 4 warps' registers
(sm_90 cubins, Triton 3.9, bf16, D_s = D_t = 128: _bwd_dk spills 456 B a thread with 4 warps,
216 B with 8; at D = 64 neither spills more than 8 B — lightmbert.kernels.compile_check
prints these). Not yet timed on a GPU: LIGHTMBERT_ATTN_NUM_WARPS overrides the choice.
The KL of a query row is formed as Σ p_t·(t − s) − lse_t + lse_s (online, one pass), a
difference of O(log L) terms; near convergence its rounding can go below 0, so each row is
clamped at 0 (a KL is never negative).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

MSE, KL = 0, 1
# finite "minus infinity" (keeps exp/max free of inf − inf = NaN); a constexpr, because
# compiled Triton code may only read module globals that are constexprs
_NEG = tl.constexpr(-1.0e30)


@triton.jit
def _scores(qs, qt, ks, kt, scale_s, scale_t, PREC: tl.constexpr):
    ss = tl.dot(qs, tl.trans(ks), input_precision=PREC) * scale_s
    st = tl.dot(qt, tl.trans(kt), input_precision=PREC) * scale_t
    return ss, st


@triton.jit
def _tile_dS(qs, qt, ks, kt, mi, mj, lse_s, lse_t, scale_s, scale_t, inv_t,
             LOSS: tl.constexpr, PREC: tl.constexpr):
    """∂loss/∂S_s of one tile, up to the per-call constant (MSE: S_s − S_t; KL: P_s − P_t)."""
    ss, st = _scores(qs, qt, ks, kt, scale_s, scale_t, PREC)
    valid = (mi[:, None] > 0) & (mj[None, :] > 0)
    if LOSS == 0:
        return tl.where(valid, ss - st, 0.0)
    # mask before exp: a padded row's LSE is ≈ −1e30 and exp(S − LSE) would overflow
    log_ps = tl.where(valid, ss * inv_t - lse_s[:, None], _NEG)
    log_pt = tl.where(valid, st * inv_t - lse_t[:, None], _NEG)
    return tl.exp(log_ps) - tl.exp(log_pt)


@triton.jit
def _load_rows(ptr, b, h, offs, L, sb, sh, sl, D, BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    p = ptr + b * sb + h * sh + offs[:, None] * sl + d[None, :]
    return tl.load(p, mask=(offs[:, None] < L) & (d[None, :] < D), other=0.0)


@triton.jit
def _load_block(XS, XT, M, b, h, offs, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb, DS, DT,
                BLOCK_DS: tl.constexpr, BLOCK_DT: tl.constexpr):
    """Student and teacher rows (q or k) of one block, and their token mask."""
    xs = _load_rows(XS, b, h, offs, L, s_sb, s_sh, s_sl, DS, BLOCK_DS)
    xt = _load_rows(XT, b, h, offs, L, t_sb, t_sh, t_sl, DT, BLOCK_DT)
    m = tl.load(M + b * m_sb + offs, mask=offs < L, other=0.0)
    return xs, xt, m


@triton.jit
def _load_lse(LSE_S, LSE_T, b, h, H, L, offs, LOSS: tl.constexpr, BLOCK: tl.constexpr):
    if LOSS == 1:
        row = (b * H + h) * L + offs
        lse_s = tl.load(LSE_S + row, mask=offs < L, other=0.0)
        lse_t = tl.load(LSE_T + row, mask=offs < L, other=0.0)
    else:  # the MSE needs no normaliser
        lse_s = tl.zeros([BLOCK], dtype=tl.float32)
        lse_t = lse_s
    return lse_s, lse_t


@triton.jit
def _store_rows(ptr, val, b, h, offs, L, sb, sh, sl, D, BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    p = ptr + b * sb + h * sh + offs[:, None] * sl + d[None, :]
    tl.store(p, val, mask=(offs[:, None] < L) & (d[None, :] < D))


@triton.jit
def _fwd(SQ, SK, TQ, TK, M, PART, DQ, LSE_S, LSE_T,
         s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb, g_sb, g_sh, g_sl, H, L, DS, DT, scale_s, scale_t, inv_t,
         LOSS: tl.constexpr, WITH_DQ: tl.constexpr, PREC: tl.constexpr, GPREC: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DS: tl.constexpr, BLOCK_DT: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qs, qt, mi = _load_block(SQ, TQ, M, b, h, offs_m, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb,
                             DS, DT, BLOCK_DS, BLOCK_DT)
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    dq = tl.zeros([BLOCK_M, BLOCK_DS], dtype=tl.float32)
    m_s = tl.full([BLOCK_M], _NEG, tl.float32)
    m_t = tl.full([BLOCK_M], _NEG, tl.float32)
    l_s = tl.zeros([BLOCK_M], dtype=tl.float32)
    l_t = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        ks, kt, mj = _load_block(SK, TK, M, b, h, offs_n, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb,
                                 DS, DT, BLOCK_DS, BLOCK_DT)
        ss, st = _scores(qs, qt, ks, kt, scale_s, scale_t, PREC)
        if LOSS == 0:
            d = tl.where((mi[:, None] > 0) & (mj[None, :] > 0), ss - st, 0.0)
            acc += tl.sum(d * d, axis=1)
            if WITH_DQ:
                dq += tl.dot(d, ks.to(tl.float32), input_precision=GPREC)
        else:
            key = mj[None, :] > 0
            s = tl.where(key, ss * inv_t, _NEG)
            t = tl.where(key, st * inv_t, _NEG)
            new_s = tl.maximum(m_s, tl.max(s, axis=1))
            new_t = tl.maximum(m_t, tl.max(t, axis=1))
            l_s = l_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(s - new_s[:, None]), axis=1)
            alpha = tl.exp(m_t - new_t)
            e_t = tl.exp(t - new_t[:, None])
            l_t = l_t * alpha + tl.sum(e_t, axis=1)
            acc = acc * alpha + tl.sum(tl.where(key, e_t * (t - s), 0.0), axis=1)
            m_s, m_t = new_s, new_t
    row = (b * H + h) * L + offs_m
    if LOSS == 0:
        total = tl.sum(acc, axis=0)
        if WITH_DQ:
            _store_rows(DQ, dq * scale_s, b, h, offs_m, L, g_sb, g_sh, g_sl, DS, BLOCK_DS)
    else:
        lse_s = m_s + tl.log(l_s)
        lse_t = m_t + tl.log(l_t)
        kl = tl.maximum(acc / l_t - lse_t + lse_s, 0.0)  # Σ_j p_t (t − s) − lse_t + lse_s ≥ 0
        total = tl.sum(tl.where(mi > 0, kl, 0.0), axis=0)
        tl.store(LSE_S + row, lse_s, mask=offs_m < L)
        tl.store(LSE_T + row, lse_t, mask=offs_m < L)
    tl.store(PART + bh * tl.num_programs(0) + pid_m, total)


@triton.jit
def _bwd_dq(SQ, SK, TQ, TK, M, DQ, LSE_S, LSE_T,
            s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb, g_sb, g_sh, g_sl, H, L, DS, DT, scale_s, scale_t, inv_t,
            LOSS: tl.constexpr, PREC: tl.constexpr, GPREC: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DS: tl.constexpr, BLOCK_DT: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qs, qt, mi = _load_block(SQ, TQ, M, b, h, offs_m, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb,
                             DS, DT, BLOCK_DS, BLOCK_DT)
    lse_s, lse_t = _load_lse(LSE_S, LSE_T, b, h, H, L, offs_m, LOSS, BLOCK_M)
    dq = tl.zeros([BLOCK_M, BLOCK_DS], dtype=tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        ks, kt, mj = _load_block(SK, TK, M, b, h, offs_n, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb,
                                 DS, DT, BLOCK_DS, BLOCK_DT)
        d = _tile_dS(qs, qt, ks, kt, mi, mj, lse_s, lse_t, scale_s, scale_t, inv_t, LOSS, PREC)
        dq += tl.dot(d, ks.to(tl.float32), input_precision=GPREC)
    _store_rows(DQ, dq * scale_s, b, h, offs_m, L, g_sb, g_sh, g_sl, DS, BLOCK_DS)


@triton.jit
def _bwd_dk(SQ, SK, TQ, TK, M, DK, LSE_S, LSE_T,
            s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb, g_sb, g_sh, g_sl, H, L, DS, DT, scale_s, scale_t, inv_t,
            LOSS: tl.constexpr, PREC: tl.constexpr, GPREC: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DS: tl.constexpr, BLOCK_DT: tl.constexpr):
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks, kt, mj = _load_block(SK, TK, M, b, h, offs_n, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb,
                             DS, DT, BLOCK_DS, BLOCK_DT)
    dk = tl.zeros([BLOCK_N, BLOCK_DS], dtype=tl.float32)
    for start in range(0, L, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        qs, qt, mi = _load_block(SQ, TQ, M, b, h, offs_m, L, s_sb, s_sh, s_sl, t_sb, t_sh, t_sl, m_sb,
                                 DS, DT, BLOCK_DS, BLOCK_DT)
        lse_s, lse_t = _load_lse(LSE_S, LSE_T, b, h, H, L, offs_m, LOSS, BLOCK_M)
        d = _tile_dS(qs, qt, ks, kt, mi, mj, lse_s, lse_t, scale_s, scale_t, inv_t, LOSS, PREC)
        dk += tl.dot(tl.trans(d), qs.to(tl.float32), input_precision=GPREC)
    _store_rows(DK, dk * scale_s, b, h, offs_n, L, g_sb, g_sh, g_sl, DS, BLOCK_DS)


# ------------------------------------------------------------------------------ launchers
def _pair(q: torch.Tensor, k: torch.Tensor):
    if q.stride(-1) != 1 or k.stride() != q.stride():
        return q.contiguous(), k.contiguous()
    return q, k


def _grad_buffer(x: torch.Tensor) -> torch.Tensor:
    """A contiguous fp32 gradient buffer of x's shape (`empty_like` would copy x's strides when
    x is dense and silently make it contiguous when it is not: the kernels address it with its
    own strides, see _args)."""
    return torch.empty(x.shape, device=x.device, dtype=torch.float32)


def _config(s_q, t_q):
    B, H, L, DS = s_q.shape
    DT = t_q.shape[-1]
    if DS > 128 or DT > 128:
        raise ValueError(f"head dim up to 128 supported, got student {DS}, teacher {DT}")
    return dict(B=B, H=H, L=L, DS=DS, DT=DT, **tile_config(s_q.dtype == torch.float32, DS, DT))


def tile_config(fp32: bool, DS: int, DT: int, num_warps: int | None = None) -> dict:
    """Tiles, dot precisions and warps. fp32 operands use IEEE dots and 32-wide tiles: 64-wide
    fp32 tiles need up to 164 KB of shared memory at D = 128 (seen in
    lightmbert.kernels.compile_check for sm_90), past an A100's limit and costly for occupancy
    on Hopper. num_warps: given, else $LIGHTMBERT_ATTN_NUM_WARPS, else 8 for half-precision
    head dims > 64 (128-wide tiles) and 4 otherwise (the module docstring says why)."""
    block = 32 if fp32 else 64
    if num_warps is None:
        env = os.environ.get("LIGHTMBERT_ATTN_NUM_WARPS", "")
        num_warps = int(env) if env else (8 if not fp32 and max(DS, DT) > 64 else 4)  # 128-wide tiles
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be a power of two from 1 to 16, got {num_warps}")
    return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_DS=max(16, triton.next_power_of_2(DS)),
                BLOCK_DT=max(16, triton.next_power_of_2(DT)),
                PREC="ieee" if fp32 else "tf32", GPREC="ieee" if fp32 else "tf32", num_warps=num_warps)


def _args(c, s_q, t_q, mask):
    """Strides of the student and teacher inputs, the mask, the (contiguous) fp32 gradient
    buffers — inputs may be views with gaps (a slice of a fused QKV projection), the buffers
    never are, so each is addressed with its own strides — and the sizes."""
    B, H, L, DS = s_q.shape
    g = (H * L * DS, L * DS, DS)  # torch.empty((B, H, L, DS)).stride()[:3]
    return (s_q.stride(0), s_q.stride(1), s_q.stride(2), t_q.stride(0), t_q.stride(1), t_q.stride(2),
            mask.stride(0), *g, c["H"], c["L"], c["DS"], c["DT"])


def _meta(c, loss, with_dq=None):
    m = {k: c[k] for k in ("PREC", "GPREC", "BLOCK_M", "BLOCK_N", "BLOCK_DS", "BLOCK_DT", "num_warps")}
    m["LOSS"] = loss
    if with_dq is not None:
        m["WITH_DQ"] = with_dq
    return m


class _AttentionLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_q, s_k, t_q, t_k, mask, loss: int, temperature: float):
        if t_q.dtype != s_q.dtype:  # one dot precision per launch: the teacher's no-grad copy
            t_q, t_k = t_q.to(s_q.dtype), t_k.to(s_q.dtype)  # follows the student's dtype
        s_q, s_k = _pair(s_q, s_k)  # the kernels take one set of strides per model
        t_q, t_k = _pair(t_q, t_k)
        c = _config(s_q, t_q)
        mf = mask.to(device=s_q.device, dtype=torch.float32).contiguous()
        n = mf.sum(-1)
        denom = (c["H"] * (n * n).sum()) if loss == MSE else (c["H"] * n.sum())
        scale_s, scale_t = 1.0 / math.sqrt(c["DS"]), 1.0 / math.sqrt(c["DT"])
        inv_t = 1.0 / temperature
        grid_m = triton.cdiv(c["L"], c["BLOCK_M"])
        part = torch.empty(c["B"] * c["H"] * grid_m, device=s_q.device, dtype=torch.float32)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        dq = _grad_buffer(s_q) if (need and loss == MSE) else part
        lse = [torch.empty(c["B"] * c["H"] * c["L"], device=s_q.device, dtype=torch.float32)
               for _ in range(2)] if loss == KL else [part, part]
        _fwd[(grid_m, c["B"] * c["H"])](s_q, s_k, t_q, t_k, mf, part, dq, *lse,
                                        *_args(c, s_q, t_q, mf), scale_s, scale_t, inv_t,
                                        **_meta(c, loss, need and loss == MSE))
        denom = denom.clamp_min(1.0)
        out = part.sum() / denom
        ctx.save_for_backward(s_q, s_k, t_q, t_k, mf, denom, *(lse if loss == KL else []),
                              *([dq] if loss == MSE and need else []))
        ctx.c, ctx.loss, ctx.scales = c, loss, (scale_s, scale_t, inv_t)
        return out

    @staticmethod
    def backward(ctx, go):
        c, loss = ctx.c, ctx.loss
        s_q, s_k, t_q, t_k, mf, denom, *rest = ctx.saved_tensors
        scale_s, scale_t, inv_t = ctx.scales
        if loss == KL:
            lse_s, lse_t = rest
        else:
            lse_s = lse_t = denom
        # ∂loss/∂S_s = coef · dS: MSE 2(S_s − S_t)/denom, KL (P_s − P_t)/(T·denom)
        coef = (go * (2.0 if loss == MSE else inv_t) / denom).to(torch.float32)
        args = (*_args(c, s_q, t_q, mf), scale_s, scale_t, inv_t)
        if loss == MSE:
            dq = rest[0]
        else:
            dq = _grad_buffer(s_q)
            _bwd_dq[(triton.cdiv(c["L"], c["BLOCK_M"]), c["B"] * c["H"])](
                s_q, s_k, t_q, t_k, mf, dq, lse_s, lse_t, *args, **_meta(c, loss))
        dk = _grad_buffer(s_k)
        _bwd_dk[(triton.cdiv(c["L"], c["BLOCK_N"]), c["B"] * c["H"])](
            s_q, s_k, t_q, t_k, mf, dk, lse_s, lse_t, *args, **_meta(c, loss))
        return ((dq * coef).to(s_q.dtype), (dk * coef).to(s_k.dtype), None, None, None, None, None)


def attention_score_mse(s_q, s_k, t_q, t_k, mask):
    return _AttentionLoss.apply(s_q, s_k, t_q.detach(), t_k.detach(), mask, MSE, 1.0)


def attention_prob_kl(s_q, s_k, t_q, t_k, mask, temperature: float = 1.0):
    return _AttentionLoss.apply(s_q, s_k, t_q.detach(), t_k.detach(), mask, KL, float(temperature))
