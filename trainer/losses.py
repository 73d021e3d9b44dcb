"""The distillation objective: a layer map and a weighted sum of `kernels` terms.

Layers are numbered as in `output_hidden_states`: 0 = embeddings, i = output of layer i.
Default map (`uniform`): student layer i ↔ teacher layer i·L_t/L_s (TinyBERT), so a 6-layer
student of a 12-layer teacher pairs 1↔2, 2↔4, …, 6↔12. The attention loss of a pair uses the
Q/K of those layers; padding never contributes (every kernel takes the mask).
"""
from __future__ import annotations

import torch
from torch import nn

import kernels
from configs import LossConfig
from evaluation.pooling import mean_pool  # the pooling evaluation scores

from .models import ModelError, encoder_of


def layer_pairs(cfg: LossConfig, n_s: int, n_t: int) -> list[tuple[int, int]]:
    if cfg.layer_map == "uniform":
        return [(i, i * n_t // n_s) for i in range(1, n_s + 1)]
    if cfg.layer_map == "last":
        return [(n_s, n_t)]
    pairs = []
    for p in cfg.layer_map:
        if len(p) != 2 or not (1 <= p[0] <= n_s and 1 <= p[1] <= n_t):
            raise ModelError(f"loss.layer_map: pair {p} out of range (student layers 1..{n_s}, "
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


def relation_loss(ps: torch.Tensor, pt: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Match the in-batch similarity structure of L2-normalised sentence vectors [B, d]."""
    ss, st = ps @ ps.T, pt @ pt.T
    if kind == "mse":
        return (ss - st).pow(2).mean()
    # kl: each sentence's distribution over the *other* sentences (self-similarity is always 1)
    off = ~torch.eye(len(ps), dtype=torch.bool, device=ps.device)
    ls = torch.log_softmax(ss[off].view(len(ps), -1) / temperature, dim=-1)
    lt = torch.log_softmax(st[off].view(len(ps), -1) / temperature, dim=-1)
    return (lt.exp() * (lt - ls)).sum(-1).mean()


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
        if cfg.logit_weight > 0 or cfg.mlm_weight > 0:
            mlm_head(student), mlm_head(teacher)

    @property
    def attention_layers(self) -> tuple[list[int], list[int]]:
        """0-based (student, teacher) layers whose Q/K must be captured."""
        if self.cfg.attention == "none" or self.cfg.attention_weight == 0:
            return [], []
        return [s - 1 for s, _ in self.pairs], [t - 1 for _, t in self.pairs]

    def _h(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h) if self.proj is not None else h

    def forward(self, s_hidden, t_hidden, s_qk, t_qk, mask, student=None, teacher=None, labels=None):
        """Returns (total loss, {term: value}). s_qk/t_qk map 0-based layer → (q, k)."""
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
            terms["attention"] = sum(fn(*s_qk[s - 1], *t_qk[t - 1], mask, impl=impl, **extra)
                                     for s, t in self.pairs) / len(self.pairs)
        if c.pooled_weight > 0 or c.relation_weight > 0:
            # sentence level: always the last layers, whatever the layer map
            ps = nn.functional.normalize(mean_pool(self._h(s_hidden[-1]), mask), dim=-1)
            pt = nn.functional.normalize(mean_pool(t_hidden[-1], mask), dim=-1)
            if c.pooled_weight > 0:
                terms["pooled"] = (1.0 - (ps * pt).sum(-1)).mean()
            if c.relation_weight > 0:
                terms["relation"] = relation_loss(ps, pt, c.relation, c.relation_temperature)
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
                   "pooled": c.pooled_weight, "relation": c.relation_weight}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms
