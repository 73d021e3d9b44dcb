"""Metrics on rank 0: TensorBoard scalars, a console line every log_interval, a progress bar,
and the live evaluation's scalars and alarm."""
from __future__ import annotations

import resource
import sys
from collections import Counter
from pathlib import Path

import torch


class Metrics:
    def __init__(self, run_dir: Path, rank: int, max_steps: int, start_step: int, log_interval: int,
                 progress_bar: bool, world: int, flops_per_token: float = 0.0, peak_flops: float = 0.0):
        self.rank, self.log_interval, self.world = rank, log_interval, world
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.writer = self.bar = None
        self.tokens_by_lang: Counter = Counter()
        self._window = {"tokens": 0, "samples": 0, "time": 0.0, "steps": 0}
        if rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def due(self, step: int) -> bool:
        """Whether `step` is logged (every log_interval steps, and the first)."""
        return step % self.log_interval == 0 or step == 1

    def step(self, step: int, scalars: dict, tokens: int, samples: int, seconds: float,
             lang_tokens: Counter) -> None:
        """Called on every rank with this rank's counts (rank 0 scales by the world size)."""
        w = self._window
        w["tokens"] += tokens * self.world
        w["samples"] += samples * self.world
        w["time"] += seconds
        w["steps"] += 1
        self.tokens_by_lang.update({k: v * self.world for k, v in lang_tokens.items()})
        if self.rank != 0:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{scalars['loss/total']:.4f}")
        if not self.due(step):
            return
        tps = w["tokens"] / max(w["time"], 1e-9)
        out = dict(scalars)
        out["throughput/tokens_per_s"] = tps
        out["throughput/samples_per_s"] = w["samples"] / max(w["time"], 1e-9)
        out["time/step_s"] = w["time"] / max(w["steps"], 1)
        out["memory/host_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if torch.cuda.is_available():
            out["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if self.peak_flops:
                out["perf/mfu"] = tps * self.flops_per_token / (self.peak_flops * self.world)
        for k, v in out.items():
            self.writer.add_scalar(k, v, step)
        for lang, n in self.tokens_by_lang.items():
            self.writer.add_scalar(f"data/tokens/{lang}", n, step)
        line = (f"step {step:>7} | loss {out['loss/total']:.5f} | " +
                " | ".join(f"{k.split('/')[1]} {v:.5f}" for k, v in out.items()
                           if k.startswith("loss/") and k != "loss/total") +
                f" | lr {out['lr']:.2e} | gnorm {out['grad_norm']:.3f} | {tps:,.0f} tok/s")
        self._print(line)
        self._window = {"tokens": 0, "samples": 0, "time": 0.0, "steps": 0}
        self.writer.flush()

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)  # above the bar, not through it
        else:
            print(line, flush=True)

    def evaluation(self, step: int, results: dict[str, dict], guards: dict, alarmed: list[str],
                   seconds: float) -> None:
        """Live retrieval, per set (lightmbert.evaluation.retrieval's dict) → `<prefix>/<lang>`,
        `<prefix>/mean`, `<prefix>/drop` (step-0 value − now), where the prefix is `eval/retrieval`
        for eval.pairs' set (its tags from before eval.sets) and `eval/<name>/retrieval` for
        eval.sets.<name>; one `eval/alarm` (1 when any set's guard is up) and `eval/seconds`."""
        if self.rank != 0:
            return
        from .live_eval import HELDOUT
        for i, (name, res) in enumerate(results.items()):
            guard, mean = guards[name], res["mean"]["mean"]
            prefix = "eval/retrieval" if name == HELDOUT else f"eval/{name}/retrieval"
            for lang, r in res.items():
                self.writer.add_scalar(f"{prefix}/{lang}", r["mean"], step)
            self.writer.add_scalar(f"{prefix}/drop", guard.baseline - mean, step)
            worst = sorted((r["mean"], k) for k, r in res.items() if k != "mean")[:3]
            label = "" if name == HELDOUT else f"{name} "
            self._print(f"[eval] step {step:>7} | {label}retrieval {mean:.4f} "
                        f"(step {guard.baseline_step}: {guard.baseline:.4f}, "
                        f"{mean - guard.baseline:+.4f}) | lowest " + ", ".join(f"{k} {v:.3f}" for v, k in worst)
                        + f" | {len(res) - 1} languages"
                        # one pass encodes every set: its time goes on the last set's line
                        + ("" if i < len(results) - 1 else
                           f", {seconds:.1f} s" + (f" for {len(results)} sets" if len(results) > 1 else "")))
        self.writer.add_scalar("eval/alarm", float(bool(alarmed)), step)
        self.writer.add_scalar("eval/seconds", seconds, step)
        if alarmed:
            g = guards[alarmed[0]]  # max_drop and patience are the same for every set
            which = "; ".join(
                f"{'eval.pairs' if n == HELDOUT else f'eval.sets.{n}'} ({n}): {results[n]['mean']['mean']:.4f} "
                f"vs {guards[n].baseline:.4f} at step {guards[n].baseline_step} "
                f"({results[n]['mean']['mean'] - guards[n].baseline:+.4f}, {guards[n].below} evaluations "
                f"in a row)" for n in alarmed)
            msg = (f"ALARM at step {step}: held-out retrieval is more than eval.max_drop={g.max_drop} below its "
                   f"baseline for {g.patience}+ evaluations in a row on {len(alarmed)} set(s): {which}. "
                   f"The loss may still be falling: this recipe is losing the teacher's cross-lingual "
                   f"ability. Consider a lower lr, sentence-level relation losses, or eval.stop_on_drop: true.")
            bar = "!" * 100
            self._print(f"{bar}\n{msg}\n{bar}")
            self.writer.add_text("eval/alarm", msg, step)
        self.writer.flush()

    def close(self) -> None:
        """Idempotent: called at the end of a run and again on every exit path."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
