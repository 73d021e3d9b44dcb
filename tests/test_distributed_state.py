"""The trainer's distributed state (CPU, gloo): per-rank dropout, a ZeRO-3 that really
partitions, checkpoints that cannot lose progress, one run per output directory, workers that
stop when their launcher dies, cleanup on every exit path, and documented TensorBoard tags."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CONFIG, REPO, env, finish, launch, trace


# ---------------------------------------------------------------------------- checkpoints
def make_ckpt(root: Path, step: int, complete=True, rng=True, world=1):
    d = root / "checkpoints" / f"step{step:08d}"
    d.mkdir(parents=True)
    if rng:
        (d / "rng_rank0.pt").write_bytes(b"x")
    if complete:
        (d / "complete").write_text(json.dumps({"step": step, "world_size": world}))
    return d


def pointer(root: Path, step: int):
    (root / "checkpoints" / "latest").write_text(f"step{step:08d}")


def test_latest_pointer_to_a_missing_or_partial_checkpoint_falls_back(tmp_path, capsys):
    from lightmbert.trainer.checkpoint import Checkpointer
    ck = Checkpointer(tmp_path, 2, 0)
    assert ck.latest() is None                               # a fresh run
    make_ckpt(tmp_path, 10)
    make_ckpt(tmp_path, 20, complete=False)                  # killed while writing
    pointer(tmp_path, 20)
    assert ck.latest() == "step00000010"
    assert "names step00000020, which is incomplete" in capsys.readouterr().err
    pointer(tmp_path, 30)                                    # names a deleted checkpoint
    assert ck.latest() == "step00000010"
    assert "which is missing" in capsys.readouterr().err
    pointer(tmp_path, 10)
    assert ck.latest() == "step00000010" and not capsys.readouterr().err


def test_checkpoints_without_a_complete_one_are_an_error_not_step_0(tmp_path, capsys):
    from lightmbert.trainer.checkpoint import CheckpointError, Checkpointer
    make_ckpt(tmp_path, 10, complete=False, rng=False)
    # no pointer: no save of the run ever finished (its first one was cut short) → step 0, loudly
    assert Checkpointer(tmp_path, 2, 0).latest() is None
    assert "no save of this run ever finished" in capsys.readouterr().err
    pointer(tmp_path, 10)
    with pytest.raises(CheckpointError, match=r"none of the checkpoints \['step00000010'\] is complete"):
        Checkpointer(tmp_path, 2, 0).latest()
    pointer(tmp_path, 30)
    with pytest.raises(CheckpointError, match="'latest' names 'step00000030'"):
        Checkpointer(tmp_path, 2, 0).latest()


def test_checkpoints_from_before_the_marker_still_resume(tmp_path):
    from lightmbert.trainer.checkpoint import Checkpointer
    make_ckpt(tmp_path, 10, complete=False)                  # old layout: pointer moved when complete
    pointer(tmp_path, 10)
    assert Checkpointer(tmp_path, 2, 0).latest() == "step00000010"


def test_missing_rng_file_of_a_rank_is_an_error(tmp_path, monkeypatch):
    from lightmbert.trainer import checkpoint as C
    make_ckpt(tmp_path, 10, world=2)
    pointer(tmp_path, 10)
    with pytest.raises(C.CheckpointError, match=r"rng_rank1.pt is missing: step00000010 was written by 2 rank"):
        C.Checkpointer(tmp_path, 2, 1, world=2).load(engine=None)


# ---------------------------------------------------------------------------- run lock
def test_lock_names_the_holder_and_takes_over_from_a_dead_one(tmp_path, capsys):
    from lightmbert.trainer.runlock import RunLock, RunLocked
    a = RunLock(tmp_path)
    a.acquire("python -m lightmbert.trainer.distill A")
    code = f"from lightmbert.trainer.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire('B')"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr and "(alive, last heartbeat" in r.stderr
    assert "is in use by another run" in r.stderr and "lightmbert.trainer.distill A" in r.stderr
    a.release()
    assert (tmp_path / ".lock").read_text() == ""            # a clean exit leaves no record
    # a run that died holding it: the kernel dropped the lock, its record stays → take over, loudly
    dead = subprocess.run([sys.executable, "-c", code.replace("'B')", "'dies')") + "; import os; os._exit(0)"],
                          cwd=REPO, capture_output=True, text=True)
    assert dead.returncode == 0 and '"command": "dies"' in (tmp_path / ".lock").read_text()
    b = RunLock(tmp_path)
    b.acquire("C")
    assert "taking over" in capsys.readouterr().err
    with pytest.raises(RunLocked):  # a second holder in this very process is refused too
        RunLock(tmp_path).acquire("D")
    b.release()


@pytest.mark.slow
def test_second_run_on_the_same_directory_fails_at_once(shards, tmp_path):
    out = tmp_path / "run"
    first = launch("python", out, shards, "--run.max_steps=100000", "--run.save_interval=0", nproc=1)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not ((out / "trace_rank0.jsonl").exists() and len(trace(out)) >= 2):
            time.sleep(0.1)
        t0 = time.time()
        code, log = finish(launch("torchrun", out, shards, "--run.max_steps=5"), timeout=300)
        assert code != 0 and "is in use by another run" in log and f"pid {first.pid}" in log, log[-3000:]
        assert time.time() - t0 < 120
        assert first.poll() is None, "the first run must not be disturbed"
    finally:
        first.send_signal(signal.SIGTERM)
        code, log = finish(first, 300)
    assert code == 75, log[-2000:]


@pytest.mark.slow
def test_workers_stop_when_their_launcher_is_killed(shards, tmp_path):
    """kill -9 of torchrun alone: the workers (in their own sessions) checkpoint at the next
    step and exit instead of training on; the same command then resumes."""
    out = tmp_path / "run"
    p = launch("torchrun", out, shards, "--run.max_steps=100000", "--run.save_interval=0", start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "trace_rank0.jsonl").exists() and len(trace(out)) >= 3):
        time.sleep(0.1)
    workers = [int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                              text=True).stdout.split()]
    assert len(workers) == 2, workers
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 120
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()]
    for w in alive:  # (clean up before failing)
        os.kill(w, signal.SIGKILL)
    assert not alive, "workers kept training after their launcher died"
    tag = (out / "checkpoints" / "latest").read_text()
    assert tag == f"step{trace(out)[-1]['step']:08d}" and (out / "checkpoints" / tag / "complete").is_file()
    code, log = finish(launch("torchrun", out, shards, f"--run.max_steps={trace(out)[-1]['step'] + 2}"))
    assert code == 0 and f"resumed from {tag}" in log, log[-3000:]


# ---------------------------------------------------------------------------- RNG, ZeRO-3, exits
DRIVER = """
import hashlib, json, os, sys, torch
import torch.nn.functional as F
seen, orig = [], F.dropout
def dropout(x, p=0.5, training=True, inplace=False):
    out = orig(x, p, training, inplace)
    if training and p > 0 and len(seen) < 4:   # the masks of the first calls, as a hash
        seen.append(hashlib.sha256((out == 0).cpu().numpy().tobytes()).hexdigest()[:16])
    return out
F.dropout = dropout
import lightmbert.trainer.distiller as D
orig_init = D.Distiller.__init__
def init(self, *a, **k):
    orig_init(self, *a, **k)
    st = self.module.student
    rec = {"rank": self.rank, "partitioned": [(int(getattr(p, "ds_numel", p.numel())), int(p.numel()),
           int(getattr(p, "ds_tensor", p).numel())) for p in st.parameters()],
           "flops": D.flops_per_token(self.teacher, st)[0]}
    json.dump(rec, open(os.path.join(self.cfg.run.output_dir, f"init_rank{self.rank}.json"), "w"))
D.Distiller.__init__ = init
orig_step = D.Distiller.train_step
def step(self, it):
    out = orig_step(self, it)
    if self.step == 2:
        json.dump(seen, open(os.path.join(self.cfg.run.output_dir, f"masks_rank{self.rank}.json"), "w"))
    if self.step == FAIL_AT and self.rank == 1:
        raise RuntimeError("injected failure on rank 1")
    return out
D.Distiller.train_step = step
from lightmbert.trainer.distill import main
sys.exit(main(sys.argv[1:]))
"""


def drive(out, shards, *extra, fail_at=-1, nproc=2, timeout=600):
    code = DRIVER.replace("FAIL_AT", str(fail_at))
    drv = out.parent / f"driver_{out.name}.py"
    drv.write_text(code)
    from tests.helpers import _port
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(nproc), "--master_port",
           str(_port()), str(drv), "--config", CONFIG, f"--data.shards={shards}", f"--run.output_dir={out}",
           "--run.trace=true", *extra]
    p = subprocess.run(cmd, cwd=REPO, env=dict(env(), PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.slow
def test_dropout_masks_differ_between_ranks_and_resume_exactly(shards, tmp_path):
    a = tmp_path / "a"
    code, log = drive(a, shards, "--student.dropout=0.1", "--run.max_steps=6", "--run.save_interval=3",
                      "--run.export=false")
    assert code == 0, log[-3000:]
    m0, m1 = (json.loads((a / f"masks_rank{r}.json").read_text()) for r in (0, 1))
    assert len(m0) == 4 and m0 != m1, "both ranks drew the same dropout masks"
    # a resume from step 3 continues every rank's own dropout stream: identical losses
    b = tmp_path / "b"
    code, log = drive(b, shards, "--student.dropout=0.1", "--run.max_steps=3", "--run.save_interval=3",
                      "--run.export=false")
    assert code == 0, log[-3000:]
    code, log = drive(b, shards, "--student.dropout=0.1", "--run.max_steps=6", "--run.save_interval=3",
                      "--run.export=false")
    assert code == 0 and "resumed from step00000003" in log, log[-3000:]
    for r in (0, 1):
        assert trace(b, r)[-3:] == trace(a, r)[-3:], f"rank {r}"


@pytest.mark.slow
def test_zero3_really_partitions_and_counts_full_flops(shards, tmp_path):
    out = tmp_path / "z3"
    code, log = drive(out, shards, "--engine.zero_stage=3", "--engine.param_persistence_threshold=0",
                      "--run.max_steps=4", "--run.log_interval=1")
    assert code == 0, log[-3000:]
    recs = [json.loads((out / f"init_rank{r}.json").read_text()) for r in (0, 1)]
    parts = recs[0]["partitioned"]
    trainable = [x for x in parts if x[0] > 1000]
    assert trainable and all(numel == 0 for _, numel, _ in trainable), "parameters are not partitioned"
    assert sum(shard for _, _, shard in parts) < 0.6 * sum(full for full, _, _ in parts)   # ~1/2 each
    # MFU counts the full model, not this rank's partition
    from lightmbert.configs import DistillConfig, load
    from lightmbert.trainer.models import build_student, load_teacher, non_embedding_params
    import torch
    cfg = load(DistillConfig, out / "config.yaml")
    teacher = load_teacher(cfg.teacher, False, torch.device("cpu"), torch.float32, 0)
    student, _ = build_student(teacher, cfg.student, 0)
    assert recs[0]["flops"] == recs[1]["flops"] == 2 * non_embedding_params(teacher) + 6 * non_embedding_params(student)
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("key", ["--loss.mlm_weight=0.5", "--loss.logit_weight=1.0"])
def test_zero3_with_the_mlm_head_fails_before_any_collective(shards, tmp_path, key):
    t0 = time.time()
    code, log = finish(launch("torchrun", tmp_path / "x", shards, "--engine.zero_stage=3", key), timeout=300)
    assert code != 0 and f"loss.{key[7:].split('=')[0]} with engine.zero_stage=3 is not supported" in log, log[-2000:]
    assert time.time() - t0 < 120


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_and_everything_is_closed(shards, tmp_path):
    out = tmp_path / "fail"
    t0 = time.time()
    code, log = drive(out, shards, "--run.max_steps=50", "--run.log_interval=1", fail_at=3, timeout=300)
    assert code != 0 and "injected failure on rank 1" in log, log[-3000:]
    assert time.time() - t0 < 200
    assert (out / ".lock").read_text() == "", "rank 0 must release the run lock on its way out"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    assert [e.step for e in ev.Scalars("loss/total")][:2] == [1, 2]


# ---------------------------------------------------------------------------- docs = code
def readme_tags() -> set[str]:
    """Every TensorBoard tag the README's metrics bullet names (braces expanded)."""
    text = (REPO / "README.md").read_text()
    bullet = text[text.index("* **Metrics** (rank 0)"):]
    bullet = bullet[:bullet.index("\n* **")]
    tags = set()
    for tok in re.findall(r"`([a-z_]+(?:/[a-z_{},<>]+)*)`", bullet):
        m = re.match(r"(.*)\{(.*)\}(.*)", tok)
        tags |= {m.group(1) + x + m.group(3) for x in m.group(2).split(",")} if m else {tok}
    return {t for t in tags if "/" in t or t in ("lr", "grad_norm")}


@pytest.mark.slow
def test_every_tensorboard_tag_in_the_readme_exists(shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tests.test_live_eval import write_pairs
    pairs = write_pairs(tmp_path / "heldout.jsonl")
    out = tmp_path / "tags"
    code, log = finish(launch("torchrun", out, shards, "--run.max_steps=4", "--run.log_interval=1",
                              "--loss.logit_weight=1.0", "--loss.mlm_weight=0.5", "--loss.embedding_weight=0.1",
                              "--student.freeze_embeddings=false", "--loss.pooled_weight=0.5",
                              "--loss.relation_weight=0.5", f"--eval.pairs={pairs}", "--eval.interval=2",
                              f"--eval.sets.ood.pairs={pairs}"))  # for `eval/<name>/...`
    assert code == 0, log[-3000:]
    ev = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ev.Reload()
    have = set(ev.Tags()["scalars"])
    gpu_only = {"memory/gpu_peak_gib", "perf/mfu"}
    want = readme_tags()
    assert "data/skipped_batches" in want and "eval/retrieval/mean" in want, want
    missing = {t.replace("<lang>", "de").replace("<name>", "ood") for t in want - gpu_only} - have
    assert not missing, f"README names tags no run writes: {sorted(missing)} (have {sorted(have)})"


@pytest.mark.slow
def test_partial_latest_checkpoint_falls_back_under_torchrun(shards, tmp_path):
    """2 ranks: the newest checkpoint lost its marker (a crash while writing) → the rerun
    resumes from the one before, with a warning, and reaches the same losses; a lost per-rank
    RNG file is an error naming it."""
    out = tmp_path / "run"
    common = ["--run.save_interval=3", "--run.export=false", "--run.keep_checkpoints=3"]
    code, log = finish(launch("torchrun", out, shards, "--run.max_steps=6", *common))
    assert code == 0, log[-3000:]
    full = {r: trace(out, r) for r in (0, 1)}
    (out / "checkpoints" / "step00000006" / "complete").unlink()
    for r in (0, 1):  # forget what the lost steps wrote, so the rerun's trace can be compared
        lines = (out / f"trace_rank{r}.jsonl").read_text().splitlines()[:3]
        (out / f"trace_rank{r}.jsonl").write_text("\n".join(lines) + "\n")
    code, log = finish(launch("torchrun", out, shards, "--run.max_steps=6", *common))
    assert code == 0 and "which is incomplete" in log and "resumed from step00000003" in log, log[-3000:]
    # once: rank 0 picks the checkpoint (and sets the partial one aside) for every rank
    assert log.count("names step00000006, which is incomplete") == 1, log[-3000:]
    assert "step00000006 is incomplete (a save that did not finish): moved to partial-step00000006" in log
    for r in (0, 1):
        assert trace(out, r) == full[r], f"rank {r}: the resumed run differs"
    (out / "checkpoints" / "step00000006" / "rng_rank1.pt").unlink()
    code, log = finish(launch("torchrun", out, shards, "--run.max_steps=8", *common))
    assert code != 0 and "rng_rank1.pt is missing" in log, log[-3000:]
