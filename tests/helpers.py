"""Helpers shared by the test modules (the fixtures that use them live in conftest.py):
launching the distiller under torchrun / the deepspeed launcher / one process, reading its
per-step trace, killing a process tree, and taking batches from a stream."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = "configs/distill/tiny_cpu.yaml"


def env():
    return dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def launch(launcher, out, shards, *overrides, nproc=2, **kw):
    args = ["lightmbert.trainer.distill", "--config", CONFIG, f"--data.shards={shards}",
            f"--run.output_dir={out}", "--run.trace=true", *overrides]
    if launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(_port()),
               "-m", *args]
    elif launcher == "deepspeed":
        cmd = [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(_port()),
               "--module", *args]
    else:
        cmd = [sys.executable, "-m", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(p, timeout=600):
    log = p.communicate(timeout=timeout)[0]
    return p.returncode, log


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun puts workers in new sessions, so a
    process-group kill would miss them; a Slurm job's cgroup kill does not)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def trace(out, rank=0):
    return [json.loads(line) for line in open(Path(out) / f"trace_rank{rank}.jsonl")]


def take(ds, n):
    """The first n items of an iterable stream."""
    return list(itertools.islice(iter(ds), n))
