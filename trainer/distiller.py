"""The Distiller: teacher inference + LightMBERT student updates under DeepSpeed ZeRO.

`__init__` builds in a fixed order: dist → seed → teacher → student → engine → data →
resume → metrics. Everything that can be wrong with the config or the data is checked
before the process group does any collective work, so a bad run fails fast and never hangs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from configs import DistillConfig, dump
from data_prep.manifest import read_manifest

from .capture import QKCapture
from .checkpoint import Checkpointer
from .data import build_loader, tokens_per_language
from .ds_config import build_ds_config, resolve_precision
from .losses import DistillObjective
from .metrics import Metrics
from .models import ModelError, build_student, encoder_of, load_teacher, non_embedding_params

EXIT_PREEMPTED = 75  # checkpoint written after SIGUSR1/SIGTERM: requeue and resume


class DistillModule(nn.Module):
    """What DeepSpeed trains: the student plus the objective's own parameters."""

    def __init__(self, student: nn.Module, objective: DistillObjective):
        super().__init__()
        self.student, self.objective = student, objective
        self.capture = QKCapture(student, objective.attention_layers[0])

    def forward(self, input_ids, attention_mask, t_hidden, t_qk, teacher=None, labels=None):
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        s_qk = {i: self.capture.pop(i) for i in self.objective.attention_layers[0]}
        return self.objective(out.hidden_states, t_hidden, s_qk, t_qk, attention_mask, self.student,
                              teacher, labels)


def _init_dist(cuda: bool) -> tuple[int, int]:
    import deepspeed
    if "RANK" not in os.environ:  # plain `python -m trainer.distill`: a world of one
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
        import deepspeed
        self.cfg = cfg
        run = cfg.run
        self.run_dir = Path(run.output_dir)
        self.cuda = torch.cuda.is_available()
        # Fail-fast checks that need no process group: data, tokenizer vs teacher, precision.
        self.manifest = read_manifest(cfg.data.shards)
        self.precision = resolve_precision(cfg.engine.precision, self.cuda)
        if cfg.loss.logit_weight > 0 and cfg.engine.zero_stage == 3:
            raise ModelError("loss.logit_weight with engine.zero_stage=3 is not supported "
                             "(the MLM decoder weight is partitioned); use stage 0–2")

        # 1. dist
        self.rank, self.world = _init_dist(self.cuda)
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device("cuda", local) if self.cuda else torch.device("cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        # 2. seed (dropout); data order is seeded separately and does not depend on it
        torch.manual_seed(run.seed + self.rank)

        # 3. teacher: frozen, eval, no_grad, no optimizer
        t_dtype = {"auto": torch.bfloat16 if self.cuda else torch.float32, "fp32": torch.float32,
                   "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.teacher.dtype]
        with_head = cfg.loss.logit_weight > 0 or cfg.loss.mlm_weight > 0
        self.teacher = load_teacher(cfg.teacher, with_head, self.device, t_dtype, run.seed)
        self._check_tokenizer()

        # 4. student (+ the objective's projection), identical on every rank
        student, self.copied_layers = build_student(self.teacher, cfg.student, run.seed)
        objective = DistillObjective(cfg.loss, student, self.teacher)
        self.t_capture = QKCapture(self.teacher, objective.attention_layers[1])
        self.module = DistillModule(student, objective)

        # 5. engine: the ds_config generated from our config; only trainable params optimised
        self.ds_config = build_ds_config(cfg.engine, cfg.optim, cfg.data, self.world, self.precision)
        params = [p for p in self.module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = None
        if cfg.optim.optimizer == "torch_adamw":
            optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                          eps=cfg.optim.eps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, model_parameters=None if optimizer else groups,
            lr_scheduler=self._schedule, config=self.ds_config)

        # 6. data (the position is set on resume)
        self.step = 0
        self.consumed = 0  # micro-batches this rank has consumed
        self.bad_steps = 0      # consecutive non-finite micro-batches
        self.skipped = 0        # all skipped micro-batches of the run
        self.ckpt = Checkpointer(self.run_dir, run.keep_checkpoints, self.rank)

        # 7. resume: the same command restarts from the latest complete checkpoint
        client = self.ckpt.load(self.engine)
        if client is not None:
            self.step, self.consumed = client["step"], client["consumed"]
            self.bad_steps = client.get("bad_steps", 0)
            self.skipped = client.get("skipped", 0)
            self._log(f"resumed from {client['tag']} (step {self.step})")
        self.pad_id = self.manifest["tokenizer"]["pad_id"]
        self.loader, self.stream = build_loader(cfg.data, self.pad_id, run.seed, self.rank,
                                                self.world, start_batch=self.consumed,
                                                mask_id=self._mask_id() if cfg.loss.mlm_weight > 0 else None)
        self.stream_languages = self.stream.languages
        if self.stream.parallel is not None:
            par = self.stream.parallel
            self._log(f"data.parallel: {len(par.items)} items from {cfg.data.parallel} "
                      f"({par.unused} rows without a translation into the training languages left out)")

        # 8. metrics + run-dir records (rank 0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            dump(cfg, self.run_dir / "config.yaml", header=command or "python -m trainer.distill")
            (self.run_dir / "ds_config.json").write_text(json.dumps(self.ds_config, indent=1))
            (self.run_dir / "run_info.json").write_text(json.dumps({
                "git_revision": _git_revision(), "world_size": self.world, "precision": self.precision,
                "copied_teacher_layers": self.copied_layers, "layer_pairs": objective.pairs,
                "tokenizer": self.manifest["tokenizer"]["name"], "command": command}, indent=1))
            student.config.save_pretrained(self.run_dir / "student_config")
        self.metrics = Metrics(self.run_dir, self.rank, run.max_steps, self.step, run.log_interval,
                               run.progress_bar, self.world, *self._flops())
        self._stop = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    # ------------------------------------------------------------------ helpers
    def _log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[distill] {msg}", flush=True)

    def _on_signal(self, signum, _frame) -> None:
        self._stop = True  # acted on at the next step boundary, on every rank together

    def _schedule(self, optimizer):
        o, total = self.cfg.optim, self.cfg.run.max_steps

        def factor(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            if o.schedule == "constant":
                return 1.0
            frac = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            shape = 1 - frac if o.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _check_tokenizer(self) -> None:
        tok = self.manifest["tokenizer"]
        vocab = encoder_of(self.teacher).config.vocab_size
        if tok["vocab_size"] > vocab:
            raise ModelError(f"data.shards tokenizer {tok['name']!r} has {tok['vocab_size']} ids but "
                             f"the teacher's embeddings only {vocab}: shards and teacher do not match")
        path = self.cfg.teacher.name_or_path
        if path and Path(path).is_dir() and (Path(path) / "tokenizer.json").is_file():
            from data_prep.tokenizer import describe_tokenizer, load_tokenizer
            mine = describe_tokenizer(load_tokenizer(path), path)
            if mine.sha256 != tok["sha256"]:
                raise ModelError(f"data.shards were tokenised with {tok['name']!r}, which differs from "
                                 f"the teacher's own tokenizer in {path} (sha256 {mine.sha256[:12]} vs "
                                 f"{tok['sha256'][:12]}): re-shard with the teacher's tokenizer")

    def _mask_id(self) -> int:
        from data_prep.tokenizer import load_tokenizer
        name = self.manifest["tokenizer"]["name"]
        mask_id = getattr(load_tokenizer(name), "mask_token_id", None)
        if mask_id is None:
            raise ModelError(f"loss.mlm_weight > 0 but tokenizer {name!r} has no mask token")
        return int(mask_id)

    def _flops(self) -> tuple[float, float]:
        """(training FLOPs per token, device peak FLOP/s) for MFU on GPU: 2·N per token for the
        teacher's forward + 6·N for the student's forward and backward (embeddings excluded)."""
        if not self.cuda:
            return 0.0, 0.0
        peak = float(os.environ.get("LIGHTMBERT_PEAK_TFLOPS", 989)) * 1e12  # H100 SXM dense bf16
        return 2 * non_embedding_params(self.teacher) + 6 * non_embedding_params(self.module.student), peak

    def _teacher(self, batch):
        with torch.no_grad():
            out = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True)
            t_qk = {i: self.t_capture.pop(i) for i in self.module.objective.attention_layers[1]}
        return out.hidden_states, t_qk

    def _all(self, value: float, op) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.item()

    def state(self) -> dict:
        return {"step": self.step, "consumed": self.consumed, "bad_steps": self.bad_steps,
                "skipped": self.skipped}

    # ------------------------------------------------------------------ training
    def train_step(self, data_iter) -> dict:
        """One optimizer step (grad_accum micro-batches). Non-finite micro-batches are skipped
        on every rank together, counted, and replaced by the next batch."""
        terms_sum: dict[str, float] = {}
        digest = hashlib.sha256()
        tokens = samples = 0
        langs = {}
        good = 0
        while good < self.cfg.engine.grad_accum:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(data_iter).items()}
            self.consumed += 1
            t_hidden, t_qk = self._teacher(batch)
            loss, terms = self.engine(batch["input_ids"], batch["attention_mask"], t_hidden, t_qk,
                                      self.teacher, batch.get("labels"))
            if self._all(float(torch.isfinite(loss).all()), dist.ReduceOp.MIN) < 1:
                self.bad_steps += 1
                self.skipped += 1
                self._log(f"step {self.step + 1}: non-finite loss on some rank; batch skipped "
                          f"({self.bad_steps} in a row)")
                if self.bad_steps >= self.cfg.run.max_bad_steps:
                    raise FloatingPointError(f"{self.bad_steps} consecutive non-finite losses "
                                             f"(run.max_bad_steps); aborting")
                continue
            self.bad_steps = 0
            self.engine.backward(loss)
            self.engine.step()
            good += 1
            digest.update(batch["input_ids"].cpu().numpy().tobytes())
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v.item() / self.cfg.engine.grad_accum
            terms_sum["total"] = terms_sum.get("total", 0.0) + loss.item() / self.cfg.engine.grad_accum
            tokens += int(batch["attention_mask"].sum())
            samples += batch["input_ids"].shape[0]
            for k, v in tokens_per_language(batch, self.stream_languages).items():
                langs[k] = langs.get(k, 0) + v
        self.step += 1
        # logged losses are the mean over ranks (one small all-reduce per step)
        keys = sorted(terms_sum)
        t = torch.tensor([terms_sum[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        terms_sum = {k: v / self.world for k, v in zip(keys, t.tolist())}
        gn = self.engine.get_global_grad_norm()
        return {"terms": terms_sum, "tokens": tokens, "samples": samples, "langs": langs,
                "grad_norm": float(gn) if gn is not None else 0.0, "batch_sha256": digest.hexdigest()}

    def train(self) -> int:
        run = self.cfg.run
        data_iter = iter(self.loader)
        while self.step < run.max_steps:
            t0 = time.perf_counter()
            out = self.train_step(data_iter)
            dt = time.perf_counter() - t0
            scalars = {f"loss/{k}": v for k, v in out["terms"].items()}
            scalars["lr"] = self.scheduler.get_last_lr()[0]
            scalars["grad_norm"] = out["grad_norm"]
            scalars["data/skipped_batches"] = self.skipped
            self.metrics.step(self.step, scalars, out["tokens"], out["samples"], dt, Counter(out["langs"]))
            if run.trace:
                with open(self.run_dir / f"trace_rank{self.rank}.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, "loss": repr(out["terms"]["total"]),
                                        "batch_sha256": out["batch_sha256"]}) + "\n")
            if self._all(float(self._stop), dist.ReduceOp.MAX) > 0:
                tag = self.ckpt.save(self.engine, self.step, self.state())
                self._log(f"signal received: checkpoint {tag} written; exiting with {EXIT_PREEMPTED}")
                self.metrics.close()
                return EXIT_PREEMPTED
            if run.save_interval and self.step % run.save_interval == 0 and self.step < run.max_steps:
                self.ckpt.save(self.engine, self.step, self.state())
        if self.ckpt.latest() != f"step{self.step:08d}":
            self.ckpt.save(self.engine, self.step, self.state())
        if run.export:
            from .export import export_live
            export_live(self.engine, self.module.student, self.manifest["tokenizer"]["name"],
                        self.run_dir / "student", self.rank, self.cfg.engine.zero_stage)
        self.metrics.close()
        self._log(f"done: {self.step} steps")
        return 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
