"""Triton kernels against the torch references: on CPU under the Triton interpreter (fp32:
its bf16 dot is wrong), on CUDA at realistic shapes in bf16/fp16/fp32 (skipped without a GPU).

Every case runs on fixed seeds plus one random seed drawn per session and printed in every
failure message (rerun with it: LIGHTMBERT_TEST_SEED=<seed>), with odd lengths, masks with
padding anywhere, a single real token and fully padded sequences, and a grad_output ≠ 1.
"""
from __future__ import annotations

import os

import pytest
import torch

from lightmbert import kernels
from lightmbert.kernels import reference as R

CUDA = torch.cuda.is_available()
RANDOM_SEED = int(os.environ.get("LIGHTMBERT_TEST_SEED") or int.from_bytes(os.urandom(2), "little"))
SEEDS = [0, 1, RANDOM_SEED]
pytestmark = pytest.mark.skipif(not kernels.triton_available(), reason="triton not installed")
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytestmark = pytest.mark.skip(reason="no GPU and TRITON_INTERPRET is not set")


def make_mask(B, L, kind, g, device):
    m = torch.ones(B, L)
    if kind == "right":
        for b in range(B):
            m[b, torch.randint(1, L + 1, (1,), generator=g).item():] = 0
    elif kind == "holes":
        m = (torch.rand(B, L, generator=g) > 0.35).float()
        m[:, 0] = 1
    elif kind == "left":  # padding first (left-padded batches)
        for b in range(B):
            m[b, :torch.randint(0, L, (1,), generator=g).item()] = 0
    elif kind == "edge":  # a single real token, a fully padded sequence, a full one
        m.zero_()
        m[0, L // 2] = 1
        if B > 2:
            m[2] = 1
    return m.long().to(device)  # the API's contract: integer (or bool) 0/1, 1 = real token


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check(name, args_s, args_t, mask, extra=(), dtype=torch.float32, tol=1e-5, gtol=1e-4, seed=0, go=None):
    """Forward and student gradients of kernels.<name> (impl=triton) vs the reference in fp64."""
    g = torch.Generator().manual_seed(seed + 99)
    if go is None:
        go = (torch.rand((), generator=g) * 2 + 0.5).item()  # grad_output ≠ 1
    where = f"{name} seed={seed} (LIGHTMBERT_TEST_SEED={seed} reproduces it) dtype={dtype} go={go}"
    ref_in = [a.detach().double().requires_grad_() for a in args_s]
    ours_in = [a.detach().to(dtype).requires_grad_() for a in args_s]
    t64, tours = [t.double() for t in args_t], [t.to(dtype) for t in args_t]
    if name == "fused_linear_kl":  # (h, W, b) student; (h, W) teacher; (T,) extra
        ref = R.fused_linear_kl(ref_in[0], ref_in[1], *t64, ref_in[2], None, *extra, mask)
        out = kernels.fused_linear_kl(ours_in[0], ours_in[1], *tours, ours_in[2], None, *extra,
                                      mask, impl="triton")
    else:
        ref = getattr(R, name)(*ref_in, *t64, mask, *extra)
        out = getattr(kernels, name)(*ours_in, *tours, mask, *extra, impl="triton")
    assert ref.dtype == torch.float64, f"the oracle must compute in float64 ({where})"
    ref_g = torch.autograd.grad(ref * go, ref_in)
    out_g = torch.autograd.grad(out * go, ours_in)
    assert torch.isfinite(out).all(), where
    assert abs(out.item() - ref.item()) <= tol * max(1.0, abs(ref.item())), (out.item(), ref.item(), where)
    for i, (a, b) in enumerate(zip(out_g, ref_g)):
        assert a.dtype == dtype, where
        if dtype != torch.float32:  # the best a half dtype can hold: the exact gradient rounded once
            b = b.to(dtype).double()
        assert torch.isfinite(a).all(), f"input {i}: non-finite gradient ({where})"
        if b.abs().max() == 0:
            assert a.abs().max() == 0, where
        else:
            assert rel(a, b) <= gtol, f"input {i}: relative error {rel(a, b):.2e} > {gtol} ({where})"


def qk(B, H, L, D, g, device, noncontig=False):
    if noncontig:  # [B, L, H, D] → [B, H, L, D] view, as a model's projection reshaped
        return torch.randn(B, L, H, D, generator=g).to(device).transpose(1, 2)
    return torch.randn(B, H, L, D, generator=g).to(device)


# ------------------------------------------------------------------------------ CPU (interpreter)
INTERP = pytest.mark.skipif(CUDA, reason="CPU interpreter cases (a GPU runs the CUDA ones)")


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["attention_score_mse", "attention_prob_kl"])
@pytest.mark.parametrize("L,DS,DT,kind", [(37, 16, 24, "holes"), (33, 8, 8, "right"),
                                          (5, 32, 16, "edge"), (1, 16, 16, "none")])
def test_attention_losses_interpreter(name, L, DS, DT, kind, seed):
    g = torch.Generator().manual_seed(seed)
    B, H = 3, 2
    s = [qk(B, H, L, DS, g, "cpu", noncontig=(kind == "holes")), qk(B, H, L, DS, g, "cpu")]
    t = [qk(B, H, L, DT, g, "cpu"), qk(B, H, L, DT, g, "cpu", noncontig=True)]
    mask = make_mask(B, L, kind, g, "cpu")
    extra = (1.7,) if name == "attention_prob_kl" and kind == "right" else ()
    check(name, s, t, mask, extra, seed=seed)


def fused_qkv(B, L, H, D, g, scale=1.0):
    """Q and K as slices of one fused [B, L, 3·H·D] projection, viewed as [B, H, L, D]: not
    dense (strides (L·3HD, D, 3HD, 1)), like a model that packs its QKV matmul."""
    qkv = torch.randn(B, L, 3 * H * D, generator=g) * scale
    q = qkv[..., :H * D].view(B, L, H, D).transpose(1, 2)
    k = qkv[..., H * D:2 * H * D].view(B, L, H, D).transpose(1, 2)
    return q, k


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["attention_score_mse", "attention_prob_kl"])
def test_attention_on_fused_qkv_views(name, seed):
    """Non-dense Q/K: the gradients used to be stored with the inputs' gapped strides into
    contiguous buffers — out of bounds (a heap corruption under the interpreter)."""
    g = torch.Generator().manual_seed(seed)
    B, L, H = 2, 19, 2
    s_q, s_k = fused_qkv(B, L, H, 8, g)
    assert not s_q.is_contiguous() and s_q.stride() == (L * 3 * H * 8, 8, 3 * H * 8, 1)
    t_q, t_k = fused_qkv(B, L, H, 16, g)
    mask = make_mask(B, L, "right", g, "cpu")
    check(name, [s_q, s_k], [t_q, t_k], mask, seed=seed)
    # the torch implementation on the same views, same answer
    a, b = (x.detach().clone().requires_grad_() for x in (s_q, s_k))
    ref = getattr(kernels, name)(a, b, t_q, t_k, mask, impl="torch")
    ref.backward()
    c, d = (x.detach().clone().requires_grad_() for x in (s_q, s_k))
    out = getattr(kernels, name)(c, d, t_q, t_k, mask, impl="triton")
    out.backward()
    assert torch.allclose(out, ref, rtol=1e-5) and torch.allclose(c.grad, a.grad, rtol=1e-4, atol=1e-7), seed


def mixed(name, s_dtype, t_dtype, seed, device, L=23, D=(16, 32), B=3, H=2, tol=(1e-5, 1e-4)):
    """Student and teacher in different dtypes (a bf16 teacher next to an fp32 student): the
    losses are computed as if the teacher were in the student's dtype."""
    g = torch.Generator().manual_seed(seed)
    s_q, s_k = (x.to(device, s_dtype) for x in fused_qkv(B, L, H, D[0], g))
    t_q, t_k = (x.to(device, t_dtype) for x in fused_qkv(B, L, H, D[1], g))
    mask = make_mask(B, L, "left", g, device)
    a, b = (x.detach().requires_grad_() for x in (s_q, s_k))
    out = getattr(kernels, name)(a, b, t_q, t_k, mask, impl="triton")
    out.backward()
    ra, rb = (x.detach().double().requires_grad_() for x in (s_q, s_k))
    ref = getattr(R, name)(ra, rb, t_q.to(s_dtype).double(), t_k.to(s_dtype).double(), mask)
    ref.backward()
    where = f"{name} {s_dtype}/{t_dtype} seed={seed}"
    assert abs(out.item() - ref.item()) <= tol[0] * max(1.0, abs(ref.item())), (out.item(), ref.item(), where)
    assert a.grad.dtype == s_dtype and rel(a.grad, ra.grad) <= tol[1] and rel(b.grad, rb.grad) <= tol[1], where


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["attention_score_mse", "attention_prob_kl"])
def test_attention_mixed_student_teacher_dtypes_interpreter(name, seed):
    mixed(name, torch.float32, torch.float16, seed, "cpu")


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["holes", "edge", "right", "left"])
def test_elementwise_losses_interpreter(kind, seed):
    g = torch.Generator().manual_seed(seed)
    B, H, L, d = 3, 2, 37, 45
    mask = make_mask(B, L, kind, g, "cpu")
    check("hidden_mse", [torch.randn(B, L, d, generator=g)], [torch.randn(B, L, d, generator=g)], mask, seed=seed)
    check("attention_map_mse", [torch.rand(B, H, L, L, generator=g)], [torch.rand(B, H, L, L, generator=g)],
          mask, seed=seed)


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("budget", [10**9, 3000])  # one chunk / several chunks of rows
def test_fused_linear_kl_interpreter(budget, seed, monkeypatch):
    from lightmbert.kernels import linear_kl
    monkeypatch.setattr(linear_kl, "LOGIT_BUDGET", budget)
    g = torch.Generator().manual_seed(seed)
    N, ds, dt, V = 41, 24, 40, 1003
    s = [torch.randn(N, ds, generator=g), torch.randn(V, ds, generator=g) * 0.3, torch.randn(V, generator=g)]
    t = [torch.randn(N, dt, generator=g), torch.randn(V, dt, generator=g) * 0.3]
    mask = (torch.rand(N, generator=g) > 0.3).long()
    check("fused_linear_kl", s, t, mask, extra=(2.0,), seed=seed)


# DeepSpeed's fp16 loss scale (2^16) and its inverse: the gradients of an fp16 model go
# through backward multiplied by one of them; fp16's range is [6e-8, 65504].
@INTERP
@pytest.mark.parametrize("go", [65536.0, 1 / 65536])
@pytest.mark.parametrize("seed", SEEDS)
def test_fp16_gradients_survive_the_loss_scale(go, seed):
    """The gradient used to be scaled by 1/denom and cast to fp16 in the forward (most
    entries flushed to zero at real shapes) and then multiplied by grad_output cast to fp16
    (65536 → inf). Now: unscaled in the forward, scaled in fp32 in the backward, cast once."""
    g = torch.Generator().manual_seed(seed)
    B, L, d = 4, 64, 96          # denom = n_real·d ≈ 2·10^4: a scaled gradient ~1e-5
    mask = make_mask(B, L, "right", g, "cpu")
    mask[0] = 1
    tol = (2e-3, 2e-3)
    check("hidden_mse", [torch.randn(B, L, d, generator=g)], [torch.randn(B, L, d, generator=g)], mask,
          dtype=torch.float16, tol=tol[0], gtol=tol[1], seed=seed, go=go)
    N, V = 96, 2003              # grad ∝ 1/N·(p_s − p_t), p ~ 1/V: a scaled gradient ~5e-6
    s = [torch.randn(N, d, generator=g), torch.randn(V, d, generator=g) * 0.1, torch.randn(V, generator=g) * 0.1]
    t = [torch.randn(N, d, generator=g), torch.randn(V, d, generator=g) * 0.1]
    check("fused_linear_kl", s, t, None, extra=(2.0,), dtype=torch.float16, tol=5e-3, gtol=5e-3, seed=seed, go=go)


@INTERP
def test_frozen_decoder_weight_gets_no_gradient_buffer():
    """LightMBERT's default: the decoder weight is tied to the frozen embeddings. No [V, d]
    gradient may be formed (367 MB and a quarter of the GEMM FLOPs at mBERT size)."""
    g = torch.Generator().manual_seed(3)
    N, d, V = 17, 24, 301
    h = torch.randn(N, d, generator=g).requires_grad_()
    w, b = torch.randn(V, d, generator=g) * 0.2, torch.randn(V, generator=g)     # frozen
    th, tw = torch.randn(N, d, generator=g), torch.randn(V, d, generator=g) * 0.2
    loss = kernels.fused_linear_kl(h, w, th, tw, b, None, 2.0, impl="triton")
    saved = [tuple(t.shape) for t in loss.grad_fn.saved_tensors]
    assert saved == [(N, d)], f"only ∂loss/∂h may be kept, got {saved}"
    loss.backward()
    ref = h.detach().clone().requires_grad_()
    R.fused_linear_kl(ref, w, th, tw, b, None, 2.0).backward()
    assert torch.allclose(h.grad, ref.grad, rtol=1e-4, atol=1e-8)


@INTERP
def test_fused_linear_kl_weight_gradient_accumulates_in_fp32():
    """∂loss/∂W = Σ_rows g·hᵀ / N. It used to be a half-precision GEMM per chunk, then cast,
    scaled and added: 128 rows that agree (the teacher sure of one token the student misses,
    a large feature) sum to ≈ 10^5 before the 1/N — inf in fp16, although the gradient
    itself (≈ 800) fits. Now one GEMM per chunk with an fp32 accumulator and output."""
    g = torch.Generator().manual_seed(0)
    N, d, V = 128, 8, 64
    h = torch.randn(N, d, generator=g) * 0.1
    h[:, 0] = 400.0
    w, b = torch.randn(V, d, generator=g) * 0.01, torch.zeros(V)
    th, tw = torch.zeros(N, d), torch.zeros(V, d)
    th[:, 0], tw[3, 0] = 1.0, 40.0                  # the teacher: token 3, almost surely
    check("fused_linear_kl", [h, w, b], [th, tw], None, extra=(2.0,), dtype=torch.float16, tol=5e-3,
          gtol=5e-3, go=1.0)


def test_logit_chunks_fill_the_gpu():
    """CUDA chunks come from the free memory, with a floor of rows that fills the SMs: a fixed
    2^26-element budget gave 268 rows at V = 250k (132 SMs, GEMMs with M = 268)."""
    from lightmbert.kernels import linear_kl as K
    V, per_row = 250_000, 250_000 * 4                  # bf16 logits of both models
    assert K.chunk_rows(16384, V, per_row, free_bytes=70 << 30, sm_count=132) == 16384   # memory allows all
    assert K.chunk_rows(100_000, V, per_row, free_bytes=8 << 30, sm_count=132) == (2 << 30) // per_row
    assert K.chunk_rows(100_000, V, per_row, free_bytes=1 << 30, sm_count=132) == 1024    # the floor
    assert K.chunk_rows(100_000, V, per_row, free_bytes=1 << 30, sm_count=400) == 1600    # 4 rows per SM
    assert K.chunk_rows(300, V, per_row, free_bytes=1 << 30, sm_count=132) == 300         # never past n
    assert K.chunk_rows(100_000, V) == (1 << 26) // V                                     # CPU: as before


def test_logit_chunks_ask_the_device_for_free_memory(monkeypatch):
    """The launcher's side of it: a CUDA input reads mem_get_info and the SM count."""
    import types

    from lightmbert.kernels import linear_kl as K
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: asked.append(dev) or (4 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda dev=None: types.SimpleNamespace(multi_processor_count=132))
    monkeypatch.setitem(K._OUT_DTYPE_OK, "cuda", True)
    x = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), element_size=lambda: 2)
    assert K._chunk_step(x, 10**6, 250_000) == (1 << 30) // (250_000 * 4) and asked == [x.device]


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
def test_fp16_logit_gradients_stay_normal_at_250k_vocab(seed):
    """p ≈ 1/V: at V = 250k the stored T·(p_s − p_t) ≈ 10^-6 was subnormal in fp16 (fewer than
    10 significant bits; ≈ 2% error in ∂loss/∂W and ∂loss/∂b at DeepSpeed's loss scale). The
    kernel now stores it times a power of two, taken out again in fp32. Inputs are exact in
    fp16, so the oracle sees what the kernel sees; the best fp16 answer is the exact gradient
    rounded once (check's reference), which at go = 1 is itself subnormal for W and b."""
    g = torch.Generator().manual_seed(seed)
    N, d, V = 3, 16, 250_000

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).half().float()
    s, t = [rnd(N, d), rnd(V, d, scale=0.05), rnd(V, scale=0.05)], [rnd(N, d), rnd(V, d, scale=0.05)]
    check("fused_linear_kl", s, t, None, extra=(2.0,), dtype=torch.float16, tol=1e-4, gtol=2e-3, seed=seed,
          go=65536.0)


@INTERP
@pytest.mark.parametrize("seed", SEEDS)
def test_kl_is_never_negative_near_convergence(seed):
    """Student ≈ teacher: the true KL is ~1e-8. The linear KL used to be Σ p_t·(log p_t − log p_s),
    terms of both signs whose rounding (~1e-6) logged negative losses; it is now a sum of
    non-negative terms, accurate to 1e-3 here. The attention KL (online, one pass) is clamped
    at 0 per query row."""
    g = torch.Generator().manual_seed(seed)
    where = f"seed={seed} (LIGHTMBERT_TEST_SEED={seed} reproduces it)"
    N, d, V = 8, 16, 5003
    h, w = torch.randn(N, d, generator=g), torch.randn(V, d, generator=g) * 0.5
    s_h = h + 1e-4 * torch.randn(N, d, generator=g)
    ref = R.fused_linear_kl(s_h.double(), w.double(), h.double(), w.double()).item()
    out = kernels.fused_linear_kl(s_h, w, h, w, impl="triton").item()
    assert out >= 0 and abs(out - ref) <= 1e-3 * ref, (out, ref, where)
    B, H, L, D = 2, 2, 37, 16
    q, k = torch.randn(B, H, L, D, generator=g) * 2, torch.randn(B, H, L, D, generator=g) * 2
    s_q, s_k = q + 1e-4 * torch.randn(B, H, L, D, generator=g), k + 1e-4 * torch.randn(B, H, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    ref = R.attention_prob_kl(s_q.double(), s_k.double(), q.double(), k.double(), mask).item()
    out = kernels.attention_prob_kl(s_q, s_k, q, k, mask, impl="triton").item()
    assert out >= 0 and abs(out - ref) <= 1e-6, (out, ref, where)


def test_half_precision_operands_are_exact_in_tf32():
    """The premise of the gradient dots' TF32 on fp32 copies of K/Q (kernels/attention.py): a
    bf16 or fp16 value — every finite fp16, subnormals included — has no bits below TF32's
    10-bit mantissa once in fp32, so the copy loses nothing and only dS is rounded."""
    every_fp16 = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    bf16 = (torch.randn(1 << 16, generator=torch.Generator().manual_seed(0)) * 1e3).bfloat16()
    for x in (every_fp16[torch.isfinite(every_fp16)], bf16):
        bits = x.float().view(torch.int32)
        assert int((bits & 0x1FFF).abs().max()) == 0, x.dtype   # the 13 bits TF32 drops


def test_attention_warps_for_wide_heads(monkeypatch):
    from lightmbert.kernels import attention as A
    monkeypatch.delenv("LIGHTMBERT_ATTN_NUM_WARPS", raising=False)
    assert A.tile_config(False, 128, 64)["num_warps"] == 8 and A.tile_config(False, 64, 96)["num_warps"] == 8
    assert A.tile_config(False, 64, 64)["num_warps"] == 4
    assert A.tile_config(True, 128, 128)["num_warps"] == 4          # fp32: 32-wide tiles
    assert A.tile_config(False, 128, 128, num_warps=4)["num_warps"] == 4
    monkeypatch.setenv("LIGHTMBERT_ATTN_NUM_WARPS", "2")
    assert A.tile_config(False, 128, 128)["num_warps"] == 2
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        A.tile_config(False, 64, 64, num_warps=3)


@INTERP
@pytest.mark.parametrize("name", ["attention_score_mse", "attention_prob_kl"])
def test_attention_head_dim_128_fp16_interpreter(name):
    """D = 128 in fp16: the launch with 8 warps, against the oracle (fp16 operands, fp32
    accumulation: tolerances of fp16's rounding of q and k)."""
    g = torch.Generator().manual_seed(RANDOM_SEED)
    B, H, L = 2, 1, 11
    s = [qk(B, H, L, 128, g, "cpu") * 0.3, qk(B, H, L, 128, g, "cpu") * 0.3]
    t = [qk(B, H, L, 96, g, "cpu") * 0.3, qk(B, H, L, 96, g, "cpu") * 0.3]
    check(name, s, t, make_mask(B, L, "right", g, "cpu"), dtype=torch.float16, tol=5e-3, gtol=1e-2,
          seed=RANDOM_SEED)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=INTERP)])
def test_fused_linear_kl_takes_3d_rows_without_a_mask(impl):
    g = torch.Generator().manual_seed(5)
    B, L, d, V = 2, 7, 16, 97
    h, th = torch.randn(B, L, d, generator=g), torch.randn(B, L, d, generator=g)
    w, tw = torch.randn(V, d, generator=g), torch.randn(V, d, generator=g)
    flat = kernels.fused_linear_kl(h.reshape(-1, d), w, th.reshape(-1, d), tw, impl=impl)
    assert torch.allclose(kernels.fused_linear_kl(h, w, th, tw, impl=impl), flat, rtol=1e-6)
    m = torch.ones(B, L, dtype=torch.long)
    m[1, 4:] = 0
    masked = kernels.fused_linear_kl(h, w, th, tw, mask=m, impl=impl)
    assert torch.allclose(masked, kernels.fused_linear_kl(h[m.bool()], w, th[m.bool()], tw, impl=impl), rtol=1e-6)


def test_auto_dispatch_uses_torch_on_cpu(monkeypatch):
    called = []
    monkeypatch.setattr(R, "hidden_mse", lambda *a: called.append(1) or torch.tensor(0.0))
    x = torch.randn(2, 3, 4)
    kernels.hidden_mse(x, x, torch.ones(2, 3, dtype=torch.long))
    assert called == ([] if CUDA else [1])
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.hidden_mse(x, x, torch.ones(2, 3, dtype=torch.long), impl="cuda")


# ------------------------------------------------------------------------------ CUDA
GPU = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
TOLS = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 1e-2), torch.float16: (5e-3, 1e-2)}


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", list(TOLS))
@pytest.mark.parametrize("name", ["attention_score_mse", "attention_prob_kl"])
@pytest.mark.parametrize("L,D", [(128, 64), (512, 64), (77, 128)])
def test_attention_losses_cuda(name, dtype, L, D):
    g = torch.Generator().manual_seed(L * D)
    B, H = 8, 12
    s = [qk(B, H, L, D, g, "cuda", noncontig=True), qk(B, H, L, D, g, "cuda", noncontig=True)]
    t = [qk(B, H, L, 64, g, "cuda"), qk(B, H, L, 64, g, "cuda")]
    for kind in ("right", "left"):
        mask = make_mask(B, L, kind, g, "cuda")
        mask[1] = 0  # a fully padded sequence: no NaN
        check(name, s, t, mask, dtype=dtype, tol=TOLS[dtype][0], gtol=TOLS[dtype][1])


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("name", ["attention_score_mse", "attention_prob_kl"])
@pytest.mark.parametrize("s_dtype,t_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                             (torch.float16, torch.bfloat16)])
def test_attention_fused_qkv_mixed_dtypes_cuda(name, s_dtype, t_dtype):
    """mBERT shapes, fused-QKV views, left padding, student and teacher in different dtypes."""
    tol = TOLS[s_dtype]
    mixed(name, s_dtype, t_dtype, 11, "cuda", L=128, D=(64, 64), B=8, H=12, tol=(tol[0], tol[1]))


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("go", [65536.0, 1 / 65536])
def test_fp16_loss_scales_cuda(go):
    g = torch.Generator().manual_seed(13)
    B, L, d = 8, 128, 768
    mask = make_mask(B, L, "right", g, "cuda")
    check("hidden_mse", [torch.randn(B, L, d, generator=g).cuda()], [torch.randn(B, L, d, generator=g).cuda()],
          mask, dtype=torch.float16, tol=2e-3, gtol=2e-3, go=go)
    N, V = 1024, 30001
    s = [torch.randn(N, d, generator=g).cuda(), (torch.randn(V, d, generator=g) * 0.02).cuda(),
         torch.randn(V, generator=g).cuda() * 0.1]
    t = [torch.randn(N, d, generator=g).cuda(), (torch.randn(V, d, generator=g) * 0.02).cuda()]
    check("fused_linear_kl", s, t, None, extra=(2.0,), dtype=torch.float16, tol=5e-3, gtol=1e-2, go=go)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", list(TOLS))
def test_elementwise_and_linear_kl_cuda(dtype):
    g = torch.Generator().manual_seed(7)
    B, H, L, d = 8, 12, 128, 768
    mask = make_mask(B, L, "holes", g, "cuda")
    tol, gtol = TOLS[dtype]
    check("hidden_mse", [torch.randn(B, L, d, generator=g).cuda()], [torch.randn(B, L, d, generator=g).cuda()],
          mask, dtype=dtype, tol=tol, gtol=gtol)
    check("attention_map_mse", [torch.rand(B, H, L, L, generator=g).cuda()],
          [torch.rand(B, H, L, L, generator=g).cuda()], mask, dtype=dtype, tol=tol, gtol=gtol)
    N, V = 1024, 30001
    s = [torch.randn(N, d, generator=g).cuda(), (torch.randn(V, d, generator=g) * 0.02).cuda(),
         torch.randn(V, generator=g).cuda() * 0.1]
    t = [torch.randn(N, d, generator=g).cuda(), (torch.randn(V, d, generator=g) * 0.02).cuda()]
    check("fused_linear_kl", s, t, mask.reshape(-1)[:N].contiguous(), extra=(2.0,), dtype=dtype,
          tol=tol, gtol=gtol)


@pytest.mark.slow
def test_every_kernel_compiles_for_hopper():
    """Ahead-of-time compilation for sm_90 (no GPU needed): catches what the interpreter does
    not check (constexpr globals, dot operand types, loop-carried types, shared memory)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    r = subprocess.run([sys.executable, "-m", "lightmbert.kernels.compile_check", "--arch", "90"], env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " 0 failed" in r.stdout and "FAIL" not in r.stdout
