"""Masked squared-difference losses, fused: hidden-state MSE and materialised attention-map MSE.

One kernel serves both. Rows are B·L tokens × d features (hidden) or B·H·L queries × L keys
(maps); a row's weight is its token's mask, and for maps each column is weighted by the
key's mask as well. Each program reduces BLOCK_R rows to a partial sum (no atomics →
deterministic) and, when the student needs gradients, writes the *unscaled* 2·(s − t)·valid
in the same pass (Liger's pattern: the backward is then a scale, not a second read of both
inputs). The scale grad_output/denom is applied in the backward in fp32 and the product cast
once: in fp16, an already scaled gradient (~1e-7 at mBERT shapes) would flush to zero, and
DeepSpeed's loss scale (65536) would overflow the cast. Memory-bound: each input is read once,
the gradient written once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sqdiff_kernel(S, T, M, PART, G, R, C, rows_per_b, L,
                   MAP: tl.constexpr, WITH_GRAD: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    if MAP:  # row = (b, h, i): token mask[b, i], key mask[b, j]
        b = rows // rows_per_b
        mrow = tl.load(M + b * L + rows % L, mask=rmask, other=0.0)
    else:    # row = token (b, l)
        mrow = tl.load(M + rows, mask=rmask, other=0.0)
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        inb = rmask[:, None] & (cols[None, :] < C)
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        s = tl.load(S + offs, mask=inb, other=0.0).to(tl.float32)
        t = tl.load(T + offs, mask=inb, other=0.0).to(tl.float32)
        w = mrow[:, None]
        if MAP:
            w = w * tl.load(M + b[:, None] * L + cols[None, :], mask=inb, other=0.0)
        d = (s - t) * w
        acc += d * d
        if WITH_GRAD:
            tl.store(G + offs, (2.0 * d).to(G.dtype.element_ty), mask=inb)
    tl.store(PART + pid, tl.sum(tl.sum(acc, axis=1), axis=0))


class _MaskedSqDiff(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, mask, is_map: bool):
        s, t = s.contiguous(), t.detach().contiguous()
        mf = mask.to(device=s.device, dtype=torch.float32).contiguous()
        if is_map:
            B, H, L, _ = s.shape
            R, C, rows_per_b = B * H * L, L, H * L
            n = mf.sum(-1)
            denom = H * (n * n).sum()
        else:
            L = s.shape[-2]
            R, C, rows_per_b = s.numel() // s.shape[-1], s.shape[-1], 1
            denom = mf.sum() * C
        denom = denom.clamp_min(1.0)
        BLOCK_C = min(triton.next_power_of_2(C), 256)  # 768 = 3×256: no masked-off lanes
        BLOCK_R = 4096 // BLOCK_C
        grid = (triton.cdiv(R, BLOCK_R),)
        part = torch.empty(grid[0], device=s.device, dtype=torch.float32)
        need = ctx.needs_input_grad[0]
        g = torch.empty_like(s) if need else part
        _sqdiff_kernel[grid](s, t, mf, part, g, R, C, rows_per_b, L,
                             MAP=is_map, WITH_GRAD=need, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
        if need:
            ctx.save_for_backward(g, denom)
        return part.sum() / denom

    @staticmethod
    def backward(ctx, go):
        g, denom = ctx.saved_tensors
        # the scale in fp32 (no host sync: denom stays on the device), one cast at the end
        return (g.float() * (go.float() / denom)).to(g.dtype), None, None, None


def hidden_mse(s_h, t_h, mask):
    return _MaskedSqDiff.apply(s_h, t_h, mask, False)


def attention_map_mse(s_attn, t_attn, mask):
    return _MaskedSqDiff.apply(s_attn, t_attn, mask, True)
