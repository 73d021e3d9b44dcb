"""python -m lightmbert.benchmarks.gpu_check [--out runs/gpu-check] [--quick]   (make gpu-check)

The GPU proof in one command (≤ 8 minutes on one H100/H200), written as one Markdown + CSV
report under --out:
  1. the CUDA kernel tests (bf16/fp16/fp32, mBERT shapes, padding, a fully padded row, fused-QKV
     views, fp16 loss scales; `pytest -m gpu tests/test_kernels_triton.py tests/test_kernels_relations.py`),
  2. bench_kernels --dtype bf16 with every provider that is installed,
  3. bench_step --size mbert (tokens/s and MFU of the real DeepSpeed step).
Without CUDA it writes the report with the reason and exits 0 ("skipped"), so CI and laptops
can run it. Each step runs in its own process with a time limit; a failing step is reported and
the others still run (exit 1 if any failed).

Bare GPU machines: it runs under whatever python has torch (the image's `python3`; no
`make setup`, which would fetch a CPU torch). Packages such an image lacks (deepspeed,
webdataset, liger-kernel, ...) are installed from `.whl/` in the repository if present — made
here by `make gpu-wheels` — into a private folder on PYTHONPATH; nothing is downloaded there.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NEEDED = {"deepspeed": "bench_step", "webdataset": "tests", "liger_kernel": "bench_kernels' liger row",
          "yaml": "configs", "transformers": "models", "triton": "kernels", "pytest": "tests"}


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


def step(name: str, cmd: list[str], env: dict, timeout: int, log: Path) -> dict:
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", (e.stdout or "") + (e.stderr or "") if isinstance(e.stdout, str) else "timeout"
    log.write_text(out if isinstance(out, str) else str(out))
    tail = [ln for ln in str(out).splitlines() if ln.strip()][-1:] or [""]
    return {"step": name, "rc": rc, "seconds": round(time.time() - t0, 1), "last_line": tail[0][:200],
            "log": log.name}


def table_md(path: Path) -> str:
    """A CSV written by a benchmark as a Markdown table (empty when it is missing)."""
    if not path.is_file():
        return "_(not produced)_\n"
    rows = list(csv.reader(open(path)))
    head, body = rows[0], rows[1:]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    ap.add_argument("--quick", action="store_true", help="fewer benchmark reps and steps (a short lease)")
    args = ap.parse_args(argv)
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    import torch
    lines = ["# gpu-check", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- python {sys.version.split()[0]}, torch {torch.__version__}"]
    if not torch.cuda.is_available():
        reason = (f"skipped: no CUDA device (torch {torch.__version__}, built with CUDA "
                  f"{torch.version.cuda or 'none'}); run `make gpu-check` on a GPU machine")
        (out / "report.md").write_text("\n".join(lines + [f"- {reason}", ""]))
        print(f"gpu-check: {reason}")
        return 0
    lines.append(f"- device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}, "
                 f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
    missing = missing_modules(env)
    if missing:
        lines.append(f"- missing {missing}: {install_carried_wheels(env)}")
    still = missing_modules(env) if missing else []
    if still:
        lines.append(f"- still missing: {still} (" + ", ".join(NEEDED[m] for m in still) + " affected)")
    py = sys.executable
    reps = "20" if args.quick else "50"
    steps = [
        ("kernel tests (CUDA)", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                 "--junitxml", str(out / "kernels.xml"), "tests/test_kernels_triton.py",
                                 "tests/test_kernels_relations.py"], 240),
        ("bench_kernels bf16", [py, "-m", "lightmbert.benchmarks.bench_kernels", "--dtype", "bf16", "--reps", reps,
                                "--out", str(out)], 240),
        ("bench_step mbert", [py, "-m", "lightmbert.benchmarks.bench_step", "--size", "mbert", "--steps",
                              "10" if args.quick else "20", "--batch", "32", "--out", str(out)], 240),
    ]
    results = []
    for name, cmd, limit in steps:
        if name.startswith("bench_step") and "deepspeed" in still:
            results.append({"step": name, "rc": "skipped", "seconds": 0, "last_line": "deepspeed missing", "log": ""})
            continue
        print(f"gpu-check: {name} ...", flush=True)
        results.append(step(name, cmd, env, limit, out / f"{name.split()[0]}.log"))
        print(f"gpu-check: {name}: rc {results[-1]['rc']} in {results[-1]['seconds']} s: {results[-1]['last_line']}",
              flush=True)
    with open(out / "gpu_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    lines += ["", "## Steps", "", table_md(out / "gpu_check.csv"),
              "## bench_kernels (bf16)", "", table_md(out / "bench_kernels_bf16.csv"),
              "## bench_step (mbert)", "", table_md(out / "bench_step.csv")]
    (out / "report.md").write_text("\n".join(lines))
    print(f"gpu-check: wrote {out / 'report.md'}")
    return 0 if all(r["rc"] in (0, "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
