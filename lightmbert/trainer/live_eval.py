"""Live cross-lingual evaluation: the student's held-out retrieval while it trains.

A falling distillation loss is not evidence (a student can lose the teacher's cross-lingual
ability while its loss falls: lightmbert/benchmarks/README.md, Findings), so the real metric
is measured during the run — every `eval.interval` steps, at step 0 (the "before" point) and
at the end — with `lightmbert.evaluation.retrieval`'s own scoring, on one or more held-out
sets: `eval.pairs` (the set "heldout", logged as `eval/retrieval/<lang>` / `eval/retrieval/mean`
as before there were several) and every `eval.sets.<name>` (`eval/<name>/retrieval/...`), e.g.
an out-of-domain set next to the in-domain one: a recipe can keep one and lose the other.

Sharded: every rank encodes an equal slice of all sets' sentences together (one pass however
many sets, padded to the same length, so ZeRO-3's gathered forward passes line up across ranks)
and the vectors are all-gathered; every rank then scores the same matrices. It never touches
the training's random streams: the student runs in eval mode (no dropout) under no_grad, the data
iterator is not read, so a run with evaluation on produces bit-identical losses to one with it
off (tested).

One DropGuard per set, each with its own step-0 baseline: the alarm is up when any set's mean
falls more than `max_drop` below that set's step-0 value for `patience` evaluations in a row.
The guards are checkpointed; a set added on a resume has no step-0 value, so its baseline is
its first evaluation after the resume (logged).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lightmbert.configs import EvalConfig
from lightmbert.evaluation.encoders import encode
from lightmbert.evaluation.retrieval import distinct_texts, load_pairs, retrieval_of


class DropGuard:
    """A baseline (the first evaluation: step 0, or the first after a resume for a set added
    then) + consecutive evaluations below it by more than max_drop."""

    def __init__(self, max_drop: float, patience: int):
        self.max_drop, self.patience = max_drop, patience
        self.baseline: float | None = None
        self.baseline_step = 0
        self.below = 0

    def update(self, value: float, step: int = 0) -> bool:
        """Record one evaluation (at `step`); True while the alarm is raised."""
        if self.baseline is None:
            self.baseline, self.baseline_step = value, step
            return False
        self.below = self.below + 1 if value < self.baseline - self.max_drop else 0
        return self.below >= self.patience

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "below": self.below, "baseline_step": self.baseline_step}

    def load_state_dict(self, state: dict) -> None:
        self.baseline, self.below = state.get("baseline"), state.get("below", 0)
        self.baseline_step = state.get("baseline_step", 0)  # written before it was kept: step 0


def eval_tokenizer(name: str):
    """A batch tokenizer (padding, truncation) for the shards' tokenizer: the same one
    `evaluation` loads from the exported student directory."""
    p = Path(name).expanduser()
    if p.is_dir():
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(p)
    from lightmbert.data_prep.tokenizer import load_tokenizer  # a tokenizer.json file or a hub name
    return load_tokenizer(name)


HELDOUT = "heldout"  # eval.pairs' set: its tags and its checkpoint state predate eval.sets


def set_specs(cfg: EvalConfig) -> list[tuple[str, str, list[str], int, str]]:
    """(name, pairs file, languages, max pairs, config key) of every set to evaluate."""
    specs = [(HELDOUT, cfg.pairs, cfg.languages, cfg.max_pairs, "eval")] if cfg.pairs else []
    for name, s in cfg.sets.items():
        specs.append((name, s.pairs, s.languages, s.max_pairs if s.max_pairs is not None else cfg.max_pairs,
                      f"eval.sets.{name}"))
    return specs


class LiveEval:
    def __init__(self, cfg: EvalConfig, manifest: dict, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        # name → language → [(English, translation)]; errors name the set's own config keys
        self.pairs: dict[str, dict[str, list[tuple[str, str]]]] = {}
        for name, path, languages, max_pairs, key in set_specs(cfg):
            try:
                pairs = load_pairs(path, languages or None, max_pairs)
            except (OSError, ValueError) as e:
                raise ValueError(f"{key}.pairs: {e}") from None
            if not pairs:
                raise ValueError(f"{key}.pairs: no pairs in {path}"
                                 + (f" for {key}.languages {languages}" if languages else ""))
            self.pairs[name] = pairs
        if not self.pairs:
            raise ValueError("live evaluation needs eval.pairs or eval.sets")
        self.prefix = cfg.prefix if cfg.prefix is not None else manifest.get("packing", {}).get("prefix", "")
        self.max_length = manifest["seq_len"]
        self.tokenizer = eval_tokenizer(manifest["tokenizer"]["name"])
        # every set's distinct texts → their row, so that all sets go through the student in one
        # sharded pass, each text once (an English side recurs in each of its languages)
        self.row = {t: i for i, t in enumerate(dict.fromkeys(
            t for sets in self.pairs.values() for t in distinct_texts(sets)))}
        self.texts = list(self.row)
        per = -(-len(self.texts) // world)
        self.slice = (rank * per, (rank + 1) * per)
        self.per_rank = per
        self.guards = {name: DropGuard(cfg.max_drop, cfg.patience) for name in self.pairs}

    def due(self, step: int, max_steps: int) -> bool:
        return step == 0 or step % self.cfg.interval == 0 or step == max_steps

    def needs_baseline(self) -> bool:
        """Whether some set has no step-0 value yet (a fresh run, not a resume)."""
        return any(g.baseline is None for g in self.guards.values())

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

    def run(self, student: nn.Module) -> tuple[dict[str, dict], float]:
        """Called on every rank: ({set name: retrieval dict as lightmbert.evaluation.retrieval
        returns it}, seconds)."""
        t0 = time.perf_counter()
        was_training = student.training
        student.eval()
        try:
            vecs = self._vectors(student)
        finally:
            student.train(was_training)
        # each set scored as lightmbert.evaluation scores it, its texts looked up in the pass
        out = {name: retrieval_of(lambda texts: vecs[[self.row[t] for t in texts]], sets)
               for name, sets in self.pairs.items()}
        return out, time.perf_counter() - t0

    def update(self, results: dict[str, dict], step: int) -> list[str]:
        """Feed every set's mean to its guard; the names of the sets whose alarm is up."""
        alarmed = []
        for name, res in results.items():  # every guard is updated, alarmed or not
            if self.guards[name].update(res["mean"]["mean"], step):
                alarmed.append(name)
        return alarmed

    def state_dict(self) -> dict:
        return {"sets": {name: g.state_dict() for name, g in self.guards.items()}}

    def load_state_dict(self, state: dict) -> list[str]:
        """Restore the guards; returns the sets the state has nothing for (they take their
        baseline at their next evaluation). A state written before eval.sets —
        {"baseline", "below"} — is the held-out set's; the state of a set no longer configured
        is dropped."""
        saved = state.get("sets", {HELDOUT: state} if "baseline" in state else {})
        for name, g in self.guards.items():
            if name in saved:
                g.load_state_dict(saved[name])
        return [name for name in self.guards if name not in saved]
