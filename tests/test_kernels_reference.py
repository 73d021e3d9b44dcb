"""The torch references against independent formulations (they are the test oracle)."""
import math

import pytest
import torch
import torch.nn.functional as F

from kernels import reference as R


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
    assert R.attention_score_mse(sq, sk, tq, tk, m).item() == pytest.approx(num / (H * n2), rel=1e-6)
    sh, th = torch.randn(B, L, d, generator=g), torch.randn(B, L, d, generator=g)
    want = sum(((sh[b, i] - th[b, i]) ** 2).sum().item() for b in range(B) for i in range(L) if m[b, i])
    assert R.hidden_mse(sh, th, m).item() == pytest.approx(want / (m.sum().item() * d), rel=1e-5)


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
