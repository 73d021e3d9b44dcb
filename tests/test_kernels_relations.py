"""kernels.attention_relation_kl (MiniLMv2 self-attention relations) against an independent
float64 loop implementation written from the paper's definition — per sequence, relation head
and real token: the row softmax of the scaled dot products with every real token, then
KL(teacher ‖ student) — in both implementations (torch reference; Triton under the
interpreter on CPU, the real kernels on a GPU), values and student gradients.

Odd lengths, padding anywhere (right, holes, left, a single real token, a fully padded
sequence), relation heads ≠ the models' heads, a student narrower than the teacher, a
temperature ≠ 1. Fixed seeds plus one random seed printed in every failure message
(LIGHTMBERT_TEST_SEED=<seed> reproduces it).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from lightmbert import kernels

CUDA = torch.cuda.is_available()
RANDOM_SEED = int(os.environ.get("LIGHTMBERT_TEST_SEED") or int.from_bytes(os.urandom(2), "little"))
SEEDS = [0, 1, RANDOM_SEED]
TRITON = kernels.triton_available() and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if CUDA else "cpu"


def loop_relation_kl(s_x, t_x, mask, R, T=1.0):
    """The definition, one row at a time (float64, no shared code with kernels/)."""
    total, rows = s_x.new_zeros(()), 0
    for b in range(s_x.shape[0]):
        real = [j for j in range(s_x.shape[1]) if int(mask[b, j])]
        for r in range(R):
            for i in real:
                def log_rel(x):
                    w = x.shape[-1] // R
                    head = x[b, :, r * w:(r + 1) * w]
                    logits = torch.stack([torch.dot(head[i], head[j]) / math.sqrt(w) / T for j in real])
                    return logits - torch.logsumexp(logits, 0)
                lt, ls = log_rel(t_x.double()), log_rel(s_x)
                total = total + (lt.exp() * (lt - ls)).sum()
                rows += 1
    return total / max(rows, 1)


def make_mask(B, L, kind, g):
    m = torch.ones(B, L, dtype=torch.long)
    if kind == "right":
        for b in range(B):
            m[b, int(torch.randint(1, L + 1, (1,), generator=g)):] = 0
    elif kind == "holes":
        m = (torch.rand(B, L, generator=g) > 0.35).long()
        m[:, 0] = 1
    elif kind == "left":
        for b in range(B):
            m[b, :int(torch.randint(0, L, (1,), generator=g))] = 0
    elif kind == "edge":  # a single real token, a fully padded sequence, a full one
        m.zero_()
        m[0, L // 2] = 1
        m[2] = 1
    return m


def inputs(seed, B, L, ds, dt):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, ds, generator=g, dtype=torch.float64)
    # the teacher: related to the student where the widths allow, so the loss is not just noise
    t = torch.randn(B, L, dt, generator=g, dtype=torch.float64) * 1.5
    t[..., :min(ds, dt)] += s[..., :min(ds, dt)]
    return s, t, g


def compare(seed, B, L, ds, dt, R, kind, T, impl, dtype, tol, gtol):
    s, t, g = inputs(seed, B, L, ds, dt)
    mask = make_mask(B, L, kind, g)
    where = (f"seed={seed} (LIGHTMBERT_TEST_SEED={seed} reproduces it) B={B} L={L} ds={ds} dt={dt} R={R} "
             f"mask={kind} T={T} impl={impl} dtype={dtype}")
    ref_s = s.clone().requires_grad_()
    ref = loop_relation_kl(ref_s, t, mask, R, T)
    go = 0.5 + torch.rand((), generator=g, dtype=torch.float64).item()  # grad_output ≠ 1
    (ref * go).backward()
    dev = DEVICE if impl == "triton" else "cpu"
    ours_s = s.to(dev, dtype).requires_grad_()
    out = kernels.attention_relation_kl(ours_s, t.to(dev, dtype), mask.to(dev), R, T, impl=impl)
    (out * go).backward()
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) or impl == "triton", where
    err = abs(out.double().item() - ref.item()) / max(abs(ref.item()), 1e-12)
    assert err <= tol, f"{where}: loss {out.item():.8g} vs loop {ref.item():.8g} (rel {err:.2e})"
    grad = ours_s.grad.double().cpu()
    gerr = ((grad - ref_s.grad).norm() / ref_s.grad.norm().clamp_min(1e-30)).item()
    assert gerr <= gtol, f"{where}: student gradient rel err {gerr:.2e}"
    if kind == "edge":  # the fully padded sequence gets no gradient
        assert grad[1].abs().max() == 0, where


# (B, L, student width, teacher width, relation heads): R ≠ either model's heads, a narrower
# student, an odd L, L = 1, head dims that are not powers of two
SHAPES = [(3, 13, 24, 48, 4), (4, 7, 12, 12, 3), (3, 1, 8, 16, 2), (3, 19, 30, 20, 5)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["right", "holes", "left", "edge"])
def test_torch_reference_matches_the_loop_definition(seed, shape, kind):
    B, L, ds, dt, R = shape
    T = 1.0 if seed % 2 == 0 else 2.0
    compare(seed, B, L, ds, dt, R, kind, T, "torch", torch.float64, 1e-10, 1e-9)


@pytest.mark.skipif(not TRITON, reason="triton not installed, or no GPU and TRITON_INTERPRET unset")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,kind", [((3, 13, 24, 48, 4), "edge"), ((2, 37, 32, 64, 2), "holes"),
                                        ((3, 19, 30, 20, 5), "left")],
                         ids=["13-narrow-edge", "37-two-blocks-holes", "19-wider-student-left"])
def test_triton_matches_the_loop_definition(seed, shape, kind):
    B, L, ds, dt, R = shape
    compare(seed, B, L, ds, dt, R, kind, 1.0, "triton", torch.float32, 2e-5, 2e-4)


@pytest.mark.skipif(not TRITON, reason="triton not installed, or no GPU and TRITON_INTERPRET unset")
def test_triton_fp16_inputs():
    # fp16 operands, fp32 accumulation: the loss and gradient within fp16's rounding of x
    compare(RANDOM_SEED, 2, 21, 32, 64, 2, "right", 1.0, "triton", torch.float16, 2e-2, 3e-2)


@pytest.mark.parametrize("seed", SEEDS)
def test_blind_to_rotations_within_each_relation_head(seed):
    # relations are dot products inside a relation head: rotating the coordinates of each head
    # of the teacher leaves its relations — and the loss against itself — at exactly zero
    B, L, d, R = 2, 9, 12, 3
    s, _, g = inputs(seed, B, L, d, d)
    mask = make_mask(B, L, "holes", g)
    w = d // R
    rot = torch.block_diag(*[torch.linalg.qr(torch.randn(w, w, generator=g, dtype=torch.float64))[0]
                             for _ in range(R)])
    loss = kernels.attention_relation_kl(s, s @ rot, mask, R, impl="torch")
    assert abs(loss.item()) < 1e-12, f"seed={seed}: {loss.item()}"
    # a rotation across heads changes the relations (the loss is not blind to everything)
    full = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    assert kernels.attention_relation_kl(s, s @ full, mask, R, impl="torch").item() > 1e-4


def test_bad_inputs_name_the_argument():
    s, t = torch.randn(2, 5, 12), torch.randn(2, 5, 16)
    mask = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="5 relation heads do not divide s_x's width 12"):
        kernels.attention_relation_kl(s, torch.randn(2, 5, 15), mask, 5)
    with pytest.raises(ValueError, match="3 relation heads do not divide t_x's width 16"):
        kernels.attention_relation_kl(s, t, mask, 3)
    with pytest.raises(ValueError, match=r"s_x: expected \[B, L, d\]"):
        kernels.attention_relation_kl(s[0], t, mask, 4)
    with pytest.raises(ValueError, match=r"t_x: \[B, L\] = \(2, 4\)"):
        kernels.attention_relation_kl(s, t[:, :4], mask, 4)
    with pytest.raises(ValueError, match="heads: expected a positive int"):
        kernels.attention_relation_kl(s, t, mask, 0)
    with pytest.raises(ValueError, match="mask: shape"):
        kernels.attention_relation_kl(s, t, mask[:, :3], 4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)],
                         ids=["fp32", "fp16", "bf16"])
def test_gpu_realistic_shapes_against_the_fp64_reference(dtype, tol):
    # a 384-wide student, a 768-wide teacher, 12 relation heads (32 / 64 wide), L = 333
    B, L, ds, dt, R = 4, 333, 384, 768, 12
    s, t, g = inputs(RANDOM_SEED, B, L, ds, dt)
    mask = make_mask(B, L, "right", g).cuda()
    where = f"seed={RANDOM_SEED} (LIGHTMBERT_TEST_SEED reproduces it) dtype={dtype}"
    ref_s = s.cuda().requires_grad_()
    ref = kernels.attention_relation_kl(ref_s, t.cuda(), mask, R, impl="torch")
    ref.backward()
    ours_s = s.cuda().to(dtype).requires_grad_()
    out = kernels.attention_relation_kl(ours_s, t.cuda().to(dtype), mask, R, impl="triton")
    out.backward()
    assert abs(out.item() - ref.item()) <= tol * abs(ref.item()), f"{where}: {out.item()} vs {ref.item()}"
    gerr = ((ours_s.grad.double() - ref_s.grad).norm() / ref_s.grad.norm()).item()
    assert gerr <= 3 * tol, f"{where}: gradient rel err {gerr:.2e}"
