"""Collect what the losses need from a forward pass, without eager attention.

Forward hooks on the query/key/value projections of the layers the objective names capture
their outputs ([B, L, H·D], all heads side by side; the objective splits them into attention
heads or relation heads), so both models keep fused SDPA attention and never build an L×L map;
the hidden states come from `output_hidden_states`.
"""
from __future__ import annotations

from torch import nn

from .models import encoder_of

PROJECTIONS = ("query", "key", "value")


class ProjectionCapture:
    def __init__(self, model: nn.Module, wants: dict[int, set[str]]):
        """`wants`: 0-based layer → the projections ("query", "key", "value") to keep."""
        enc = encoder_of(model)
        self.wants = {i: sorted(names) for i, names in wants.items() if names}
        self.store: dict[int, dict[str, object]] = {}
        self._hooks = []
        for i, names in self.wants.items():
            att = enc.encoder.layer[i].attention.self
            for name in names:
                if name not in PROJECTIONS:
                    raise ValueError(f"unknown projection {name!r} (one of {PROJECTIONS})")
                self._hooks.append(getattr(att, name).register_forward_hook(self._save(i, name)))

    def _save(self, i: int, name: str):
        def hook(_module, _inputs, out):
            self.store.setdefault(i, {})[name] = out
        return hook

    def pop_all(self) -> dict[int, dict[str, object]]:
        """Every captured output of the last forward pass, {layer: {projection: [B, L, H·D]}};
        forgets them (nothing stays alive into the next step)."""
        missing = [(i, n) for i, names in self.wants.items() for n in names if n not in self.store.get(i, {})]
        if missing:
            raise RuntimeError(f"no output captured for (layer, projection) {missing}: did the forward run?")
        out, self.store = self.store, {}
        return out

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
