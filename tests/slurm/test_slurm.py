"""The Slurm templates on a REAL local Slurm (two nodes on this machine, see cluster.py):
a 2-node distillation job, preemption → checkpoint → requeue → exact resume, and the data
prep job array. Skipped with a message where Slurm cannot run (not root, no apt)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text
from tests.slurm.cluster import Cluster, SlurmUnavailable

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no local Slurm here: {e}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lightmbert.configs import PrepConfig, load
    from lightmbert.data_prep.shard import run
    d = tmp_path_factory.mktemp("slurmdata")
    tok = make_tokenizer(d / "tok")
    for i, lang in enumerate(WORDS):
        for j in range(2):
            write_text(d / "text" / lang / f"f{j}.txt", random_documents(lang, 150, seed=10 * i + j))
    cfg = d / "prep.yaml"
    cfg.write_text(f"# python -m lightmbert.data_prep.shard --config {cfg}\ninput: {{directory: {d}/text}}\n"
                   f"tokenizer: {{name_or_path: {tok}}}\npacking: {{seq_len: 32}}\n"
                   f"output: {{dir: {d}/shards, shard_samples: 100}}\n")
    run(load(PrepConfig, cfg, ["--workers=1"]))
    return d


ENV = {"LIGHTMBERT_REPO": str(REPO), "LIGHTMBERT_PYTHON": sys.executable, "DS_ACCELERATOR": "cpu",
       "OMP_NUM_THREADS": "1"}


def submit_distill(cluster, data, out: Path) -> str:
    return cluster.sbatch(["-N2", "--gpus-per-node=1", "--cpus-per-task=1", "--time=15",
                           f"--output={out}.log", str(REPO / "slurm" / "distill.sh"),
                           "configs/distill/tiny_cpu.yaml", f"--data.shards={data}/shards",
                           f"--run.output_dir={out}", f"--run.max_steps={STEPS}", "--run.save_interval=10",
                           "--run.trace=true", "--run.log_interval=5"], env=ENV, cwd=REPO)


def trace(out: Path, rank=0) -> list[dict]:
    p = out / f"trace_rank{rank}.jsonl"
    return [json.loads(line) for line in open(p)] if p.exists() else []


@pytest.fixture(scope="module")
def reference_run(cluster, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    job = submit_distill(cluster, data, out)
    info = cluster.wait(job, 600)
    return out, job, info


def test_two_node_job_completes(reference_run):
    out, job, info = reference_run
    log = Path(f"{out}.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "node 0 " in log and "node 1 " in log and "2 nodes × 1 processes" in log
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    assert [r["step"] for r in trace(out)] == list(range(1, STEPS + 1))
    assert trace(out, 1), "rank 1 (the second node) did not train"
    assert (out / "checkpoints" / "latest").read_text() == f"step{STEPS:08d}"
    assert (out / "student" / "config.json").is_file() and (out / "tensorboard").is_dir()


def test_preemption_checkpoints_requeues_and_resumes_exactly(cluster, data, reference_run, tmp_path):
    ref_out, _, _ = reference_run
    out = tmp_path / "run"
    job = submit_distill(cluster, data, out)
    deadline = time.time() + 300
    while time.time() < deadline and len(trace(out)) < 12:  # past the step-10 checkpoint
        time.sleep(0.2)
    assert len(trace(out)) >= 12, cluster.job(job)
    cluster.run(["scancel", "--signal=USR1", "--batch", job])   # what --signal=B:USR1@N sends
    deadline = time.time() + 600
    while time.time() < deadline:
        info = cluster.job(job)
        if info.get("JobState") == "PENDING" and int(info.get("Restarts", 0)) >= 1:
            cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
        if info.get("JobState") == "COMPLETED":
            break
        time.sleep(1)
    log = Path(f"{out}.log").read_text()
    assert info.get("JobState") == "COMPLETED" and int(info.get("Restarts", 0)) == 1, (info, log[-4000:])
    assert "USR1 received: asking the trainer to checkpoint" in log
    assert "requeueing job" in log and "restart 1:" in log
    resumed_from = [line for line in log.splitlines() if "resumed from step" in line]
    assert resumed_from and "step00000000" not in resumed_from[0], log[-3000:]
    ref, got = trace(ref_out), trace(out)
    assert got[-1]["step"] == STEPS and got[-1] == ref[-1]      # same final step, same exact loss
    assert [r for r in got if r["step"] == STEPS] == [ref[-1]]


def test_prep_array_equals_single_run(cluster, data, tmp_path):
    cfg = data / "prep.yaml"
    out = tmp_path / "shards"
    job = cluster.sbatch(["--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/prep-%A_%a.out",
                          str(REPO / "slurm" / "prep.sh"), str(cfg), f"--output.dir={out}"], env=ENV, cwd=REPO)
    deadline = time.time() + 600
    while time.time() < deadline:
        left = cluster.run(["squeue", "-h", "-o", "%i %j %T %r"]).stdout.strip()
        if not left:
            break
        if "DependencyNeverSatisfied" in left:  # an array task failed: say which and why
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.out")))
            pytest.fail(f"{left}\n{logs}")
        time.sleep(1)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert not left and (out / "manifest.json").is_file(), logs[-4000:]
    assert "verified: every shard present, hashes and counts match" in logs
    assert sum("tokenised" in line and "units" in line for line in logs.splitlines()) == 3
    single = data / "shards"
    assert (out / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    for shard in sorted(single.rglob("*.tar")):
        assert (out / shard.relative_to(single)).read_bytes() == shard.read_bytes()
    assert job and not list(REPO.glob("lightmbert-prep*.out"))
