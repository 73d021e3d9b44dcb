"""The Distiller: teacher inference + LightMBERT student updates under DeepSpeed ZeRO.

`__init__` builds in a fixed order: checks → dist → seed → teacher → student → engine →
data → resume → metrics (+ live evaluation). Everything that can be wrong with the config or
the data is checked before the process group does any collective work, so a bad run fails
fast and never hangs. Collaborators, one concern each: checks.py (fail-fast), optim.py
(optimizer + schedule), data.py (streams), checkpoint.py, metrics.py, records.py (run-dir
files, trace), live_eval.py (held-out retrieval during training), export.py.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lightmbert.configs import DistillConfig
from lightmbert.data_prep.manifest import read_manifest

from .capture import ProjectionCapture
from .checkpoint import Checkpointer
from .checks import check_config, check_tokenizer, mask_id
from .data import build_loader
from .data_state import gather, resume_plan
from .ds_config import build_ds_config, resolve_precision
from .losses import DistillObjective
from .metrics import Metrics
from .models import build_student, encoder_of, flops_per_token, load_teacher
from .optim import build_optimizer, param_groups, scheduler_factory
from .records import RunRecords
from .runlock import RunLocked, lock_on_rank0  # noqa: F401  (RunLocked: re-exported for distill.py)
from .step import Stepper, StopRequest

EXIT_PREEMPTED = 75  # checkpoint written after SIGUSR1/SIGTERM: requeue and resume
EXIT_QUALITY = 4     # checkpoint written, stopped by eval.stop_on_drop


class DistillModule(nn.Module):
    """What DeepSpeed trains: the student plus the objective's own parameters."""

    def __init__(self, student: nn.Module, objective: DistillObjective):
        super().__init__()
        self.student, self.objective = student, objective
        self.capture = ProjectionCapture(student, objective.captures[0])
        # saved by DeepSpeed with every checkpoint: what its ds_to_universal converter needs to
        # re-partition the optimizer state for another number of ranks (no tensor parallelism)
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_VERSION_KEY, UNIVERSAL_CHECKPOINT_VERSION_VALUE
        self.universal_checkpoint_info = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}

    def forward(self, input_ids, attention_mask, t_hidden, t_proj, teacher=None, labels=None):
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return self.objective(out.hidden_states, t_hidden, self.capture.pop_all(), t_proj, attention_mask,
                              self.student, teacher, labels)


def init_dist(cuda: bool) -> tuple[int, int]:
    import deepspeed
    if "RANK" not in os.environ:  # plain `python -m lightmbert.trainer.distill`: a world of one
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


class Distiller:
    def __init__(self, cfg: DistillConfig, command: str = ""):
        self.cfg, run = cfg, cfg.run
        self.run_dir = Path(run.output_dir)
        self.cuda = torch.cuda.is_available()
        self._env_at_start = dict(os.environ)  # before init_dist fills in RANK/LOCAL_RANK for plain runs
        # 0. checks that need no process group: data, precision, impossible combinations
        self.manifest = read_manifest(cfg.data.shards)
        self.precision = resolve_precision(cfg.engine.precision, self.cuda)
        check_config(cfg)

        # 1. dist, then the run directory's lock (rank 0; every rank learns the outcome)
        self.rank, self.world = init_dist(self.cuda)
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device("cuda", local) if self.cuda else torch.device("cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.lock = lock_on_rank0(self.run_dir, self.rank, self.device, command)
        try:
            self._build(cfg, command)
        except BaseException:  # a bad teacher/data/checkpoint: the lock must not look abandoned
            self.lock.release()
            raise

    def _build(self, cfg: DistillConfig, command: str) -> None:
        """Steps 2–8 of the build order (after the lock is held)."""
        import deepspeed
        run = cfg.run
        # 2. seed: the models below are built from `run.seed` (identical on every rank); the
        #    per-rank dropout stream is seeded after them (step 5). Data order is seeded apart.
        torch.manual_seed(run.seed)

        # 3. teacher: frozen, eval, no_grad, no optimizer
        t_dtype = {"auto": torch.bfloat16 if self.cuda else torch.float32, "fp32": torch.float32,
                   "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.teacher.dtype]
        with_head = cfg.loss.logit_weight > 0 or cfg.loss.mlm_weight > 0
        self.teacher = load_teacher(cfg.teacher, with_head, self.device, t_dtype, run.seed)
        check_tokenizer(self.manifest, self.teacher, cfg.teacher.name_or_path)

        # 4. student (+ the objective's projection), identical on every rank
        student, self.copied_layers = build_student(self.teacher, cfg.student, run.seed)
        objective = DistillObjective(cfg.loss, student, self.teacher)
        self.t_capture = ProjectionCapture(self.teacher, objective.captures[1])
        self.module = DistillModule(student, objective)

        # 5. engine: the ds_config generated from our config; only trainable params optimised
        self.ds_config = build_ds_config(cfg.engine, cfg.optim, cfg.data, self.world, self.precision)
        self.ckpt = Checkpointer(self.run_dir, run.keep_checkpoints, self.rank, self.world)
        if self.ckpt.reshape():  # resuming on another number of ranks (step 7)
            self.ds_config["checkpoint"] = {"load_universal": True}
        groups = param_groups(self.module, cfg.optim.weight_decay)
        optimizer = build_optimizer(groups, cfg.optim)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, model_parameters=None if optimizer else groups,
            lr_scheduler=scheduler_factory(cfg.optim, run.max_steps), config=self.ds_config)
        # each rank its own dropout stream, now that nothing re-seeds any more (a resume
        # restores the per-rank RNG state from the checkpoint)
        torch.manual_seed(run.seed + self.rank)

        # 6. the step (its data position and counters are set on resume) and live evaluation
        self.step = 0
        self.stop = StopRequest(self.rank, launched="LOCAL_RANK" in self._env_at_start)
        # batch agreement on a CPU group: no device sync for it (the default group is gloo on CPU)
        control = dist.new_group(backend="gloo") if self.cuda else None
        self.stepper = Stepper(self.engine, self.teacher, self._teacher, self.device, self.world,
                               cfg.engine.grad_accum, run.max_bad_steps, run.trace, [], self.stop, self._log,
                               self.rank, control)
        self.live_eval = None
        if cfg.eval.enabled:  # eval.pairs and/or eval.sets
            from .live_eval import LiveEval
            self.live_eval = LiveEval(cfg.eval, self.manifest, self.rank, self.world, self.device)

        # 7. resume: the same command restarts from the latest complete checkpoint — also on
        #    another number of ranks (ZeRO-1/2; the data's remaining epoch is re-split exactly)
        client = self.ckpt.load(self.engine)
        if client is not None:
            self.step = client["step"]
            if client["saved_world"] != self.world:  # no RNG state for a new shape: seeded anew
                torch.manual_seed(run.seed + 7919 * self.step + self.rank)
                self._log(f"checkpoint written by {client['saved_world']} rank(s), resumed on {self.world}")
            self.stepper.load_state(client)
            if self.live_eval is not None:
                fresh = self.live_eval.load_state_dict(client.get("eval", {}))
                if fresh:  # e.g. an eval.sets entry added for this resume: no step-0 value for it
                    self._log(f"live eval: no baseline in the checkpoint for {', '.join(fresh)}: "
                              f"its first evaluation from here on is the baseline its drop guard uses")
            self._log(f"resumed from {client['tag']} (step {self.step})")
        self.loader = build_loader(cfg.data, self.manifest["tokenizer"]["pad_id"], run.seed, self.rank,
                                   self.world, mask_id=mask_id(self.manifest) if cfg.loss.mlm_weight > 0 else None)
        self.stream = self.loader.dataset
        if client is not None and "data" not in client:
            self._log("warning: the checkpoint holds no data position (written before stateful data); "
                      "the data starts at a fresh epoch")
        self.loader.restore(resume_plan(client.get("data") if client else None, self.stream,
                                        cfg.engine.grad_accum, cfg.data.reset_position, self._log))
        self.stepper.languages = self.stream.languages
        if self.stream.parallel is not None:
            par = self.stream.parallel
            self._log(f"data.parallel: {len(par.items)} translation items from the shards "
                      f"({par.unused} without a translation into the training languages left out)")

        # 8. metrics + run-dir records (rank 0)
        self.records = RunRecords(self.run_dir, self.rank, run.trace)
        self.records.write_start(cfg, self.ds_config, {
            "world_size": self.world, "precision": self.precision, "copied_teacher_layers": self.copied_layers,
            "layer_pairs": objective.pairs, "tokenizer": self.manifest["tokenizer"]["name"]},
            student.config, command)
        self.metrics = Metrics(self.run_dir, self.rank, run.max_steps, self.step, run.log_interval,
                               run.progress_bar, self.world,
                               *(flops_per_token(self.teacher, student) if self.cuda else (0.0, 0.0)))

    # ------------------------------------------------------------------ helpers
    def _log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[distill] {msg}", flush=True)

    def state(self) -> dict:
        """The client state of a checkpoint (a collective: the data position of every rank)."""
        return {"step": self.step, **self.stepper.state(), "data": gather(self.loader, self.cfg.engine.grad_accum),
                "eval": self.live_eval.state_dict() if self.live_eval is not None else {}}

    def _teacher(self, batch):
        with torch.no_grad():
            out = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True)
        return out.hidden_states, self.t_capture.pop_all()

    def _evaluate(self) -> list[str]:
        """Live retrieval of every set on every rank (one sharded pass); rank 0 logs. The sets
        whose drop alarm is up (every rank computes the same scores, so agrees on them)."""
        # the bare encoder: a *ForMaskedLM student's own output has no last_hidden_state
        results, secs = self.live_eval.run(encoder_of(self.module.student))
        alarmed = self.live_eval.update(results, self.step)
        self.metrics.evaluation(self.step, results, self.live_eval.guards, alarmed, secs)
        return alarmed

    # ------------------------------------------------------------------ training
    def train(self) -> int:
        run = self.cfg.run
        data_iter = iter(self.loader)
        if self.live_eval is not None and self.step == 0 and self.live_eval.needs_baseline():
            self._evaluate()  # the "before" point
        while self.step < run.max_steps:
            t0 = time.perf_counter()
            out = self.train_step(data_iter)
            dt = time.perf_counter() - t0
            scalars = {f"loss/{k}": v for k, v in out["terms"].items()}
            scalars["lr"] = self.scheduler.get_last_lr()[0]
            if self.metrics.due(self.step):  # the grad norm is a device value: read it when logged
                gn = self.engine.get_global_grad_norm()
                scalars["grad_norm"] = float(gn) if gn is not None else 0.0
            scalars["data/skipped_batches"] = self.stepper.skipped
            self.metrics.step(self.step, scalars, out["tokens"], out["samples"], dt, Counter(out["langs"]))
            self.records.trace(self.step, out["terms"]["total"], out["batch_sha256"], out["rows"])
            due = self.live_eval is not None and self.live_eval.due(self.step, run.max_steps)
            alarmed = self._evaluate() if due else []
            if alarmed and self.cfg.eval.stop_on_drop:
                tag = self.ckpt.save(self.engine, self.step, self.state())
                self._log(f"eval.stop_on_drop: live retrieval of {', '.join(alarmed)} stayed below its "
                          f"baseline; checkpoint {tag} written; exiting with {EXIT_QUALITY}")
                self.metrics.close()
                return EXIT_QUALITY
            if self.stepper.stop_agreed:  # every rank saw the same reduced flag in this step
                tag = self.ckpt.save(self.engine, self.step, self.state())
                self._log(f"signal received: checkpoint {tag} written; exiting with {EXIT_PREEMPTED}")
                self.metrics.close()
                return EXIT_PREEMPTED
            if run.save_interval and self.step % run.save_interval == 0 and self.step < run.max_steps:
                self.ckpt.save(self.engine, self.step, self.state())
        if not self.ckpt.has(self.step):
            self.ckpt.save(self.engine, self.step, self.state())
        if run.export:
            from .export import export_live
            export_live(self.engine, self.module.student, self.manifest["tokenizer"]["name"],
                        self.run_dir / "student", self.rank, self.cfg.engine.zero_stage)
        self.metrics.close()
        self._log(f"done: {self.step} steps")
        return 0

    def train_step(self, data_iter) -> dict:
        """One optimizer step (trainer/step.py)."""
        out = self.stepper.run(data_iter, self.step)
        self.step += 1
        return out

    def close(self) -> None:
        """After a successful run: wait for every rank, then shut down (see `shutdown`)."""
        if dist.is_initialized():
            dist.barrier()
        shutdown(self)


def shutdown(distiller: "Distiller | None") -> None:
    """Every exit path, also after an error (no barrier then: a failed peer would never reach
    it): close TensorBoard, release the run lock, destroy the process group. Idempotent."""
    if distiller is not None:
        if getattr(distiller, "metrics", None) is not None:
            distiller.metrics.close()
        if getattr(distiller, "lock", None) is not None:
            distiller.lock.release()
    if dist.is_initialized():
        dist.destroy_process_group()
