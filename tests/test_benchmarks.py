"""The benchmark scripts run (tiny shapes): they are run by hand, so CI keeps them working."""
import csv
import os
import json
import subprocess
import sys
import time

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
    # TFLOP/s next to the bandwidth columns for the compute-bound losses; no peak on a CPU
    assert all(float(row["tflops"]) > 0 for row in rows if row["op"].startswith("attention_") and
               row["op"] != "attention_map_mse")
    assert all(row["pct_peak"] == "" and row["peak_tflops"] == "" for row in rows)
    assert not list(tmp_path.glob("*.tmp"))
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
@pytest.mark.parametrize("precision,steps", [("auto", "3"), ("bf16", "1")])
def test_bench_step_small(tmp_path, precision, steps):
    """No DS_ACCELERATOR given: bench_step picks it from the machine (cpu here: it used to force
    cpu on GPU machines too). bf16: the DeepSpeed bf16 engine path, which no CPU test ran."""
    import torch
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    r = subprocess.run([sys.executable, "-m", "lightmbert.benchmarks.bench_step", "--steps", steps, "--warmup", "1",
                        "--batch", "4", "--precision", precision, "--out", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(csv.DictReader(open(tmp_path / "bench_step.csv")))
    assert float(row["ours_tok_s"]) > 0 and float(row["bare_tok_s"]) > 0 and float(row["mflop_tok"]) > 0
    assert row["precision"] == ("bf16" if precision == "bf16" or torch.cuda.is_available() else "fp32")
    # every timed step reported as it ran
    assert [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("step ")] == \
        [f"step {i}/{steps}" for i in range(1, int(steps) + 1)]


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
    assert "within 420 s (unused time carried forward): kernel tests (CUDA) ≈ 120 s" in r.stdout


def test_gpu_check_budget_carries_forward_and_keeps_partial_output(tmp_path):
    """A dry run with fake steps: one budget split by weight with unused time carried forward,
    output streamed to each step's log, the report rewritten after every step, and a step
    stopped at its limit keeping what it had printed (its log, the report's tail of it)."""
    from lightmbert.benchmarks import gpu_check as G
    py = sys.executable
    report = tmp_path / "report.md"
    steps = [
        G.Step("quick", [py, "-c", "print('quick done')"], 1.0, "quick.log"),
        G.Step("slow", [py, "-c", "import time\nprint('partial row 1', flush=True)\ntime.sleep(600)"],
               1.0, "slow.log"),
        G.Step("reader", [py, "-c", f"print('report says:', '| slow | timeout |' in open({str(report)!r}).read())"],
               1.0, "reader.log"),
        G.Step("skipped", [py, "-c", "raise SystemExit(3)"], 1.0, "never.log", skip="deepspeed missing"),
    ]
    budget = 9.0
    t0 = time.monotonic()
    rows = G.run_steps(steps, tmp_path, budget, dict(os.environ), ["# test"])
    wall = time.monotonic() - t0
    quick, slow, reader, skipped = rows
    assert quick["rc"] == 0 and quick["seconds"] < 3 and quick["limit_s"] == pytest.approx(budget / 3, abs=0.3)
    # what `quick` left unused went to the others: more than a third of the budget each
    assert slow["limit_s"] > budget / 3 + 0.5 and slow["rc"] == "timeout"
    assert slow["limit_s"] == pytest.approx((budget - quick["seconds"]) / 2, abs=0.5)
    assert reader["rc"] == 0 and reader["limit_s"] >= (budget - quick["seconds"] - slow["seconds"]) - 0.5
    assert skipped["rc"] == "skipped" and not (tmp_path / "never.log").exists()
    assert wall < budget + G.KILL_GRACE
    # the partial output survived the timeout, in the log and in the report
    assert "partial row 1" in (tmp_path / "slow.log").read_text()
    assert slow["last_line"] == "partial row 1"
    text = report.read_text()
    assert "partial row 1" in text and "| slow | timeout |" in text
    # the report was on disk, with the timeout, while the next step ran
    assert "report says: True" in (tmp_path / "reader.log").read_text()
    csv_rows = list(csv.DictReader(open(tmp_path / "gpu_check.csv")))
    assert [r["rc"] for r in csv_rows] == ["0", "timeout", "0", "skipped"]
    assert len(list(tmp_path.iterdir())) <= 8


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
    long = list(csv.DictReader(open(tmp_path / "bench_resume_long.csv")))
    assert [int(r["micro_batches"]) for r in long] == [400, 4000]
    # 10× the progress, with a resize in between: the data entry does not grow
    assert float(long[1]["entry_kb"]) <= 1.5 * float(long[0]["entry_kb"]), long


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
    # every row is scored on the first set; the second set (ru only) has its own column, left
    # empty in the two ONNX fp32 parity rows (same weights as the PyTorch rows above them)
    parity = [(r["model"], r["runtime"]) in {("teacher", "ONNX Runtime fp32"), ("student", "ONNX Runtime fp32")}
              for r in rows]
    assert parity == [False, True, False, True, False, False]
    assert all(0 <= float(r["retrieval_other"]) <= 1 for r, p in zip(rows, parity) if not p)
    assert [r["retrieval_other"] for r, p in zip(rows, parity) if p] == ["", ""]
    assert [r["worst_other"] for r, p in zip(rows, parity) if p] == ["—", "—"]
    assert rows[0]["worst_other"] == "ru 1.000" and rows[0]["worst_heldout"].endswith(" 1.000")  # the teacher itself
    assert all(r["worst_heldout"].split()[0] in ("de", "ru") for r in rows)
    assert "| — | — |" in (tmp_path / "bench_student.md").read_text()
    per_lang = json.loads((tmp_path / "bench_student.json").read_text())
    assert set(per_lang["student / torch"]["other"]) == {"ru", "mean"}
    assert set(per_lang["student / torch"]["heldout"]) == {"de", "ru", "mean"}
    assert set(per_lang["student / onnx"]) == {"heldout"}
    # the parity check holds: ONNX fp32 scores the first set as PyTorch does
    assert abs(float(rows[3]["retrieval"]) - float(rows[2]["retrieval"])) <= 0.02


def _dist(site, name, version, *requires):
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("\n".join([f"Name: {name}", f"Version: {version}",
                                              *(f"Requires-Dist: {r}" for r in requires)]) + "\n")


def test_gpu_wheels_pins_come_from_the_lock_and_mismatches_are_named(tmp_path):
    """The carried wheel set: versions read from the lock (never typed twice); a pydantic /
    pydantic-core mismatch, a missing dependency or a wheel off the lock is named."""
    from lightmbert.benchmarks import gpu_wheels as W
    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment\npydantic==2.14.4\npydantic_core==2.50.5\nTyping_Extensions==4.16.0\n")
    assert W.pins(lock, ["pydantic", "pydantic-core", "typing-extensions"]) == \
        ["pydantic==2.14.4", "pydantic-core==2.50.5", "typing-extensions==4.16.0"]
    with pytest.raises(SystemExit, match=r"not in .*lock.txt: \['hjson'\]"):
        W.pins(lock, ["pydantic", "hjson"])
    # the real lock has every name the Makefile downloads
    assert len(W.pins(REPO / "requirements-lock.txt", W.WHEELS)) == len(W.WHEELS)
    wheels = [tmp_path / "pydantic-2.14.4-py3-none-any.whl", tmp_path / "pydantic_core-2.50.4-cp312-cp312-x.whl"]
    assert W.check_versions(wheels, lock, ["pydantic", "pydantic-core", "typing-extensions"]) == [
        "pydantic_core-2.50.4-cp312-cp312-x.whl: the lock has pydantic-core==2.50.5",
        "typing-extensions: 0 wheels (none), want 1"]
    site = tmp_path / "site"
    _dist(site, "pydantic", "2.14.4", "pydantic-core==2.50.5", "typing-extensions>=4.16.0", "annotated-types",
          "tzdata; platform_system == 'Windows'", "email-validator>=2.0.0; extra == 'email'")
    _dist(site, "pydantic-core", "2.50.4")
    _dist(site, "deepspeed", "0.19.8", "torch>=2.0.0", "ninja", "py-cpuinfo")
    problems, notes = W.check_requirements(site)
    assert sorted(problems) == [
        "deepspeed needs py-cpuinfo: neither in the set nor on the image",
        "pydantic needs annotated-types: neither in the set nor on the image",
        "pydantic needs pydantic-core==2.50.5, the set has pydantic-core 2.50.4",
        "pydantic needs typing-extensions>=4.16.0: neither in the set nor on the image"]
    assert "deepspeed needs torch>=2.0.0: from the image" in notes and any("ninja" in n for n in notes)


@pytest.mark.slow
def test_gpu_wheels_are_exactly_the_locked_set(tmp_path):
    """make gpu-wheels + make gpu-wheels-check (needs PyPI): the set installs for CPython 3.12
    with --no-index --no-deps --target and meets its own requirements (imports: see the check's
    step 4, run only where a Python 3.12 exists)."""
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "hjson==3.1.0", "-d",
                            str(tmp_path / "probe")], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"no PyPI here: {probe.stderr.strip()[-200:]}")
    make = ["make", "-s", f"WHEEL_DIR={tmp_path / 'whl'}", f"PY={sys.executable}"]
    r = subprocess.run([*make, "gpu-wheels"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([*make, "gpu-wheels-check"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "gpu-wheels-check: passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert "(1) versions: ok" in r.stdout and "(3) requirements for Python 3.12 met by the set or the image: ok" \
        in r.stdout
