"""Live cross-lingual evaluation: the student's held-out retrieval while it trains.

A falling distillation loss is not evidence (a student can lose the teacher's cross-lingual
ability while its loss falls: lightmbert/benchmarks/README.md, Findings), so the real metric
is measured during the run — every `eval.interval` steps, at step 0 (the "before" point) and
at the end — with `lightmbert.evaluation.retrieval`'s own scoring, and logged as
`eval/retrieval/<lang>` / `eval/retrieval/mean`.

Sharded: every rank encodes an equal slice of the sentences (padded to the same length, so
ZeRO-3's gathered forward passes line up across ranks) and the vectors are all-gathered; every
rank then scores the same matrices. It never touches the training's random streams: the
student runs in eval mode (no dropout) under no_grad, the data iterator is not read, so a run
with evaluation on produces bit-identical losses to one with it off (tested).

DropGuard raises the alarm when the mean falls more than `max_drop` below the step-0 value
for `patience` evaluations in a row.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lightmbert.configs import EvalConfig
from lightmbert.evaluation.encoders import encode
from lightmbert.evaluation.retrieval import add_mean, load_pairs, scores


class DropGuard:
    """Step-0 baseline + consecutive evaluations below it by more than max_drop."""

    def __init__(self, max_drop: float, patience: int):
        self.max_drop, self.patience = max_drop, patience
        self.baseline: float | None = None
        self.below = 0

    def update(self, value: float) -> bool:
        """Record one evaluation; True while the alarm is raised."""
        if self.baseline is None:
            self.baseline = value
            return False
        self.below = self.below + 1 if value < self.baseline - self.max_drop else 0
        return self.below >= self.patience

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "below": self.below}

    def load_state_dict(self, state: dict) -> None:
        self.baseline, self.below = state.get("baseline"), state.get("below", 0)


def eval_tokenizer(name: str):
    """A batch tokenizer (padding, truncation) for the shards' tokenizer: the same one
    `evaluation` loads from the exported student directory."""
    p = Path(name).expanduser()
    if p.is_dir():
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(p)
    from lightmbert.data_prep.tokenizer import load_tokenizer  # a tokenizer.json file or a hub name
    return load_tokenizer(name)


class LiveEval:
    def __init__(self, cfg: EvalConfig, manifest: dict, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        try:
            self.pairs = load_pairs(cfg.pairs, cfg.languages or None, cfg.max_pairs)
        except (OSError, ValueError) as e:
            raise ValueError(f"eval.pairs: {e}") from None
        if not self.pairs:
            raise ValueError(f"eval.pairs: no pairs in {cfg.pairs}"
                             + (f" for eval.languages {cfg.languages}" if cfg.languages else ""))
        self.prefix = cfg.prefix if cfg.prefix is not None else manifest.get("packing", {}).get("prefix", "")
        self.max_length = manifest["seq_len"]
        self.tokenizer = eval_tokenizer(manifest["tokenizer"]["name"])
        # one flat list: for each language its English sides, then its translations
        self.texts = [t for items in self.pairs.values() for side in (0, 1) for t in (p[side] for p in items)]
        per = -(-len(self.texts) // world)
        self.slice = (rank * per, (rank + 1) * per)
        self.per_rank = per
        self.guard = DropGuard(cfg.max_drop, cfg.patience)

    def due(self, step: int, max_steps: int) -> bool:
        return step == 0 or step % self.cfg.interval == 0 or step == max_steps

    @torch.no_grad()
    def _local(self, student: nn.Module) -> torch.Tensor:
        """This rank's slice of the sentence vectors, padded to `per_rank` rows (with copies of a
        real text, dropped after the gather): equal numbers of forward passes on every rank,
        which ZeRO-3's parameter gathers need."""
        a, b = self.slice
        mine = self.texts[a:b] + [self.texts[0]] * (self.per_rank - len(self.texts[a:b]))
        return encode(student, self.tokenizer, mine, self.prefix, self.cfg.batch_size, self.max_length)

    def _vectors(self, student: nn.Module) -> torch.Tensor:
        """[N, d] L2-normalised sentence vectors of all texts, identical on every rank."""
        vecs = self._local(student)
        if self.world == 1:
            return vecs[:len(self.texts)]
        vecs = vecs.to(self.device)
        parts = [torch.empty_like(vecs) for _ in range(self.world)]
        dist.all_gather(parts, vecs)
        return torch.cat(parts).cpu()[:len(self.texts)]

    def run(self, student: nn.Module) -> tuple[dict, float]:
        """Called on every rank: (retrieval dict as lightmbert.evaluation.retrieval returns it, seconds)."""
        t0 = time.perf_counter()
        was_training = student.training
        student.eval()
        try:
            vecs = self._vectors(student)
        finally:
            student.train(was_training)
        res, i = {}, 0
        for lang, items in self.pairs.items():
            n = len(items)
            en, x = vecs[i:i + n], vecs[i + n:i + 2 * n]
            res[lang] = scores(en, x, n)
            i += 2 * n
        return add_mean(res), time.perf_counter() - t0

    def state_dict(self) -> dict:
        return self.guard.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.guard.load_state_dict(state)
