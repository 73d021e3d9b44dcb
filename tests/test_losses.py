"""The sentence-level terms of lightmbert.trainer.losses (pooled cosine, in-batch relation) against
explicit float64 computations; padding never counts."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from lightmbert.configs import LossConfig
from lightmbert.evaluation.pooling import mean_pool
from lightmbert.trainer.losses import DistillObjective


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


# ---------------------------------------------------------------- MiniLMv2 attention relations
def _bert(layers: int, width: int, heads: int, seed: int) -> BertModel:
    torch.manual_seed(seed)
    # eval: no dropout; a wide init: peaked relations, so the KL is far from fp32 cancellation
    return BertModel(BertConfig(vocab_size=50, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=32, max_position_embeddings=32, initializer_range=0.3)).eval()


@pytest.mark.parametrize("s_width,s_heads,R,pairs", [(16, 2, 4, [[2, 3]]), (8, 2, 4, []), (16, 4, 8, [[1, 2], [2, 4]])],
                         ids=["R4-pair2-3", "narrow-student-last", "R8-two-pairs"])
def test_attention_relations_match_the_definition_on_the_layers_named(s_width, s_heads, R, pairs):
    from lightmbert.configs import AttentionRelationsConfig
    from tests.test_kernels_relations import loop_relation_kl
    from lightmbert.trainer.capture import ProjectionCapture
    teacher, student = _bert(4, 16, 2, 0), _bert(2, s_width, s_heads, 1)
    rel = AttentionRelationsConfig(weight=0.5, heads=R, pairs=pairs)
    obj = DistillObjective(LossConfig(hidden_weight=0.0, attention="none", attention_relations=rel), student, teacher)
    used = [tuple(p) for p in pairs] or [(2, 4)]
    qkv = {"query", "key", "value"}
    assert obj.captures == ({s - 1: qkv for s, _ in used}, {t - 1: qkv for _, t in used})
    sc, tc = ProjectionCapture(student, obj.captures[0]), ProjectionCapture(teacher, obj.captures[1])
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 9:] = 0
    with torch.no_grad():
        t = teacher(ids, attention_mask=mask, output_hidden_states=True)
    s = student(ids, attention_mask=mask, output_hidden_states=True)
    total, terms = obj(s.hidden_states, t.hidden_states, sc.pop_all(), tc.pop_all(), mask)
    assert set(terms) == {"attn_relation"}
    # independent: each projection recomputed from its layer's input (hidden state of the layer below)
    want = 0.0
    for ls, lt in used:
        s_att, t_att = student.encoder.layer[ls - 1].attention.self, teacher.encoder.layer[lt - 1].attention.self
        for n in sorted(qkv):
            with torch.no_grad():
                xs = getattr(s_att, n)(s.hidden_states[ls - 1]).double()
                xt = getattr(t_att, n)(t.hidden_states[lt - 1]).double()
            want += loop_relation_kl(xs, xt, mask, R).item()
    want /= len(used)
    assert terms["attn_relation"].item() == pytest.approx(want, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * want, rel=1e-5)
    total.backward()
    top = student.encoder.layer[max(s for s, _ in used) - 1].attention.self
    assert all(getattr(top, n).weight.grad.abs().sum() > 0 for n in qkv)
    assert all(p.grad is None for p in teacher.parameters())


def test_hidden_relations_use_the_output_states_and_train_the_whole_layer():
    """`hidden`: the self-relations of the paired layers' output states (no projection captured);
    unlike Q/K/V they reach the paired layer's attention output and feed-forward."""
    from lightmbert.configs import AttentionRelationsConfig
    from tests.test_kernels_relations import loop_relation_kl
    from lightmbert.trainer.capture import ProjectionCapture
    teacher, student = _bert(4, 16, 2, 0), _bert(2, 8, 2, 1)
    rel = AttentionRelationsConfig(weight=2.0, heads=4, pairs=[[2, 3]], relations=["hidden", "value"])
    obj = DistillObjective(LossConfig(hidden_weight=0.0, attention="none", attention_relations=rel), student, teacher)
    assert obj.captures == ({1: {"value"}}, {2: {"value"}})
    sc, tc = ProjectionCapture(student, obj.captures[0]), ProjectionCapture(teacher, obj.captures[1])
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        t = teacher(ids, attention_mask=mask, output_hidden_states=True)
    s = student(ids, attention_mask=mask, output_hidden_states=True)
    total, terms = obj(s.hidden_states, t.hidden_states, sc.pop_all(), tc.pop_all(), mask)
    with torch.no_grad():
        vs = student.encoder.layer[1].attention.self.value(s.hidden_states[1]).double()
        vt = teacher.encoder.layer[2].attention.self.value(t.hidden_states[2]).double()
    want = (loop_relation_kl(s.hidden_states[2].detach().double(), t.hidden_states[3].double(), mask, 4)
            + loop_relation_kl(vs, vt, mask, 4)).item()
    assert terms["attn_relation"].item() == pytest.approx(want, rel=1e-5)
    total.backward()
    top = student.encoder.layer[1]
    assert top.output.dense.weight.grad.abs().sum() > 0          # the feed-forward of the paired layer
    assert top.attention.output.dense.weight.grad.abs().sum() > 0


def test_attention_relations_bad_settings_name_the_key():
    from lightmbert.configs import AttentionRelationsConfig
    from lightmbert.trainer.models import ModelError
    teacher, student = _bert(4, 16, 2, 0), _bert(2, 12, 2, 1)

    def build(**kw):
        cfg = LossConfig(hidden_weight=0.0, attention="none", attention_relations=AttentionRelationsConfig(**kw))
        return DistillObjective(cfg, student, teacher)
    with pytest.raises(ModelError, match="heads: 8 relation heads do not divide the student's width 12"):
        build(weight=1.0, heads=8)
    with pytest.raises(ModelError, match=r"attention_relations.pairs: pair \[3, 4\] out of range"):
        build(weight=1.0, heads=4, pairs=[[3, 4]])
    assert build(weight=0.0, heads=8).captures == ({}, {})  # off: nothing captured, nothing checked


# ---------------------------------------------------------------- cross-batch relation memory
@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_relation_with_a_memory_matches_explicit_loops(kind):
    from lightmbert.trainer.losses import relation_loss
    g = torch.Generator().manual_seed(11)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    ps, pt, ms, mt = (unit(torch.randn(n, 8, generator=g, dtype=torch.float64)) for n in (4, 4, 3, 3))
    got = relation_loss(ps, pt, kind, 0.1, ms, mt).item()
    cs, ct = torch.cat([ps, ms]), torch.cat([pt, mt])
    rows = []
    for i in range(4):
        cols = [j for j in range(7) if kind == "mse" or j != i]   # kl: never a sentence with itself
        s = torch.stack([ps[i] @ cs[j] for j in cols])
        t = torch.stack([pt[i] @ ct[j] for j in cols])
        if kind == "mse":
            rows.append(((s - t) ** 2).mean().item())
        else:
            p_t, p_s = torch.softmax(t / 0.1, 0), torch.softmax(s / 0.1, 0)
            rows.append((p_t * (p_t.log() - p_s.log())).sum().item())
    assert got == pytest.approx(sum(rows) / 4, rel=1e-10)


def test_relation_memory_is_a_fifo_of_training_steps_only():
    s, t, mask = batch(3, B=5)
    obj = objective(relation_weight=1.0, relation_memory=7)
    obj([x.requires_grad_() for x in s], t, {}, {}, mask)
    first_s = obj.memory.s.clone()
    assert first_s.shape == (5, 16) and not obj.memory.s.requires_grad
    s2, t2, _ = batch(4, B=5)
    _, terms = obj(s2, t2, {}, {}, mask)
    # the second step's relations reach the first step's sentences
    from lightmbert.trainer.losses import relation_loss
    pool = lambda h: nn.functional.normalize(mean_pool(h, mask), dim=-1)  # noqa: E731
    want = relation_loss(pool(s2[-1]), pool(t2[-1]), "mse", 0.05, first_s, pool(t[-1]))
    assert terms["relation"].item() == pytest.approx(want.item(), rel=1e-6)
    assert obj.memory.s.shape == (7, 16)                            # capped, newest first
    assert torch.allclose(obj.memory.s[:5], pool(s2[-1])) and torch.allclose(obj.memory.s[5:], first_s[:2])
    with torch.no_grad():                                            # evaluation passes never enter it
        obj(s, t, {}, {}, mask)
    assert torch.allclose(obj.memory.s[:5], pool(s2[-1]))
    with pytest.raises(ValueError, match="relation_memory: must be >= 0"):
        LossConfig(relation_memory=-1)


def test_a_non_finite_batch_does_not_poison_the_memory():
    from lightmbert.trainer.losses import RelationMemory, relation_loss
    mem = RelationMemory(6)
    good = nn.functional.normalize(torch.randn(3, 4), dim=-1)
    bad = good.clone()
    bad[1, 2] = float("nan")
    mem.push(bad, good)
    assert torch.isfinite(mem.s).all() and mem.s[1].abs().sum() == 0 and mem.t[1].abs().sum() == 0
    assert torch.equal(mem.s[0], good[0]) and torch.equal(mem.t[2], good[2])
    for kind in ("mse", "kl"):
        assert torch.isfinite(relation_loss(good, good, kind, 0.05, mem.s, mem.t))


# the random seed is printed on failure; LIGHTMBERT_TEST_SEED=<seed> reproduces it (as in the kernel tests)
_PEARSON_SEEDS = [0, 3, int(os.environ.get("LIGHTMBERT_TEST_SEED") or int.from_bytes(os.urandom(2), "little"))]


@pytest.mark.parametrize("seed", _PEARSON_SEEDS)
@pytest.mark.parametrize("memory", [0, 3])
def test_pearson_relation_is_two_minus_two_r_per_row(seed, memory):
    """Against numpy's corrcoef, row by row over the other sentences (and the memory)."""
    import numpy as np

    from lightmbert.trainer.losses import relation_loss
    g = torch.Generator().manual_seed(seed)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    B, d = 5, 7
    ps, pt = (unit(torch.randn(B, d, generator=g, dtype=torch.float64)) for _ in range(2))
    ms, mt = ((unit(torch.randn(memory, d, generator=g, dtype=torch.float64)) for _ in range(2))
              if memory else (None, None))
    got = relation_loss(ps, pt, "pearson", 0.05, ms, mt).item()
    cs = ps.numpy() if ms is None else np.concatenate([ps.numpy(), ms.numpy()])
    ct = pt.numpy() if mt is None else np.concatenate([pt.numpy(), mt.numpy()])
    rows = []
    for i in range(B):
        cols = [j for j in range(len(cs)) if j != i]
        s = np.array([ps[i].numpy() @ cs[j] for j in cols])
        t = np.array([pt[i].numpy() @ ct[j] for j in cols])
        rows.append(2 - 2 * np.corrcoef(s, t)[0, 1])
    assert got == pytest.approx(float(np.mean(rows)), rel=1e-4, abs=1e-8), f"seed {seed}"
    # blind to a rotation of the student's space, and zero for identical geometry
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    assert relation_loss(ps @ q, pt, "pearson", 0.05, None if ms is None else ms @ q, mt).item() == \
        pytest.approx(got, rel=1e-9), f"seed {seed}"
    assert relation_loss(pt, pt, "pearson", 0.05, mt, mt).item() < 1e-9


def test_pearson_relation_of_one_sentence_is_zero_not_nan():
    from lightmbert.trainer.losses import relation_loss
    v = nn.functional.normalize(torch.randn(1, 4), dim=-1).requires_grad_()
    loss = relation_loss(v, v.detach() + 0.1, "pearson", 0.05)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(v.grad).all()
