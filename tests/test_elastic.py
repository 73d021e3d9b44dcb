"""Resume on another job shape under torchrun (CPU, gloo): faults in a row — kill -9, a save
killed half-way, a requeue on fewer then more ranks (workers and micro-batch changed too) —
and every sample is still used exactly once per epoch; the weights come back exactly (ZeRO-2 and ZeRO-3, through
DeepSpeed's universal checkpoint)."""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightmbert.data_prep.manifest import read_manifest
from tests.helpers import finish, kill_tree, launch, trace

LANGS = ["de", "el"]


@pytest.mark.slow
def test_faults_in_a_row_kill_partial_save_and_two_resizes(shards, tmp_path):
    """kill -9 after a checkpoint; a save killed half-way (a partial tag with a larger world's
    files); resume on 1 rank × 1 worker (elastic), then on 2 × 2 with another micro-batch and
    grad_accum (elastic again): every sample once per epoch on the trace, padding aside."""
    out = tmp_path / "run"
    common = [f"--data.languages=[{', '.join(LANGS)}]", "--run.save_interval=10", "--run.export=false",
              "--run.log_interval=10"]
    first = ["--data.micro_batch_size=16", "--data.num_workers=2"]
    p = launch("torchrun", out, shards, *common, *first, "--run.max_steps=30", nproc=2)
    deadline = time.time() + 300
    while time.time() < deadline and not (len(trace(out, 0)) >= 13 if (out / "trace_rank0.jsonl").exists() else 0):
        time.sleep(0.05)
    kill_tree(p.pid)
    p.wait()
    assert (out / "checkpoints" / "latest").read_text() == "step00000010"
    for r in (0, 1):  # the killed steps are redone: keep what the checkpoint holds
        lines = (out / f"trace_rank{r}.jsonl").read_text().splitlines()[:10]
        (out / f"trace_rank{r}.jsonl").write_text("\n".join(lines) + "\n")
    partial = out / "checkpoints" / "step00000020"       # a save of 4 ranks killed half-way
    partial.mkdir()
    for r in range(4):
        (partial / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"stale")
    (out / "checkpoints" / "latest").write_text("step00000020")
    jobs = [(1, ["--run.max_steps=40", "--data.micro_batch_size=16", "--data.num_workers=1"]),
            (2, ["--run.max_steps=90", "--data.micro_batch_size=12", "--engine.grad_accum=2",
                 "--data.num_workers=2"])]
    logs = []
    for nproc, extra in jobs:
        code, log = finish(launch("torchrun", out, shards, *common, *extra, nproc=nproc), timeout=600)
        assert code == 0, log[-3000:]
        logs.append(log)
    assert "moved to partial-step00000020" in logs[0] and "resumed from step00000010" in logs[0], logs[0][-3000:]
    assert "elastic resume from 2 rank(s) × 2 worker(s)" in logs[0]
    assert "elastic resume from 1 rank(s) × 1 worker(s)" in logs[1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("partial")) == []
    stale = [f for f in (out / "checkpoints").rglob("zero_pp_rank_*") if f.read_bytes() == b"stale"]
    assert not stale, "the partial save's files must never end up in a checkpoint"
    records = trace(out, 0) + trace(out, 1)
    assert sorted(r["step"] for r in records) == sorted([*range(1, 11)] * 2 + [*range(11, 41)] + [*range(41, 91)] * 2)
    uses = Counter(tuple(row) for r in records for row in r["rows"])
    m = read_manifest(shards)
    for li, lang in enumerate(LANGS):
        n = sum(s["samples"] for s in m["languages"][lang]["shards"])
        epoch0 = Counter({sid: k for (l2, e, sid, wrapped), k in uses.items() if l2 == li and e == 0 and not wrapped})
        assert sorted(epoch0) == list(range(n)), f"{lang}: {n - len(epoch0)} samples of epoch 0 never used"
        assert max(epoch0.values()) == 1, f"{lang}: samples used twice in epoch 0: " \
            f"{[s for s, k in epoch0.items() if k > 1][:10]}"
        later = [k for (l2, e, _, _), k in uses.items() if l2 == li and e > 0]
        assert later and max(later) == 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_weights_survive_a_resume_on_fewer_ranks(shards, tmp_path, stage):
    a, b = tmp_path / "a", tmp_path / "b"
    args = [f"--engine.zero_stage={stage}", "--run.max_steps=4", "--run.save_interval=4"]
    code, log = finish(launch("torchrun", a, shards, *args, nproc=2))
    assert code == 0, log[-3000:]
    shutil.copytree(a / "checkpoints", b / "checkpoints")
    code, log = finish(launch("torchrun", b, shards, *args, nproc=1))   # nothing left to train: export
    assert code == 0, log[-3000:]
    assert "converting it to DeepSpeed's universal form" in log and "resumed from step00000004" in log
    assert json.loads((b / "checkpoints" / "step00000004" / "complete").read_text())["world_size"] == 2

    def weights(run: Path) -> dict:
        from safetensors.torch import load_file
        return load_file(run / "student" / "model.safetensors")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
