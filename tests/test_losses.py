"""The sentence-level terms of trainer.losses (pooled cosine, in-batch relation) against
explicit float64 computations; padding never counts."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from configs import LossConfig
from evaluation.pooling import mean_pool
from trainer.losses import DistillObjective


def tiny(layers: int) -> BertModel:
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))


def objective(**loss) -> DistillObjective:
    cfg = LossConfig(hidden_weight=0.0, attention="none", **loss)
    return DistillObjective(cfg, tiny(2), tiny(4))


def batch(seed: int, B: int = 5, L: int = 9, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.long)
    for b in range(B):
        mask[b, int(torch.randint(1, L + 1, (1,), generator=g)):] = 0
    s = [torch.randn(B, L, d, generator=g) for _ in range(3)]
    t = [torch.randn(B, L, d, generator=g) * 3 + 1 for _ in range(5)]
    return s, t, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_and_relation_match_float64_reference(seed):
    s, t, mask = batch(seed)
    total, terms = objective(pooled_weight=0.7, relation_weight=2.0)(s, t, {}, {}, mask)

    def pool(h):
        m = mask.double().unsqueeze(-1)
        return (h.double() * m).sum(1) / m.sum(1)
    ps, pt = pool(s[-1]), pool(t[-1])
    cos = (ps * pt).sum(-1) / (ps.norm(dim=-1) * pt.norm(dim=-1))
    ns, nt = ps / ps.norm(dim=-1, keepdim=True), pt / pt.norm(dim=-1, keepdim=True)
    rel = ((ns @ ns.T - nt @ nt.T) ** 2).mean()
    assert terms["pooled"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    assert terms["relation"].item() == pytest.approx(rel.item(), rel=1e-5)
    assert total.item() == pytest.approx(0.7 * (1 - cos).mean().item() + 2.0 * rel.item(), rel=1e-5)


def test_padding_never_counts_and_identity_scores_zero():
    s, t, mask = batch(5)
    h = t[-1].clone()
    noisy = h.clone()
    noisy[mask == 0] = 1e4  # garbage in padded positions
    assert torch.allclose(mean_pool(noisy, mask), mean_pool(h, mask))
    _, terms = objective(pooled_weight=1.0, relation_weight=1.0)([s[0], noisy], t, {}, {}, mask)
    assert terms["pooled"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["relation"].item() == pytest.approx(0.0, abs=1e-6)


def test_relation_ignores_a_rotation_that_the_pooled_term_sees():
    s, t, mask = batch(7)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))
    rotated = t[-1] @ q  # same geometry, other coordinates
    _, terms = objective(pooled_weight=1.0, relation_weight=1.0)([s[0], rotated], t, {}, {}, mask)
    assert terms["relation"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["pooled"].item() > 0.1


def test_gradients_reach_the_student_only():
    s, t, mask = batch(9)
    s = [x.requires_grad_() for x in s]
    total, _ = objective(pooled_weight=1.0, relation_weight=1.0)(s, t, {}, {}, mask)
    total.backward()
    assert s[-1].grad is not None and s[-1].grad.abs().sum() > 0
    assert s[-1].grad[mask == 0].abs().max() == 0  # padded positions get no gradient
    assert not t[-1].requires_grad


@pytest.mark.parametrize("seed", [0, 4])
def test_relation_kl_matches_float64_reference(seed):
    s, t, mask = batch(seed, B=6)
    _, terms = objective(relation_weight=1.0, relation="kl", relation_temperature=0.1)(s, t, {}, {}, mask)

    def sims(h):
        m = mask.double().unsqueeze(-1)
        p = (h.double() * m).sum(1) / m.sum(1)
        p = p / p.norm(dim=-1, keepdim=True)
        return p @ p.T
    ss, st = sims(s[-1]), sims(t[-1])
    kl = 0.0
    for i in range(6):  # explicit loop over rows, the diagonal left out
        j = [k for k in range(6) if k != i]
        p_t = torch.softmax(st[i, j] / 0.1, 0)
        p_s = torch.softmax(ss[i, j] / 0.1, 0)
        kl += (p_t * (p_t.log() - p_s.log())).sum().item()
    assert terms["relation"].item() == pytest.approx(kl / 6, rel=1e-4)
    rotated = t[-1] @ torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(seed)))[0]
    _, same = objective(relation_weight=1.0, relation="kl")([s[0], rotated], t, {}, {}, mask)
    assert same["relation"].item() == pytest.approx(0.0, abs=1e-5)
