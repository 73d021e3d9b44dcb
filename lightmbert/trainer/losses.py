"""The distillation objective: a layer map and a weighted sum of `kernels` terms.

Layers are numbered as in `output_hidden_states`: 0 = embeddings, i = output of layer i.
Default map (`uniform`): student layer i ↔ teacher layer i·L_t/L_s (TinyBERT), so a 6-layer
student of a 12-layer teacher pairs 1↔2, 2↔4, …, 6↔12. The attention loss of a pair uses the
Q/K of those layers; the MiniLMv2 relations (`attention_relations`) have pairs of their own
(default: last ↔ last) and use Q, K and V and/or the output states (`hidden`). Padding never
contributes (every kernel takes the mask).
"""
from __future__ import annotations

import torch
from torch import nn

from lightmbert import kernels
from lightmbert.configs import LossConfig
from lightmbert.evaluation.pooling import mean_pool  # the pooling evaluation scores

from .capture import PROJECTIONS
from .models import ModelError, encoder_of

split_heads = kernels.reference.split_heads  # [B, L, H·D] → [B, H, L, D]


def layer_pairs(cfg: LossConfig, n_s: int, n_t: int) -> list[tuple[int, int]]:
    if cfg.layer_map == "uniform":
        return [(i, i * n_t // n_s) for i in range(1, n_s + 1)]
    if cfg.layer_map == "last":
        return [(n_s, n_t)]
    return explicit_pairs(cfg.layer_map, n_s, n_t, "loss.layer_map")


def explicit_pairs(given, n_s: int, n_t: int, key: str) -> list[tuple[int, int]]:
    pairs = []
    for p in given:
        if len(p) != 2 or not (1 <= p[0] <= n_s and 1 <= p[1] <= n_t):
            raise ModelError(f"{key}: pair {p} out of range (student layers 1..{n_s}, "
                             f"teacher 1..{n_t}; use embedding_weight for layer 0)")
        pairs.append((int(p[0]), int(p[1])))
    return pairs


def mlm_head(model: nn.Module):
    """(transform, decoder weight, decoder bias) of a BERT/XLM-R MLM head."""
    if hasattr(model, "cls"):        # BertForMaskedLM
        pred = model.cls.predictions
        return pred.transform, pred.decoder.weight, getattr(pred, "bias", pred.decoder.bias)
    if hasattr(model, "lm_head"):    # XLMRobertaForMaskedLM, RobertaForMaskedLM
        head = model.lm_head

        def transform(h):
            return head.layer_norm(nn.functional.gelu(head.dense(h)))
        return transform, head.decoder.weight, head.bias
    raise ModelError(f"{type(model).__name__} has no MLM head: loss.logit_weight needs "
                     f"*ForMaskedLM teacher and student")


def relation_loss(ps: torch.Tensor, pt: torch.Tensor, kind: str, temperature: float,
                  mem_s: torch.Tensor | None = None, mem_t: torch.Tensor | None = None) -> torch.Tensor:
    """Match the in-batch similarity structure of L2-normalised sentence vectors [B, d] — and,
    given a memory of earlier sentences ([M, d] each, no gradient), each sentence's
    similarities to those as well."""
    cols_s = ps if mem_s is None else torch.cat([ps, mem_s])
    cols_t = pt if mem_t is None else torch.cat([pt, mem_t])
    ss, st = ps @ cols_s.T, pt @ cols_t.T                  # [B, B + M]
    if kind == "mse":
        return (ss - st).pow(2).mean()
    # kl, pearson: each sentence's row over the *other* sentences (self-similarity is always 1)
    B = len(ps)
    off = torch.ones_like(ss, dtype=torch.bool)
    off[:, :B] &= ~torch.eye(B, dtype=torch.bool, device=ps.device)
    rs, rt = ss[off].view(B, -1), st[off].view(B, -1)
    if kind == "pearson":
        # per row: standardised similarities (= 2 − 2·Pearson r per row). Blind to each row's
        # shift and scale, as a query's ranking is: E5 puts every similarity in a narrow band,
        # whose offset and width the student need not copy
        if rs.shape[1] < 2:  # one sentence and no memory: no ranking to match
            return ss.sum() * 0.0

        def z(r):
            r = r - r.mean(-1, keepdim=True)
            return r / (r.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
        return (z(rs) - z(rt)).pow(2).mean()
    ls = torch.log_softmax(rs / temperature, dim=-1)
    lt = torch.log_softmax(rt / temperature, dim=-1)
    return (lt.exp() * (lt - ls)).sum(-1).mean()


class RelationMemory:
    """The last `size` sentence vectors of both models (a FIFO, per rank), for relation_loss."""

    def __init__(self, size: int):
        self.size = size
        self.s: torch.Tensor | None = None
        self.t: torch.Tensor | None = None

    def push(self, ps: torch.Tensor, pt: torch.Tensor) -> None:
        # a non-finite row (a bad batch the step will skip) must not poison the next N/B
        # steps: it enters as zeros on both sides (no relation to match), with no host sync
        ok = (torch.isfinite(ps).all(-1) & torch.isfinite(pt).all(-1))[:, None]
        ps, pt = torch.where(ok, ps.detach(), 0.0), torch.where(ok, pt.detach(), 0.0)
        self.s = ps[-self.size:] if self.s is None else torch.cat([ps, self.s])[:self.size]
        self.t = pt[-self.size:] if self.t is None else torch.cat([pt, self.t])[:self.size]


class DistillObjective(nn.Module):
    """Holds the trainable parts of the objective (a width projection when needed)."""

    def __init__(self, cfg: LossConfig, student: nn.Module, teacher: nn.Module):
        super().__init__()
        s, t = encoder_of(student).config, encoder_of(teacher).config
        self.cfg = cfg
        self.pairs = layer_pairs(cfg, s.num_hidden_layers, t.num_hidden_layers)
        if cfg.attention != "none" and s.num_attention_heads != t.num_attention_heads:
            raise ModelError(f"attention loss pairs heads one to one: student has "
                             f"{s.num_attention_heads} heads, teacher {t.num_attention_heads}")
        # TinyBERT's learned W_h when the widths differ (shared by all mapped layers)
        self.proj = nn.Linear(s.hidden_size, t.hidden_size) if s.hidden_size != t.hidden_size else None
        rel = cfg.attention_relations
        self.rel_pairs = explicit_pairs(rel.pairs, s.num_hidden_layers, t.num_hidden_layers,
                                        "loss.attention_relations.pairs") \
            if rel.pairs else [(s.num_hidden_layers, t.num_hidden_layers)]
        if rel.weight > 0:
            for who, c in (("student", s), ("teacher", t)):
                if c.hidden_size % rel.heads:
                    raise ModelError(f"loss.attention_relations.heads: {rel.heads} relation heads do not "
                                     f"divide the {who}'s width {c.hidden_size} (student {s.hidden_size}, "
                                     f"teacher {t.hidden_size})")
        self.heads = (s.num_attention_heads, t.num_attention_heads)
        self.memory = RelationMemory(cfg.relation_memory) if cfg.relation_memory > 0 else None
        if cfg.logit_weight > 0 or cfg.mlm_weight > 0:
            mlm_head(student), mlm_head(teacher)

    @property
    def captures(self) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
        """What the forward passes must capture, per model: 0-based layer → projections."""
        wants: tuple[dict, dict] = ({}, {})
        if self.cfg.attention != "none" and self.cfg.attention_weight > 0:
            for pair in self.pairs:
                for side, layer in zip(wants, pair):
                    side.setdefault(layer - 1, set()).update(("query", "key"))
        # `hidden` (the output states) comes from output_hidden_states: nothing to capture
        projections = set(self.cfg.attention_relations.relations) & set(PROJECTIONS)
        if self.cfg.attention_relations.weight > 0 and projections:
            for pair in self.rel_pairs:
                for side, layer in zip(wants, pair):
                    side.setdefault(layer - 1, set()).update(projections)
        return wants

    def _h(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h) if self.proj is not None else h

    def forward(self, s_hidden, t_hidden, s_proj, t_proj, mask, student=None, teacher=None, labels=None):
        """Returns (total loss, {term: value}). s_proj/t_proj: what `captures` asked for,
        0-based layer → {projection: [B, L, H·D]}."""
        c, impl = self.cfg, self.cfg.impl
        terms: dict[str, torch.Tensor] = {}
        if c.hidden_weight > 0:
            terms["hidden"] = sum(kernels.hidden_mse(self._h(s_hidden[s]), t_hidden[t], mask, impl=impl)
                                  for s, t in self.pairs) / len(self.pairs)
        if c.embedding_weight > 0:
            terms["embedding"] = kernels.hidden_mse(self._h(s_hidden[0]), t_hidden[0], mask, impl=impl)
        if c.attention != "none" and c.attention_weight > 0:
            fn = kernels.attention_score_mse if c.attention == "score_mse" else kernels.attention_prob_kl
            extra = {} if c.attention == "score_mse" else {"temperature": c.attention_temperature}
            (hs, ht), qk = self.heads, ("query", "key")
            terms["attention"] = sum(fn(*(split_heads(s_proj[s - 1][n], hs) for n in qk),
                                        *(split_heads(t_proj[t - 1][n], ht) for n in qk), mask, impl=impl, **extra)
                                     for s, t in self.pairs) / len(self.pairs)
        rel = c.attention_relations
        if rel.weight > 0:  # MiniLMv2: Σ over Q–Q, K–K, V–V (and/or output states), mean over the pairs
            def x(side_hidden, side_proj, layer, name):
                return side_hidden[layer] if name == "hidden" else side_proj[layer - 1][name]
            terms["attn_relation"] = sum(
                kernels.attention_relation_kl(x(s_hidden, s_proj, s, n), x(t_hidden, t_proj, t, n), mask,
                                              rel.heads, impl=impl)
                for s, t in self.rel_pairs for n in rel.relations) / len(self.rel_pairs)
        if c.pooled_weight > 0 or c.relation_weight > 0:
            # sentence level: always the last layers, whatever the layer map
            ps = nn.functional.normalize(mean_pool(self._h(s_hidden[-1]), mask), dim=-1)
            pt = nn.functional.normalize(mean_pool(t_hidden[-1], mask), dim=-1)
            if c.pooled_weight > 0:
                terms["pooled"] = (1.0 - (ps * pt).sum(-1)).mean()
            if c.relation_weight > 0:
                mem = self.memory
                terms["relation"] = relation_loss(ps, pt, c.relation, c.relation_temperature,
                                                  *((mem.s, mem.t) if mem is not None else ()))
                if mem is not None and torch.is_grad_enabled():  # training steps only
                    mem.push(ps, pt)
        if c.logit_weight > 0:
            s_tr, s_w, s_b = mlm_head(student)
            t_tr, t_w, t_b = mlm_head(teacher)
            rows = mask.reshape(-1).bool()
            s_rows = s_tr(s_hidden[-1]).reshape(-1, s_w.shape[1])[rows]
            with torch.no_grad():
                t_rows = t_tr(t_hidden[-1]).reshape(-1, t_w.shape[1])[rows]
            terms["logit"] = kernels.fused_linear_kl(s_rows, s_w, t_rows, t_w, s_b, t_b,
                                                     temperature=c.temperature, impl=impl)
        if c.mlm_weight > 0:
            s_tr, s_w, s_b = mlm_head(student)
            picked = labels.reshape(-1) != -100
            rows = s_tr(s_hidden[-1]).reshape(-1, s_w.shape[1])[picked]
            logits = nn.functional.linear(rows.float(), s_w.float(), s_b.float())  # masked rows only
            terms["mlm"] = nn.functional.cross_entropy(logits, labels.reshape(-1)[picked]) \
                if rows.shape[0] else s_hidden[-1].sum() * 0.0
        weights = {"hidden": c.hidden_weight, "embedding": c.embedding_weight,
                   "attention": c.attention_weight, "logit": c.logit_weight, "mlm": c.mlm_weight,
                   "pooled": c.pooled_weight, "relation": c.relation_weight, "attn_relation": rel.weight}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms
