"""Resume on another job shape under torchrun (CPU, gloo): a requeue on fewer or more ranks
continues the epoch with every sample used exactly once (2 → 1 → 2 ranks, workers and
micro-batch changed too), and the weights come back exactly (ZeRO-2 and ZeRO-3, through
DeepSpeed's universal checkpoint)."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightmbert.data_prep.manifest import read_manifest
from tests.helpers import finish, launch, trace

LANGS = ["de", "el"]


@pytest.mark.slow
def test_resume_2_to_1_to_2_ranks_uses_every_sample_once_per_epoch(shards, tmp_path):
    out = tmp_path / "run"
    common = [f"--data.languages=[{', '.join(LANGS)}]", "--run.save_interval=10", "--run.export=false",
              "--run.log_interval=10"]
    jobs = [(2, ["--run.max_steps=10", "--data.micro_batch_size=16"]),
            (1, ["--run.max_steps=40", "--data.micro_batch_size=16", "--data.num_workers=2"]),
            (2, ["--run.max_steps=90", "--data.micro_batch_size=12", "--engine.grad_accum=2"])]
    logs = []
    for nproc, extra in jobs:
        code, log = finish(launch("torchrun", out, shards, *common, *extra, nproc=nproc), timeout=600)
        assert code == 0, log[-3000:]
        logs.append(log)
    assert "elastic resume from 2 rank(s) × 1 worker(s)" in logs[1]
    assert "elastic resume from 1 rank(s) × 2 worker(s)" in logs[2]
    records = trace(out, 0) + trace(out, 1)
    assert sorted(r["step"] for r in records) == sorted([*range(1, 11)] * 2 + [*range(11, 41)] + [*range(41, 91)] * 2)
    uses = Counter(tuple(row) for r in records for row in r["rows"])
    m = read_manifest(shards)
    for li, lang in enumerate(LANGS):
        n = sum(s["samples"] for s in m["languages"][lang]["shards"])
        epoch0 = Counter({sid: k for (l2, e, sid), k in uses.items() if l2 == li and e == 0})
        assert sorted(epoch0) == list(range(n)), f"{lang}: {n - len(epoch0)} samples of epoch 0 never used"
        assert max(epoch0.values()) == 1, f"{lang}: samples used twice in epoch 0: " \
            f"{[s for s, k in epoch0.items() if k > 1][:10]}"
        later = [k for (l2, e, _), k in uses.items() if l2 == li and e > 0]
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
