"""The torch references against independent formulations (they are the test oracle)."""
import math

import pytest
import torch
import torch.nn.functional as F

from lightmbert.kernels import reference as R


def masks(B, L, g):
    m = torch.ones(B, L)
    m[0, L - L // 3:] = 0                                   # right padding
    if B > 1:
        m[1] = (torch.rand(L, generator=g) > 0.3).float()   # holes anywhere
        m[1, 0] = 1
    if B > 2:
        m[2] = 0
        m[2, L // 2] = 1                                    # a single real token
    if B > 3:
        m[3] = 0                                            # fully padded sequence
    return m


def test_score_and_hidden_mse_against_loops():
    g = torch.Generator().manual_seed(0)
    B, H, L, D, d = 4, 2, 5, 3, 4
    sq, sk = torch.randn(B, H, L, D, generator=g, dtype=torch.float64), torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    tq, tk = torch.randn(B, H, L, 7, generator=g, dtype=torch.float64), torch.randn(B, H, L, 7, generator=g, dtype=torch.float64)
    m = masks(B, L, g)
    num, n2 = 0.0, 0.0
    for b in range(B):
        n2 += m[b].sum().item() ** 2
        for h in range(H):
            for i in range(L):
                for j in range(L):
                    if m[b, i] and m[b, j]:
                        ss = sum(sq[b, h, i, x] * sk[b, h, j, x] for x in range(D)) / math.sqrt(D)
                        st = sum(tq[b, h, i, x] * tk[b, h, j, x] for x in range(7)) / math.sqrt(7)
                        num += float(ss - st) ** 2
    # the oracle computes in the dtype it is given: float64 in, float64 out, to float64 precision
    got = R.attention_score_mse(sq, sk, tq, tk, m)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(num / (H * n2), rel=1e-12)
    sh, th = (torch.randn(B, L, d, generator=g, dtype=torch.float64) for _ in range(2))
    want = sum(((sh[b, i] - th[b, i]) ** 2).sum().item() for b in range(B) for i in range(L) if m[b, i])
    got = R.hidden_mse(sh, th, m)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want / (m.sum().item() * d), rel=1e-12)


def _bert(seed, H=4, hidden=32, layers=1):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=H,
                     intermediate_size=37)
    return BertModel._from_config(cfg, attn_implementation="eager").eval()


def _qk_and_probs(model, ids, mask):
    """Q/K captured by hooks on the projections + HF's own eager attention probabilities."""
    got = {}
    att = model.encoder.layer[0].attention.self
    hooks = [att.query.register_forward_hook(lambda m, i, o: got.__setitem__("q", o)),
             att.key.register_forward_hook(lambda m, i, o: got.__setitem__("k", o))]
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
    for h in hooks:
        h.remove()
    B, L, _ = got["q"].shape
    H = model.config.num_attention_heads
    split = lambda x: x.view(B, L, H, -1).transpose(1, 2)  # noqa: E731
    return split(got["q"]), split(got["k"]), out.attentions[0]


@pytest.mark.parametrize("temperature", [1.0])
def test_prob_kl_against_hf_eager_attention(temperature):
    g = torch.Generator().manual_seed(1)
    B, L = 3, 11
    ids = torch.randint(0, 50, (B, L), generator=g)
    m = masks(B, L, g).long()
    s_q, s_k, p_s = _qk_and_probs(_bert(1), ids, m)
    t_q, t_k, p_t = _qk_and_probs(_bert(2, hidden=48), ids, m)   # teacher: different D
    # independent formulation from HF's probabilities (masked keys have ~0 probability)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-30)) - torch.log(p_s.clamp_min(1e-30)))).sum(-1)
    want = (kl * m[:, None, :]).sum() / (4 * m.sum())
    got = R.attention_prob_kl(s_q, s_k, t_q, t_k, m, temperature)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    # and the score-space MSE is the map MSE of the raw scores
    ss = s_q @ s_k.transpose(-1, -2) / math.sqrt(s_q.shape[-1])
    st = t_q @ t_k.transpose(-1, -2) / math.sqrt(t_q.shape[-1])
    assert R.attention_score_mse(s_q, s_k, t_q, t_k, m).item() == pytest.approx(
        R.attention_map_mse(ss, st, m).item(), rel=1e-6)


def test_fused_linear_kl_against_kl_div():
    g = torch.Generator().manual_seed(3)
    N, d, V, T = 9, 6, 23, 2.0
    sh, sw, sb = torch.randn(N, d, generator=g), torch.randn(V, d, generator=g), torch.randn(V, generator=g)
    th, tw = torch.randn(N, 8, generator=g), torch.randn(V, 8, generator=g)
    m = torch.ones(N)
    m[2] = m[5] = 0
    zs, zt = sh @ sw.T + sb, th @ tw.T
    per_row = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True,
                       reduction="none").sum(-1)
    want = T * T * per_row[m.bool()].mean()
    assert R.fused_linear_kl(sh, sw, th, tw, sb, None, T, m).item() == pytest.approx(want.item(), rel=1e-5)
    d64 = [x.double() for x in (sh, sw, th, tw, sb)]
    got = R.fused_linear_kl(d64[0], d64[1], d64[2], d64[3], d64[4], None, T, m)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want.item(), rel=1e-6)
    # bf16 in: computed in fp32 (a CPU fallback must not sum V-wide in bf16)
    assert R.fused_linear_kl(*(x.bfloat16() for x in (sh, sw, th, tw)), None, None, T).dtype == torch.float32


def test_teacher_gets_no_gradient_and_no_nan_when_all_padded():
    B, H, L, D = 2, 2, 4, 8
    t_q = torch.randn(B, H, L, D, requires_grad=True)
    s_q = torch.randn(B, H, L, D, requires_grad=True)
    m = torch.zeros(B, L)
    for fn in (R.attention_score_mse, R.attention_prob_kl):
        out = fn(s_q, s_q, t_q, t_q, m)
        out.backward()
        assert out.item() == 0.0 and torch.isfinite(s_q.grad).all()
        assert t_q.grad is None


# ---------------------------------------------------------------------------- the public API
def _qk(*shape):
    return torch.randn(*shape)


@pytest.mark.parametrize("call,error,message", [
    (lambda k: k.attention_score_mse(_qk(2, 3, 5, 8), _qk(2, 3, 5, 8), _qk(2, 4, 5, 8), _qk(2, 4, 5, 8),
                                     torch.ones(2, 5, dtype=torch.long)),
     ValueError, r"t_q: \[B, H, L\] = \(2, 4, 5\) must equal the student's \(2, 3, 5\)"),
    (lambda k: k.attention_prob_kl(_qk(2, 3, 5, 8), _qk(2, 3, 6, 8), _qk(2, 3, 5, 8), _qk(2, 3, 5, 8),
                                   torch.ones(2, 5, dtype=torch.long)),
     ValueError, r"s_k: shape \(2, 3, 6, 8\) differs from s_q's \(2, 3, 5, 8\)"),
    (lambda k: k.attention_score_mse(_qk(2, 3, 5, 8), _qk(2, 3, 5, 8), _qk(2, 3, 5, 4), _qk(2, 3, 5, 4),
                                     torch.ones(2, 7, dtype=torch.long)),
     ValueError, r"mask: shape \(2, 7\) does not match \[B, L\] of s_q = \(2, 5\)"),
    (lambda k: k.attention_score_mse(_qk(2, 3, 5, 8), _qk(2, 3, 5, 8), _qk(2, 3, 5, 4), _qk(2, 3, 5, 4),
                                     torch.zeros(2, 5).masked_fill(torch.rand(2, 5) > 0.5, float("-inf"))),
     TypeError, r"mask: dtype torch.float32 not accepted.*additive"),
    (lambda k: k.hidden_mse(_qk(2, 5, 8), _qk(2, 5, 8), torch.ones(2, 5)),
     TypeError, r"mask: dtype torch.float32 not accepted"),
    (lambda k: k.hidden_mse(_qk(2, 5, 8), _qk(2, 5, 8), torch.full((2, 5), 2)),
     ValueError, r"mask: integer values must be 0 or 1, got min 2, max 2"),
    (lambda k: k.hidden_mse(_qk(2, 5, 8), _qk(2, 5, 9), torch.ones(2, 5, dtype=torch.bool)),
     ValueError, r"t_h: shape \(2, 5, 9\) differs from s_h's \(2, 5, 8\)"),
    (lambda k: k.hidden_mse(_qk(2, 5, 8), _qk(2, 5, 8).to("meta"), torch.ones(2, 5, dtype=torch.bool)),
     ValueError, r"t_h is on meta but s_h on cpu"),
    (lambda k: k.attention_map_mse(_qk(2, 3, 5, 5), _qk(2, 3, 5, 5), torch.ones(2, 4, dtype=torch.long)),
     ValueError, r"mask: shape \(2, 4\) does not match \[B, L\] of s_attn = \(2, 5\)"),
    (lambda k: k.fused_linear_kl(_qk(6, 8), _qk(50, 8), _qk(6, 4), _qk(49, 4)),
     ValueError, r"s_w/t_w: expected \[V, d\] with one V, got \(50, 8\) and \(49, 4\)"),
    (lambda k: k.fused_linear_kl(_qk(6, 8), _qk(50, 8), _qk(5, 4), _qk(50, 4)),
     ValueError, r"t_h: rows \(5,\) differ from s_h's \(6,\)"),
    (lambda k: k.fused_linear_kl(_qk(2, 3, 8), _qk(50, 8), _qk(2, 3, 4), _qk(50, 4), mask=torch.ones(6, dtype=torch.long)),
     ValueError, r"mask: shape \(6,\) does not match the leading dims of s_h = \(2, 3\)"),
    (lambda k: k.fused_linear_kl(_qk(6, 8), _qk(50, 8), _qk(6, 4), _qk(50, 4), s_b=_qk(49)),
     ValueError, r"s_b: expected \[V\] = \(50,\), got \(49,\)"),
])
@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_bad_inputs_are_named_before_any_work(call, error, message, impl):
    """Mismatched B/H/L, wrong mask shapes, float/additive masks, other devices: an error that
    names the argument and both shapes — never an out-of-bounds read or impl-dependent result."""
    import functools

    from lightmbert import kernels
    api = type("api", (), {n: staticmethod(functools.partial(getattr(kernels, n), impl=impl))
                           for n in ("attention_score_mse", "attention_prob_kl", "attention_map_mse",
                                     "hidden_mse", "fused_linear_kl")})
    with pytest.raises(error, match=message):
        call(api)


def test_bool_and_integer_masks_give_the_same_loss():
    from lightmbert import kernels
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 6, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    m = masks(3, 6, g)
    ref = R.hidden_mse(s, t, m)
    for mm in (m.bool(), m.long(), m.int(), m.to(torch.uint8)):
        assert torch.equal(kernels.hidden_mse(s, t, mm, impl="torch"), ref)


def test_auto_dispatch_falls_back_with_one_warning(monkeypatch):
    """On CUDA, `auto` uses Triton only where it can: bf16 needs sm_80+, head dims ≤ 128;
    otherwise the torch reference with a one-time warning (never an exception)."""
    import types

    from lightmbert import kernels
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    monkeypatch.setattr(kernels, "_warned", set())
    cap = [(7, 5)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap[0])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    x = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device="cuda:0")
    with pytest.warns(RuntimeWarning, match="bf16 needs compute capability 8.0"):
        assert kernels._use_triton("auto", x) is False
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        assert kernels._use_triton("auto", x) is False          # once only
    x16 = types.SimpleNamespace(is_cuda=True, dtype=torch.float16, device="cuda:0")
    assert kernels._use_triton("auto", x16) is True             # fp16 works on sm_75
    cap[0] = (9, 0)
    assert kernels._use_triton("auto", x) is True
    with pytest.warns(RuntimeWarning, match="head dim 256 > 128"):
        assert kernels._use_triton("auto", x, (64, 256)) is False
    with pytest.raises(ValueError, match="head dim 256 > 128 is not supported"):
        kernels._use_triton("triton", x, (256,))


def test_cuda_without_triton_warns_once_and_uses_torch(monkeypatch):
    """The module docstring's promise: a CUDA call that falls back because Triton is missing
    says so once (it used to fall back silently); CPU tensors fall back without a word."""
    import types
    import warnings

    from lightmbert import kernels
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    monkeypatch.setattr(kernels, "_warned", set())
    x = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device="cuda:0")
    with pytest.warns(RuntimeWarning, match="triton is not installed .* using the torch reference"):
        assert kernels._use_triton("auto", x) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels._use_triton("auto", x) is False                      # once only
        monkeypatch.setattr(kernels, "_warned", set())
        assert kernels._use_triton("auto", torch.zeros(1)) is False          # CPU: no warning
