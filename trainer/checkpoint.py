"""Checkpoints: DeepSpeed engine state + our client state (step, data position) + per-rank
RNG states; keep the last K; a `latest` pointer written only after every rank finished.

Layout: <run>/checkpoints/step00000100/ (DeepSpeed's files, rng_rank{r}.pt), <run>/checkpoints/latest
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, run_dir: str | os.PathLike, keep: int, rank: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep, self.rank = keep, rank

    def latest(self) -> str | None:
        p = self.dir / "latest"
        if not p.is_file():
            return None
        tag = p.read_text().strip()
        return tag if (self.dir / tag).is_dir() else None

    def save(self, engine, step: int, client_state: dict) -> str:
        tag = f"step{step:08d}"
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(_rng_state(), self.dir / tag / f"rng_rank{self.rank}.pt")
        dist.barrier()  # every rank's shards are on disk before the pointer moves
        if self.rank == 0:
            tmp = self.dir / "latest.tmp"
            tmp.write_text(tag)
            os.replace(tmp, self.dir / "latest")
            tags = sorted(p.name for p in self.dir.glob("step*") if p.is_dir())
            for old in tags[:-self.keep]:
                shutil.rmtree(self.dir / old, ignore_errors=True)
        dist.barrier()
        return tag

    def load(self, engine) -> dict | None:
        """Restore the latest checkpoint into `engine`; returns its client state (or None)."""
        tag = self.latest()
        if tag is None:
            return None
        path, client = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"cannot load checkpoint {self.dir / tag}")
        rng = self.dir / tag / f"rng_rank{self.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=False))
        return {**(client or {}), "tag": tag}
