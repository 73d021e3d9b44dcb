"""python -m lightmbert.benchmarks.gpu_check [--out runs/gpu-check] [--budget 420] [--quick] [--with-compile]
(make gpu-check)

The GPU proof in one command, within one time budget (default 7 minutes, `--budget` seconds:
a lent GPU machine has ~15 minutes in all, start-up included), written as a Markdown report
and CSVs under --out:
  1. the CUDA kernel tests (bf16/fp16/fp32, mBERT shapes, padding, a fully padded row, fused-QKV
     views, fp16 loss scales; `pytest -m gpu tests/test_kernels_triton.py tests/test_kernels_relations.py`),
  2. bench_kernels --dtype bf16 with every installed provider but torch.compile (it cold-compiles
     9 graphs, minutes on its own: `--with-compile` adds it),
  3. bench_step --size mbert --seq 512 (bf16 DeepSpeed step: tokens/s and MFU per step).
Without CUDA it writes the report with the reason and the plan and exits 0 ("skipped"), so CI
and laptops can run it.

Nothing a step did is lost to a time limit: the budget is split over the steps by weight, and
what a step leaves unused carries forward to the next ones (each step gets the time left times
its share of the weights still to run); every step runs in its own process group and streams
its output into its own log in --out as it runs; report.md and gpu_check.csv are rewritten
before and after every step (the running step is marked), and the benchmarks rewrite their
CSVs after every row — so a step stopped at its limit (SIGTERM, then SIGKILL) keeps its log,
its partial rows and its place in the report, and if the whole command is killed from outside
the report still says how far it got. At most 8 files in --out: report.md, gpu_check.csv, the
three logs, kernels.xml, bench_kernels_bf16.csv, bench_step.csv.

Bare GPU machines: it runs under whatever python has torch (the image's `python3`; no
`make setup`, which would fetch a CPU torch). Packages such an image lacks (deepspeed,
webdataset, liger-kernel, ...) are installed from `.whl/` in the repository if present — made
here by `make gpu-wheels` — into a private folder on PYTHONPATH; nothing is downloaded there.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NEEDED = {"deepspeed": "bench_step", "webdataset": "tests", "liger_kernel": "bench_kernels' liger row",
          "yaml": "configs", "transformers": "models", "triton": "kernels", "pytest": "tests"}
KILL_GRACE = 10  # seconds between SIGTERM and SIGKILL of a step that ran out of time


@dataclass
class Step:
    name: str
    cmd: list[str]
    weight: float                  # its share of the budget, against the steps still to run
    log: str                       # file name in --out
    tables: list[str] = field(default_factory=list)  # CSVs it writes (shown in the report)
    skip: str = ""                 # a reason not to run it


def missing_modules(env: dict) -> list[str]:
    """The needed modules the steps' python (with `env`'s PYTHONPATH) cannot import."""
    code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
            "if importlib.util.find_spec(m) is None))")
    r = subprocess.run([sys.executable, "-c", code, *NEEDED], env=env, capture_output=True, text=True)
    return r.stdout.split()


def install_carried_wheels(env: dict) -> str:
    """pip-install .whl/*.whl (no index, no deps) into a private folder; returns a note."""
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if not wheels:
        return "no .whl/ folder (make gpu-wheels on a networked machine makes one)"
    target = Path(os.environ.get("LIGHTMBERT_GPU_SITE", "/tmp/lightmbert-site"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"installing .whl/ failed: {r.stderr.strip()[-500:]}"
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return f"installed {len(wheels)} carried wheels into {target}"


def run_step(step: Step, env: dict, limit: float, out: Path) -> dict:
    """Run one step with its output streamed into out/step.log; stop it at `limit` seconds."""
    row = {"step": step.name, "rc": "", "limit_s": round(limit, 1), "seconds": 0.0, "last_line": "",
           "log": step.log}
    log = out / step.log
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(step.cmd)}\n")
        f.flush()
        p = subprocess.Popen(step.cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            row["rc"] = p.wait(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            _stop(p)
            row["rc"] = "timeout"
    row["seconds"] = round(time.monotonic() - t0, 1)
    if row["rc"] == "timeout":
        with open(log, "a") as f:
            f.write(f"\n[gpu-check: stopped at its limit of {limit:.0f} s; the output above is what it had]\n")
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    row["last_line"] = (lines[-2] if row["rc"] == "timeout" and len(lines) > 1 else lines[-1])[:200]
    return row


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM the step's process group (its pytest/torch workers too), SIGKILL after a grace."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def table_md(path: Path) -> str:
    """A CSV written by a benchmark as a Markdown table (empty when it is missing)."""
    if not path.is_file():
        return "_(not produced)_\n"
    rows = list(csv.reader(open(path)))
    if not rows:
        return "_(empty)_\n"
    head, body = rows[0], rows[1:]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def tail(path: Path, n: int = 15) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(errors="replace").splitlines()[-n:]
    return "```\n" + "\n".join(lines) + "\n```\n"


def write_report(out: Path, header: list[str], steps: list[Step], rows: list[dict]) -> None:
    """report.md and gpu_check.csv as they stand now (called before and after every step)."""
    fields = ["step", "rc", "limit_s", "seconds", "last_line", "log"]
    tmp = out / "gpu_check.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "gpu_check.csv")
    parts = [*header, "", "## Steps", "", table_md(out / "gpu_check.csv")]
    by_name = {r["step"]: r for r in rows}
    for s in steps:
        r = by_name.get(s.name)
        if r is None:
            continue
        for t in s.tables:
            parts += [f"## {s.name}: {t}", "", table_md(out / t)]
        if r["rc"] not in (0, "skipped"):
            parts += [f"### {s.name}: last lines of {s.log} ({r['rc']})", "", tail(out / s.log)]
    tmp = out / "report.md.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(out / "report.md")


def run_steps(steps: list[Step], out: Path, budget: float, env: dict, header: list[str],
              started: float | None = None) -> list[dict]:
    """Every step in order within `budget` seconds from `started` (default: now): step i gets
    the time left × weight_i / Σ weights of steps i.. (so time a step leaves unused carries
    forward). Report and CSV are rewritten before and after each step."""
    started = time.monotonic() if started is None else started
    rows: list[dict] = []
    for i, step in enumerate(steps):
        if step.skip:
            rows.append({"step": step.name, "rc": "skipped", "limit_s": 0, "seconds": 0,
                         "last_line": step.skip, "log": ""})
            write_report(out, header, steps, rows)
            continue
        left = budget - (time.monotonic() - started)
        weights = sum(s.weight for s in steps[i:] if not s.skip)
        limit = max(0.0, left * step.weight / weights)
        if limit < 1:
            rows.append({"step": step.name, "rc": "no time", "limit_s": 0, "seconds": 0,
                         "last_line": "the budget was spent before this step", "log": ""})
            write_report(out, header, steps, rows)
            continue
        rows.append({"step": step.name, "rc": "running", "limit_s": round(limit, 1), "seconds": "",
                     "last_line": "", "log": step.log})
        write_report(out, header, steps, rows)
        print(f"gpu-check: {step.name} (up to {limit:.0f} s of {left:.0f} s left) ...", flush=True)
        rows[-1] = run_step(step, env, limit, out)
        r = rows[-1]
        print(f"gpu-check: {step.name}: rc {r['rc']} in {r['seconds']} s: {r['last_line']}", flush=True)
        write_report(out, header, steps, rows)
    return rows


def gpu_steps(out: Path, quick: bool, with_compile: bool, still_missing: list[str]) -> list[Step]:
    py = sys.executable
    providers = "eager,eager_fp32,ours,liger" + (",compile" if with_compile else "")
    return [
        Step("kernel tests (CUDA)", [py, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider",
                                     "--junitxml", str(out / "kernels.xml"), "tests/test_kernels_triton.py",
                                     "tests/test_kernels_relations.py"], 2.0, "kernel_tests.log",
             skip="pytest missing" if "pytest" in still_missing else ""),
        Step("bench_kernels bf16", [py, "-m", "lightmbert.benchmarks.bench_kernels", "--dtype", "bf16", "--reps",
                                    "20" if quick else "50", "--providers", providers, "--out", str(out)],
             3.0 if with_compile else 2.0, "bench_kernels.log", ["bench_kernels_bf16.csv"]),
        Step("bench_step mbert", [py, "-m", "lightmbert.benchmarks.bench_step", "--size", "mbert", "--seq", "512",
                                  "--batch", "32", "--steps", "10" if quick else "20", "--out", str(out)],
             3.0, "bench_step.log", ["bench_step.csv"],
             skip="deepspeed missing" if "deepspeed" in still_missing else ""),
    ]


def main(argv=None) -> int:
    started = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for everything (default 7 min)")
    ap.add_argument("--quick", action="store_true", help="fewer benchmark reps and steps")
    ap.add_argument("--with-compile", action="store_true",
                    help="also time torch.compile in bench_kernels (cold-compiles 9 graphs: minutes)")
    args = ap.parse_args(argv)
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    import torch
    header = ["# gpu-check", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"- python {sys.version.split()[0]}, torch {torch.__version__}, budget {args.budget:.0f} s"]
    if not torch.cuda.is_available():
        plan = gpu_steps(out, args.quick, args.with_compile, [])
        total = sum(s.weight for s in plan)
        shares = ", ".join(f"{s.name} ≈ {args.budget * s.weight / total:.0f} s" for s in plan)
        reason = (f"skipped: no CUDA device (torch {torch.__version__}, built with CUDA "
                  f"{torch.version.cuda or 'none'}); run `make gpu-check` on a GPU machine")
        plan_line = f"on a GPU it would run, within {args.budget:.0f} s (unused time carried forward): {shares}"
        (out / "report.md").write_text("\n".join(header + [f"- {reason}", f"- {plan_line}", ""]))
        print(f"gpu-check: {reason}\ngpu-check: {plan_line}")
        return 0
    props = torch.cuda.get_device_properties(0)
    header.append(f"- device: {torch.cuda.get_device_name()} (sm_{props.major}{props.minor}, "
                  f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)")
    missing = missing_modules(env)
    if missing:
        header.append(f"- missing {missing}: {install_carried_wheels(env)}")
    still = missing_modules(env) if missing else []
    if still:
        header.append(f"- still missing: {still} (" + ", ".join(NEEDED[m] for m in still) + " affected)")
    steps = gpu_steps(out, args.quick, args.with_compile, still)
    rows = run_steps(steps, out, args.budget, env, header, started)
    print(f"gpu-check: wrote {out / 'report.md'} ({time.monotonic() - started:.0f} s of {args.budget:.0f})")
    return 0 if all(r["rc"] in (0, "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
