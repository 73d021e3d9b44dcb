"""Collect what the losses need from a forward pass, without eager attention.

Forward hooks on each mapped layer's query/key projections capture Q and K ([B, L, H·D] →
[B, H, L, D]), so both models keep fused SDPA attention and never build an L×L map; the
hidden states come from `output_hidden_states`.
"""
from __future__ import annotations

from torch import nn

from .models import encoder_of


class QKCapture:
    def __init__(self, model: nn.Module, layers: list[int]):
        enc = encoder_of(model)
        self.heads = enc.config.num_attention_heads
        self.q: dict[int, object] = {}
        self.k: dict[int, object] = {}
        self._hooks = []
        for i in layers:
            att = enc.encoder.layer[i].attention.self
            self._hooks.append(att.query.register_forward_hook(self._save(self.q, i)))
            self._hooks.append(att.key.register_forward_hook(self._save(self.k, i)))

    def _save(self, store: dict, i: int):
        def hook(_module, _inputs, out):
            B, L, HD = out.shape
            store[i] = out.view(B, L, self.heads, HD // self.heads).transpose(1, 2)
        return hook

    def pop(self, i: int):
        return self.q.pop(i), self.k.pop(i)

    def clear(self) -> None:
        self.q.clear()
        self.k.clear()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
