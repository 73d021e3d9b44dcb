"""One run per output directory: an exclusive `fcntl` lock on `<run>/.lock`, held by rank 0 for
the life of the run.

Re-running the same command is how a run resumes, so two runs on one directory are one typo
(or one orphaned torchrun worker) away; they would race on checkpoints and the `latest`
pointer. The lock file records who holds it (host, pid, start time, command) and a heartbeat
the holder rewrites every HEARTBEAT_S seconds. The kernel drops a lock with its process, so a
run that died (kill -9, OOM, node reboot) never blocks the next one on the same host: its
record is still in the file, and the next run takes over with a warning.

Where file locks are node-local (NFS `local_lock`, Lustre `localflock`, BeeGFS) a job on
another host gets the lock although the holder lives: a record from another host is
therefore only taken over once its heartbeat is stale: older than STALE_S by the wall clock
(hosts' clocks are assumed NTP-synced to well within STALE_S), or not moving while we watch
it for WATCH_S (our own clock; the file is reopened for every look, so an NFS client's
attribute cache — acregmax, 60 s by default — cannot make a live heartbeat look frozen).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

HEARTBEAT_S = float(os.environ.get("LIGHTMBERT_LOCK_HEARTBEAT_S", 15))
STALE_S = 20 * HEARTBEAT_S   # a record whose heartbeat is this old is stale at once
WATCH_S = max(2 * HEARTBEAT_S + 1, 65.0)   # how long a fresh-looking heartbeat is watched


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
        if prev and _elsewhere(prev) and _beating(self.path, prev):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunLocked(f"run.output_dir {self.path.parent} is in use by a run on another host "
                            f"({_describe(prev)}): its heartbeat is fresh (the file lock is node-local on this "
                            f"filesystem); stop that run first, or choose another run.output_dir")
        if prev:
            print(f"[distill] warning: taking over {self.path}: the run that held it did not exit "
                  f"cleanly ({_describe(prev)})", file=sys.stderr, flush=True)
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
        self.fd = fd
        os.ftruncate(fd, 0)   # the previous holder's record may be longer than ours
        self._size = len(self._record()) + 64   # every beat writes this many bytes: no stale tail
        self._beat()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="runlock-heartbeat", daemon=True)
        self._thread.start()

    def _record(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": time.time()}).encode()

    def _beat(self) -> None:
        # one fixed-size write (no truncate between: a reader never sees an empty file)
        os.pwrite(self.fd, self._record().ljust(self._size), 0)
        os.fsync(self.fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except OSError as e:  # a full or vanished filesystem must not kill the run
                print(f"[distill] warning: lock heartbeat: {e}", file=sys.stderr, flush=True)

    def release(self) -> None:
        """A clean exit: the record is cleared (no warning for the next run), then unlocked."""
        if self.fd is None:
            return
        self._stop.set()
        self._thread.join()
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _elsewhere(record: str) -> bool:
    try:
        return json.loads(record).get("host") != socket.gethostname()
    except ValueError:
        return False


def _beating(path: Path, record: str) -> bool:
    """Whether the holder of `record` (on another host) is alive: a heartbeat newer than
    STALE_S, that then moves while we watch for WATCH_S."""
    first = json.loads(record).get("heartbeat")
    if first is None or time.time() - first > STALE_S:
        return False
    print(f"[distill] {path} is held by a run on another host with a recent heartbeat; watching it for "
          f"up to {WATCH_S:.0f} s", file=sys.stderr, flush=True)
    deadline = time.monotonic() + WATCH_S
    while time.monotonic() < deadline:
        time.sleep(min(1.0, HEARTBEAT_S / 4))
        try:
            with open(path, "rb") as f:   # a fresh open: NFS revalidates (close-to-open)
                now = json.loads(f.read(1 << 16).decode(errors="replace").strip() or "{}").get("heartbeat")
        except (OSError, ValueError):
            continue
        if now is None:      # cleared: it exited cleanly meanwhile
            return False
        if now != first:
            return True
    return False


def _describe(record: str) -> str:
    try:
        r = json.loads(record)
    except ValueError:
        return f"lock record {record[:200]!r}"
    here = r.get("host") == socket.gethostname()
    state = ("alive" if _alive(int(r["pid"])) else "dead") if here else "on another host"
    beat = f", last heartbeat {time.time() - r['heartbeat']:.0f} s ago" if "heartbeat" in r else ""
    return (f"pid {r.get('pid')} on {r.get('host')} ({state}{beat}), started {r.get('started')}: "
            f"{r.get('command') or '?'}")


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
        except Exception as e:  # noqa: BLE001 — e.g. an unwritable run folder: every rank must hear of it
            error = f"cannot lock {lock.path}: {type(e).__name__}: {e}"
    ok = torch.tensor([0.0 if error else 1.0], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        raise RunLocked(error or f"run.output_dir {run_dir} is in use by another run (see rank 0)")
    return lock
