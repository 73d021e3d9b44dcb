"""The benchmark scripts run (tiny shapes): they are run by hand, so CI keeps them working."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_kernels_tiny(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_kernels", "--tiny", "--out", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_kernels_tiny.csv")))
    ops = {(row["op"], row["provider"]) for row in rows}
    for op in ("attention_score_mse", "attention_prob_kl", "attention_map_mse", "hidden_mse", "fused_linear_kl"):
        assert (op, "eager") in ops and (op, "ours") in ops
    assert all(float(row["ms"]) > 0 for row in rows)


@pytest.mark.slow
def test_bench_data_prep_small(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_data_prep", "--mb-per-lang", "0.2",
                        "--procs", "1", "2", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_data_prep.csv")))
    assert [row["procs"] for row in rows] == ["1", "2"]
    assert all(int(row["tokens"]) > 0 and float(row["stage_vs_bare"]) > 0 for row in rows)


@pytest.mark.slow
def test_bench_step_small(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_step", "--steps", "3", "--warmup", "1",
                        "--batch", "4", "--out", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(csv.DictReader(open(tmp_path / "bench_step.csv")))
    assert float(row["ours_tok_s"]) > 0 and float(row["bare_tok_s"]) > 0
