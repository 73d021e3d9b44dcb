"""A real two-node Slurm cluster on this machine, for the template tests.

Installs Debian's slurmctld/slurmd/slurm-client/munge if missing, writes a slurm.conf for
two nodes (two slurmd on loopback, MULTIPLE_SLURMD), starts munged (unless one already
runs), slurmctld and both slurmd as background processes it owns, waits until both nodes
are idle, and tears everything down by PID (never pkill/killall). Needs root and apt.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MARK = "LIGHTMBERT_SLURM_TEST"  # in the daemons' environment: identifies strays


class SlurmUnavailable(RuntimeError):
    pass


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ensure_installed() -> None:
    if os.geteuid() != 0:
        raise SlurmUnavailable("not root: cannot install or run Slurm daemons")
    need = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None
            and not Path(f"/usr/sbin/{b}").exists()]
    if not need:
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("no apt-get to install slurm-wlm/munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "slurmctld", "slurmd", "slurm-client", "munge"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SlurmUnavailable(f"apt-get install slurm failed: {r.stderr[-500:]}")


class Cluster:
    def __init__(self, root: Path, nodes: int = 2, cpus: int = 2, gpus: int = 2):
        self.root, self.nodes, self.cpus, self.gpus = Path(root).resolve(), nodes, cpus, gpus
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), **{MARK: "1"})

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Cluster":
        ensure_installed()
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave daemons behind
            raise

    def _start(self) -> "Cluster":
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        ctl_port, *node_ports = _free_ports(1 + self.nodes)
        # fake GPUs (so --gpus-per-node works): gres needs real character devices; these are
        # /dev/null's numbers. The CPU torch build ignores the CUDA_VISIBLE_DEVICES Slurm sets.
        gres_lines = []
        for i in range(self.nodes):
            for g in range(self.gpus):
                dev = self.root / "dev" / f"n{i + 1}" / f"nvidia{g}"
                dev.parent.mkdir(parents=True, exist_ok=True)
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
            gres_lines.append(f"NodeName=n{i + 1} Name=gpu File={self.root}/dev/n{i + 1}/nvidia[0-{self.gpus - 1}]")
        (self.root / "gres.conf").write_text("\n".join(gres_lines) + "\n")
        nodes = "\n".join(
            f"NodeName=n{i + 1} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} "
            f"RealMemory=4000 Gres=gpu:{self.gpus} State=UNKNOWN" for i, p in enumerate(node_ports))
        r = self.root
        self.conf.write_text(f"""ClusterName=lmbtest
GresTypes=gpu
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
KillWait=30
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self._start_munge()
        self.procs.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-f", str(self.conf)], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in range(self.nodes):
            self.procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(self.conf), "-N", f"n{i + 1}"],
                                               env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline, states = time.time() + 90, {}
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            if len(states) == self.nodes and all(s == "idle" for s in states.values()):
                return self
            time.sleep(0.5)
        raise SlurmUnavailable(f"nodes not idle after 90 s: {states}; see {r}/log")

    def _start_munge(self) -> None:
        pidfile = Path("/run/munge/munged.pid")
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), 0)
                return  # a munged already runs: use it, it is not ours to stop
            except (ProcessLookupError, ValueError):
                pass
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        self.procs.append(subprocess.Popen(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground"],
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(50):
            if Path("/run/munge/munge.socket.2").exists():
                return
            time.sleep(0.1)

    def stop(self) -> None:
        for job in self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.split():
            self.run(["scancel", job], check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ helpers
    def run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr}")
        return r

    def sbatch(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
        out = self.run(["sbatch", "--parsable", *args], env=env or {}, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict:
        out = self.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait(self, job_id: str, timeout: float = 600, done=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                          "NODE_FAIL", "OUT_OF_MEMORY")) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in done:
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job_id} not done after {timeout}s: {self.job(job_id)}")
