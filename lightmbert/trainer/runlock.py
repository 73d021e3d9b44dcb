"""One run per output directory: an exclusive `fcntl` lock on `<run>/.lock`, held by rank 0 for
the life of the run.

Re-running the same command is how a run resumes, so two runs on one directory are one typo
(or one orphaned torchrun worker) away; they would race on checkpoints and the `latest`
pointer. The lock file records who holds it (host, pid, start time, command). The kernel
drops a lock with its process, so a run that died (kill -9, OOM, node reboot) never blocks the
next one: its record is still in the file, and the next run takes over with a warning.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path


class RunLocked(RuntimeError):
    """Another live run holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self, command: str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunLocked(f"run.output_dir {self.path.parent} is in use by another run ({_describe(holder)}); "
                            f"stop that run first, or choose another run.output_dir") from None
        except OSError as e:  # a filesystem without flock (some NFS mounts): run unguarded
            print(f"[distill] warning: cannot lock {self.path} ({e}); nothing prevents a second run on "
                  f"this directory", file=sys.stderr, flush=True)
            return
        prev = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
        if prev:
            print(f"[distill] warning: taking over {self.path}: the run that held it did not exit "
                  f"cleanly ({_describe(prev)})", file=sys.stderr, flush=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        """A clean exit: the record is cleared (no warning for the next run), then unlocked."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _describe(record: str) -> str:
    try:
        r = json.loads(record)
    except ValueError:
        return f"lock record {record[:200]!r}"
    here = r.get("host") == socket.gethostname()
    state = ("alive" if _alive(int(r["pid"])) else "dead") if here else "on another host"
    return f"pid {r.get('pid')} on {r.get('host')} ({state}), started {r.get('started')}: {r.get('command') or '?'}"


def lock_on_rank0(run_dir: Path, rank: int, device, command: str) -> RunLock:
    """Rank 0 takes the lock; every rank learns the outcome (one all-reduce) and raises the
    same RunLocked, so no rank trains on while another has stopped."""
    import torch
    import torch.distributed as dist
    lock, error = RunLock(run_dir), ""
    if rank == 0:
        try:
            lock.acquire(command)
        except RunLocked as e:
            error = str(e)
    ok = torch.tensor([0.0 if error else 1.0], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        raise RunLocked(error or f"run.output_dir {run_dir} is in use by another run (see rank 0)")
    return lock
