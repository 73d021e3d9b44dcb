"""One optimizer step of distillation, and the stop request it carries.

StopRequest: SIGUSR1/SIGTERM, or the death of the launcher that started this worker (torchrun
starts workers in their own session: a kill -9 of it would leave them training on, racing a
rerun of the same command on the same run directory). Acted on at a step boundary, by every
rank together.

Stepper.run: grad_accum micro-batches through teacher → student → objective → DeepSpeed.
At the start of each optimizer step every rank takes its grad_accum micro-batches from the
loader, then one one-element all-reduce on a CPU (gloo) group says whether every rank got
them: a bad shard (or any error) in one rank's DataLoader worker then ends every rank with
its name instead of leaving the others waiting in the next collective. On GPUs that group is
not the NCCL one, so it costs no device sync; it is one small CPU collective per step.
Device syncs per micro-batch: one. A single all-reduce of a small float64 vector carries what
every rank must agree on — whether the loss is finite everywhere, whether a stop was
requested, and the loss terms (their mean over ranks is what is logged). Token and sample
counts come from the batch while it is still on the host; the batch hash (run.trace) is only
computed when tracing. A non-finite micro-batch is skipped on every rank together, counted,
and replaced by the next batch; run.max_bad_steps in a row abort.
"""
from __future__ import annotations

import hashlib
import os
import signal
from collections import Counter

import torch
import torch.distributed as dist

from lightmbert.data_prep.tarreader import ShardError

from .data import DataError, tokens_per_language


class DataFailure(RuntimeError):
    """A rank could not get its next batch; raised on every rank with that rank's message."""


class StopRequest:
    def __init__(self, rank: int, launched: bool):
        self.rank, self.flag = rank, False
        # only under a launcher: a plain `python -m` run under nohup must outlive its shell
        self.launcher_pid = os.getppid() if launched else None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.flag = True

    def requested(self) -> bool:
        if self.launcher_pid is not None and not self.flag and os.getppid() != self.launcher_pid:
            print(f"[distill] rank {self.rank}: launcher (pid {self.launcher_pid}) is gone; stopping at "
                  f"this step's end", flush=True)
            self.flag = True
        return self.flag


class Stepper:
    def __init__(self, engine, teacher, teacher_forward, device, world: int, grad_accum: int, max_bad_steps: int,
                 trace: bool, languages: list[str], stop: StopRequest, log, rank: int = 0, control=None):
        self.engine, self.teacher, self.teacher_forward = engine, teacher, teacher_forward
        self.device, self.world = device, world
        self.grad_accum, self.max_bad_steps, self.trace = grad_accum, max_bad_steps, trace
        self.languages, self.stop, self.log = languages, stop, log
        self.bad_steps = 0      # consecutive non-finite micro-batches
        self.skipped = 0        # all skipped micro-batches of the run
        self.stop_agreed = False
        self.rank, self.control = rank, control   # control: a gloo group (None: the default group)

    def next_batches(self, data_iter, k: int) -> list[dict]:
        """This rank's next k micro-batches, once every rank has its own (a collective)."""
        hosts, error = [], ""
        try:
            for _ in range(k):
                hosts.append(next(data_iter))
        except Exception as e:  # noqa: BLE001 — whatever it is, every rank must hear of it
            kind = "" if isinstance(e, (ShardError, DataError)) else f"{type(e).__name__}: "
            error = f"rank {self.rank}: {kind}{str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        failed = torch.tensor([1.0 if error else 0.0])
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.control)
        if failed.item() > 0:
            errors: list = [None] * self.world
            dist.all_gather_object(errors, error, group=self.control)
            raise DataFailure("; ".join(e for e in errors if e))
        return hosts

    def state(self) -> dict:
        return {"bad_steps": self.bad_steps, "skipped": self.skipped}

    def load_state(self, client: dict) -> None:
        self.bad_steps, self.skipped = client.get("bad_steps", 0), client.get("skipped", 0)

    def run(self, data_iter, step: int) -> dict:
        """Optimizer step `step` + 1: returns the logged terms and this rank's counts."""
        terms_sum: dict[str, float] = {}
        digest = hashlib.sha256() if self.trace else None
        rows: list = []  # with run.trace: [language, epoch, sample id, wrapped] of every sample row used
        tokens = samples = good = 0
        langs: Counter = Counter()
        queue = self.next_batches(data_iter, self.grad_accum)
        while good < self.grad_accum:
            if not queue:  # a skipped (non-finite) micro-batch is replaced, on every rank alike
                queue = self.next_batches(data_iter, 1)
            host = queue.pop(0)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in host.items()
                     if isinstance(v, torch.Tensor)}
            t_hidden, t_proj = self.teacher_forward(batch)
            loss, terms = self.engine(batch["input_ids"], batch["attention_mask"], t_hidden, t_proj,
                                      self.teacher, batch.get("labels"))
            keys = ["total", *terms]
            local = torch.stack([(~torch.isfinite(loss)).to(torch.float64),
                                 torch.tensor(float(self.stop.requested()), dtype=torch.float64, device=self.device),
                                 *(v.detach().to(torch.float64) for v in (loss, *terms.values()))])
            dist.all_reduce(local)
            nonfinite, stop, *values = local.tolist()   # the one host sync of this micro-batch
            self.stop_agreed = self.stop_agreed or stop > 0
            if nonfinite > 0:
                self.bad_steps += 1
                self.skipped += 1
                self.log(f"step {step + 1}: non-finite loss on {int(nonfinite)} rank(s); batch skipped "
                         f"({self.bad_steps} in a row)")
                if self.bad_steps >= self.max_bad_steps:
                    raise FloatingPointError(f"{self.bad_steps} consecutive non-finite losses "
                                             f"(run.max_bad_steps); aborting")
                continue
            self.bad_steps = 0
            self.engine.backward(loss)
            self.engine.step()
            good += 1
            for k, v in zip(keys, values):  # the mean over ranks, averaged over the micro-batches
                terms_sum[k] = terms_sum.get(k, 0.0) + v / self.world / self.grad_accum
            if digest is not None:
                digest.update(host["input_ids"].numpy().tobytes())
                rows += host["rows"]
            tokens += int(host["attention_mask"].sum())
            samples += host["input_ids"].shape[0]
            langs.update(tokens_per_language(host, self.languages))
        return {"terms": terms_sum, "tokens": tokens, "samples": samples, "langs": langs,
                "batch_sha256": digest.hexdigest() if digest is not None else "", "rows": rows}
