"""The benchmark scripts run (tiny shapes): they are run by hand, so CI keeps them working."""
import csv
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_bench_kernels_tiny(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "lightmbert.benchmarks.bench_kernels", "--tiny", "--out", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_kernels_tiny.csv")))
    ops = {(row["op"], row["provider"]) for row in rows}
    for op in ("attention_score_mse", "attention_prob_kl", "attention_map_mse", "hidden_mse", "fused_linear_kl"):
        assert (op, "eager") in ops and (op, "eager_fp32") in ops and (op, "ours") in ops
    try:
        import liger_kernel  # noqa: F401  (the [bench] extra)
        assert ("fused_linear_kl", "liger") in ops
    except ImportError:
        pass
    # every provider agreed with the fp32 reference before it was timed
    assert all(float(row["rel_err"]) <= 1e-4 and float(row["ms"]) > 0 for row in rows), rows
    # --ops / --providers pick a subset
    r = subprocess.run([sys.executable, "-m", "lightmbert.benchmarks.bench_kernels", "--tiny", "--out", str(tmp_path / "sub"),
                        "--ops", "hidden_mse", "--providers", "eager_fp32,ours"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "sub" / "bench_kernels_tiny.csv")))
    assert [(row["op"], row["provider"]) for row in rows] == [("hidden_mse", "eager_fp32"), ("hidden_mse", "ours")]
    r = subprocess.run([sys.executable, "-m", "lightmbert.benchmarks.bench_kernels", "--tiny", "--ops", "nope"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown op/provider ['nope']" in r.stderr


@pytest.mark.slow
def test_bench_data_prep_small(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lightmbert.benchmarks.bench_data_prep", "--mb-per-lang", "0.2",
                        "--procs", "1", "2", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_data_prep.csv")))
    assert [row["procs"] for row in rows] == ["1", "2"]
    assert all(int(row["tokens"]) > 0 and float(row["stage_vs_bare"]) > 0 for row in rows)


@pytest.mark.slow
def test_bench_step_small(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    r = subprocess.run([sys.executable, "-m", "lightmbert.benchmarks.bench_step", "--steps", "3", "--warmup", "1",
                        "--batch", "4", "--out", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(csv.DictReader(open(tmp_path / "bench_step.csv")))
    assert float(row["ours_tok_s"]) > 0 and float(row["bare_tok_s"]) > 0


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    """`make gpu-check` on a machine without CUDA: exit 0, a report that says why."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: gpu-check would run for real")
    r = subprocess.run(["make", "-s", "gpu-check", f"GPU_CHECK_ARGS=--out {tmp_path}", f"GPU_PY={sys.executable}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "gpu-check: skipped: no CUDA device" in r.stdout
    assert "skipped: no CUDA device" in (tmp_path / "report.md").read_text()


def tiny_csv(script: str, tmp_path) -> list[dict]:
    """Run `python -m lightmbert.benchmarks.<script> --tiny` and read the CSV it wrote."""
    r = subprocess.run([sys.executable, "-m", f"lightmbert.benchmarks.{script}", "--tiny", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return list(csv.DictReader(open(tmp_path / f"{script}.csv")))


@pytest.mark.slow
def test_bench_loader_tiny(tmp_path):
    rows = tiny_csv("bench_loader", tmp_path)
    assert {row["shards"] for row in rows} == {"one-segment", "packed"}
    assert {row["loader"].split(" ")[0] for row in rows} == {"tarfile", "reader", "stream", "dataloader"}
    assert all(float(row["samples_s"]) > 0 for row in rows)


def test_bench_resume_tiny(tmp_path):
    rows = tiny_csv("bench_resume", tmp_path)   # (it also checks that restore and replay agree)
    assert [int(row["steps"]) for row in rows] == [10, 50]
    assert all(float(row["stateful_s"]) > 0 and float(row["replay_s"]) > 0 for row in rows)


@pytest.mark.slow
def test_bench_student_tiny(tmp_path):
    rows = tiny_csv("bench_student", tmp_path)
    assert [(r["model"], r["runtime"].split()[0]) for r in rows] == [
        ("teacher", "PyTorch"), ("teacher", "ONNX"), ("student", "PyTorch"), ("student", "ONNX"),
        ("student-trimmed", "ONNX"), ("student-trimmed-int8", "ONNX")]
    size = {r["model"] + "/" + r["runtime"]: float(r["disk_mb"]) for r in rows}
    assert size["student-trimmed-int8/ONNX Runtime int8"] < size["student-trimmed/ONNX Runtime fp32"] \
        < size["student/ONNX Runtime fp32"] < size["teacher/ONNX Runtime fp32"]
    assert all(float(r["p50_ms"]) > 0 and float(r["seq_s_32x128"]) > 0 and 0 <= float(r["retrieval"]) <= 1
               for r in rows)
    assert (tmp_path / "bench_student.png").stat().st_size > 1000
    assert "| student-trimmed-int8 | ONNX Runtime int8 |" in (tmp_path / "bench_student.md").read_text()
