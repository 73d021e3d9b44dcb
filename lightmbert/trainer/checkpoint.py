"""Checkpoints: DeepSpeed engine state + our client state (step, counters, the data position
and job shape of trainer/data_state.py) + per-rank RNG states; keep the last K; a `complete`
marker (step, world size) and then the `latest` pointer, written only after every rank
finished. Another world size may resume (ZeRO-1/2 save elastic optimizer partitions; the
data is re-split): the RNG states then start anew per rank.

Layout: <run>/checkpoints/step00000100/ (DeepSpeed's files, rng_rank{r}.pt, complete),
<run>/checkpoints/latest. Resuming never silently starts over: it takes the newest complete
checkpoint (a `latest` naming a missing or incomplete one falls back with a warning), and a
run directory holding checkpoints none of which is complete is an error. Partial saves are
set aside at resume and never counted by rotation, so the second preempted save of a run
cannot delete its only complete checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
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


class CheckpointError(RuntimeError):
    """Checkpoints exist but cannot be resumed from (the message says which and why)."""


def _complete(d: Path) -> bool:
    return (d / "complete").is_file()


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _dist():
        dist.barrier()


def _from_rank0(value):
    """Rank 0's `value` on every rank (a collective; as is without a process group)."""
    if not _dist():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Checkpointer:
    """Saves and finds checkpoints. Every decision about the directory — which tag to resume,
    its world size, setting partial tags aside, rotation — is rank 0's, broadcast to the
    others: on a shared filesystem with attribute caching, ranks that scanned the directory
    each for itself could pick different steps."""

    def __init__(self, run_dir: str | os.PathLike, keep: int, rank: int, world: int | None = None):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep, self.rank = max(1, keep), rank
        self.world = world if world is not None else (dist.get_world_size() if _dist() else 1)
        self._picked: tuple | None = None   # resume_tag()'s one pick: (tag, saved world)
        self._saved: str | None = None      # the last tag save() wrote

    def _tags(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("step*") if p.is_dir()) if self.dir.is_dir() else []

    def latest(self) -> str | None:
        """The checkpoint to resume from, or None for a fresh run (see the module docstring):
        the newest complete one (the `latest` pointer only moves after the marker, so a newer
        complete tag than it names is a save that finished just before a kill)."""
        pointer = self.dir / "latest"
        tags = self._tags()
        complete = [t for t in tags if _complete(self.dir / t)]
        named = pointer.read_text().strip() if pointer.is_file() else None
        if named is not None and complete and named == complete[-1]:
            return named
        if named in tags and not complete and (self.dir / named / "rng_rank0.pt").is_file():
            return named  # written before markers existed: the pointer only moved once complete
        if not named and not tags:
            return None
        if not named and not complete:
            # the pointer moves only after a save finished: none ever did (the run's first save
            # was preempted or killed), so these are partial saves and step 0 is the truth
            print(f"[checkpoint] warning: {self.dir}: no save of this run ever finished ({tags} are partial); "
                  f"starting from step 0", file=sys.stderr, flush=True)
            return None
        if complete:
            if named is not None and named not in complete:
                why = "is missing" if named not in tags else "is incomplete (no 'complete' marker)"
                print(f"[checkpoint] warning: {pointer} names {named}, which {why}; resuming from the newest "
                      f"complete checkpoint, {complete[-1]}", file=sys.stderr, flush=True)
            return complete[-1]
        raise CheckpointError(f"{self.dir}: " + (f"'latest' names {named!r} but " if named else "")
                              + f"none of the checkpoints {tags} is complete; refusing to restart from step 0 "
                              f"over them (move or delete {self.dir} to start a new run)")

    def _set_aside(self, keep: str | None) -> None:
        """Partial tags (a save that was preempted or killed) are renamed `partial-<tag>`: never
        resumed, never counted by rotation, never saved into (the next save of that step
        starts from an empty directory), and removed by the next rotation."""
        tags = self._tags()
        if not any(_complete(self.dir / t) for t in tags) and (self.dir / "latest").is_file():
            return  # a run from before the markers: nothing to tell apart
        for tag in tags:
            if tag != keep and not _complete(self.dir / tag):
                aside = self.dir / f"partial-{tag}"
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(self.dir / tag, aside)
                print(f"[checkpoint] {tag} is incomplete (a save that did not finish): moved to {aside.name}",
                      file=sys.stderr, flush=True)

    def resume_tag(self) -> str | None:
        """`latest()` as rank 0 sees it, picked once and broadcast: `reshape()` and `load()`
        resume the same checkpoint on every rank (and a fallback warning is printed once)."""
        if self._picked is None:
            pick, error = (None, None), None
            if self.rank == 0 or not _dist():
                try:
                    tag = self.latest()
                    if self.rank == 0:
                        self._set_aside(tag)
                    pick = (tag, self._saved_world(tag) if tag else None)
                except CheckpointError as e:
                    error = str(e)
                except Exception as e:  # noqa: BLE001 — an unreadable marker, a failed rename: tell every rank
                    error = f"{self.dir}: cannot pick the checkpoint to resume: {type(e).__name__}: {e}"
            pick, error = _from_rank0((pick, error))
            if error:
                raise CheckpointError(error)
            self._picked = pick
        return self._picked[0]

    def has(self, step: int) -> bool:
        """Whether this run resumed from or wrote the checkpoint of `step` (no directory scan,
        so no second fallback warning)."""
        tag = f"step{step:08d}"
        return tag == self._saved or (self._picked is not None and tag == self._picked[0])

    def save(self, engine, step: int, client_state: dict) -> str:
        tag = f"step{step:08d}"
        verdict = None   # rank 0's view of the directory decides for every rank
        if self.rank == 0:
            if _complete(self.dir / tag):
                verdict = "skip" if self.has(step) else (
                    f"{self.dir / tag} exists and is complete, but this run neither resumed from nor wrote it; "
                    f"refusing to overwrite it (is another run using {self.dir.parent}?)")
            elif (self.dir / tag).exists():
                # a save into a tag directory that exists (a partial save of this step) starts
                # empty: stale zero_pp_rank_* files of a larger world would be globbed by ds_to_universal
                shutil.rmtree(self.dir / tag)
        verdict = _from_rank0(verdict)
        if verdict == "skip":
            return tag  # resumed from (or wrote) this very step: nothing new, and never destroy it
        if verdict:
            raise CheckpointError(verdict)
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(_rng_state(), self.dir / tag / f"rng_rank{self.rank}.pt")
        _barrier()  # every rank's shards are on disk before the marker and the pointer
        if self.rank == 0:
            (self.dir / tag / "complete").write_text(json.dumps({"step": step, "world_size": self.world}))
            tmp = self.dir / "latest.tmp"
            tmp.write_text(tag)
            os.replace(tmp, self.dir / "latest")
            self.rotate(tag)
        _barrier()
        self._saved = tag
        return tag

    def rotate(self, written: str) -> None:
        """Keep the newest `keep` complete checkpoints (always the one just written); remove
        the older complete ones and the partial saves set aside. Incomplete `step*` tags are
        not counted and not touched."""
        complete = [t for t in self._tags() if _complete(self.dir / t)]
        kept = set(complete[-self.keep:]) | {written}
        for old in complete:
            if old not in kept:
                shutil.rmtree(self.dir / old, ignore_errors=True)
        for aside in self.dir.glob("partial-step*"):
            shutil.rmtree(aside, ignore_errors=True)

    def _saved_world(self, tag: str) -> int:
        d = self.dir / tag
        return json.loads((d / "complete").read_text()).get("world_size", self.world) \
            if _complete(d) else self.world

    def saved_world(self) -> int | None:
        """The world size that wrote the checkpoint to resume (rank 0's reading, broadcast)."""
        self.resume_tag()
        return self._picked[1]

    def reshape(self) -> bool:
        """Before the engine exists (every rank): True when the checkpoint to resume was written
        by another number of ranks. Rank 0 then converts it once into DeepSpeed's universal
        form (<tag>/universal, ds_to_universal), which the engine must load with
        `checkpoint.load_universal` to re-partition the optimizer state."""
        tag = self.resume_tag()
        if tag is None or self.saved_world() == self.world:
            return False
        out = self.dir / tag / "universal"
        error = None
        if self.rank == 0 and not (out / "mp_rank_00_model_states.pt").is_file():
            tmp = self.dir / tag / "universal.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"[checkpoint] {tag} was written by {self.saved_world()} rank(s), this run has "
                  f"{self.world}: converting it to DeepSpeed's universal form", flush=True)
            p = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                                str(self.dir / tag), "--output_folder", str(tmp), "--num_extract_workers", "1",
                                "--num_merge_workers", "1"], capture_output=True, text=True)
            if p.returncode != 0:
                error = f"converting {self.dir / tag} for {self.world} rank(s) failed: " \
                        + (p.stderr or p.stdout)[-2000:]
            else:
                os.replace(tmp, out)
        error = _from_rank0(error)  # every rank fails together, none waits forever
        if error:
            raise CheckpointError(error)
        return True

    def load(self, engine) -> dict | None:
        """Restore the checkpoint `resume_tag()` picks into `engine`; returns its client state plus
        `tag` and `saved_world`. Written by another number of ranks (see `reshape`): loaded
        from its universal form, and the RNG states are not restored (there is none for a new
        rank; the caller seeds them)."""
        tag = self.resume_tag()
        if tag is None:
            return None
        rng = self.dir / tag / f"rng_rank{self.rank}.pt"
        world, saved_world = self.world, self.saved_world()
        if saved_world == world and not rng.is_file():
            raise CheckpointError(f"{rng} is missing: {tag} was written by {saved_world} rank(s) like this "
                                  f"run, and each must have saved its RNG state")
        where, name = (self.dir, tag) if saved_world == world else (self.dir / tag, "universal")
        path, client = engine.load_checkpoint(str(where), tag=name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"cannot load checkpoint {where / name}")
        if saved_world == world:
            _set_rng_state(torch.load(rng, weights_only=False))
        return {**(client or {}), "tag": tag, "saved_world": saved_world}
