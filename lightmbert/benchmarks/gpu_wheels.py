"""python -m lightmbert.benchmarks.gpu_wheels pins | check [--wheels .whl] [--python python3.12]

The wheel set `make gpu-check` carries to a GPU machine without network (`make gpu-wheels`
downloads it, `make gpu-wheels-check` checks it): what `import deepspeed, webdataset,
liger_kernel` needs beyond the GPU image (Python 3.12, CUDA torch, triton, transformers and
their dependencies: numpy, packaging, pyyaml, tqdm, ...), each at the version of
requirements-lock.txt — the versions every test here ran with.

  pins    prints `name==version` for every WHEELS name, read from the lock (an error names any
          name the lock lacks): the Makefile downloads exactly these.
  check   (1) every wheel in --wheels is at its locked version and every WHEELS name plus
          deepspeed is there once; (2) installs them the way gpu_check does — `pip install
          --no-index --no-deps --target DIR` — for CPython 3.12 on manylinux x86_64 (pip installs
          for another interpreter's tags: this needs no Python 3.12); (3) every requirement of
          every installed distribution, markers evaluated for Python 3.12 on Linux, is met by the
          set itself or is one the image provides (IMAGE) — e.g. pydantic's exact pydantic-core
          pin, its typing-extensions floor; (4) imports deepspeed (only where torch imports),
          webdataset, pydantic, hjson from DIR under a Python 3.12 (--python, $GPU_WHEELS_PY,
          else python3.12 on PATH). Without a Python 3.12, step 4 is reported as not run; with
          --require-import that fails the check.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what import deepspeed / webdataset / pydantic / liger_kernel load that the GPU image may lack
# (measured: sys.modules after the imports, here); deepspeed itself is built into a wheel
WHEELS = ["webdataset", "braceexpand", "hjson", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection", "typing-extensions", "einops", "msgpack", "psutil", "py-cpuinfo", "liger-kernel"]
BUILT = ["deepspeed"]
# on the GPU image already: torch, its and transformers' dependencies
IMAGE = {"torch", "triton", "transformers", "numpy", "packaging", "pyyaml", "tqdm", "filelock", "jinja2",
         "sympy", "networkx", "fsspec", "regex", "requests", "safetensors", "tokenizers", "huggingface-hub"}
# declared but not needed by what gpu_check runs
NOT_NEEDED = {"ninja": "only JIT-compiles DeepSpeed ops; bench_step trains with torch's AdamW"}
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64"]
IMPORTS = ["webdataset", "pydantic", "hjson"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_versions(lock: Path) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = version.strip()
    return out


def pins(lock: Path, names: list[str]) -> list[str]:
    versions = lock_versions(lock)
    missing = [n for n in names if norm(n) not in versions]
    if missing:
        raise SystemExit(f"gpu_wheels: not in {lock}: {missing}")
    return [f"{n}=={versions[norm(n)]}" for n in names]


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return norm(name), version


def check_versions(wheels: list[Path], lock: Path, names: list[str]) -> list[str]:
    """Problems: a wheel not at its locked version, a name missing or there twice."""
    versions, problems, seen = lock_versions(lock), [], {}
    for w in wheels:
        name, version = wheel_name_version(w)
        seen.setdefault(name, []).append(version)
        if versions.get(name) != version:
            problems.append(f"{w.name}: the lock has {name}=={versions.get(name, '(nothing)')}")
    for n in names:
        got = seen.get(norm(n), [])
        if len(got) != 1:
            problems.append(f"{n}: {len(got)} wheels ({', '.join(got) or 'none'}), want 1")
    return problems


def check_requirements(target: Path, image: set[str] = IMAGE) -> tuple[list[str], list[str]]:
    """(problems, notes): every installed distribution's requirements, evaluated for CPython
    3.12 on Linux, met inside `target` or by the image."""
    import importlib.metadata as md

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "extra": ""}
    dists = {norm(d.metadata["Name"]): d for d in md.distributions(path=[str(target)])}
    problems, notes = [], []
    for name, d in sorted(dists.items()):
        for spec in d.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = norm(req.name)
            if dep in dists:
                have = dists[dep].version
                if have not in req.specifier:
                    problems.append(f"{name} needs {req}, the set has {dep} {have}")
            elif dep in image:
                notes.append(f"{name} needs {req}: from the image")
            elif dep in NOT_NEEDED:
                notes.append(f"{name} needs {req}: not carried ({NOT_NEEDED[dep]})")
            else:
                problems.append(f"{name} needs {req}: neither in the set nor on the image")
    return problems, sorted(set(notes))


def find_python312(given: str | None) -> str | None:
    for cand in (given, os.environ.get("GPU_WHEELS_PY"), "python3.12"):
        if not cand:
            continue
        path = shutil.which(cand) or (cand if Path(cand).is_file() else None)
        if path:
            r = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)
            if r.stdout.strip() == "True":
                return path
    return None


def import_check(python: str, target: Path) -> tuple[bool, str]:
    # the installed set comes first on the child's path through PYTHONPATH (as on the GPU image)
    code = ("import importlib.util, sys; mods = sys.argv[1:]\n"
            "if importlib.util.find_spec('torch'): mods.append('deepspeed')\n"
            "else: print('torch not importable here: deepspeed import not tried')\n"
            "for m in mods: print(m, __import__(m).__file__)")
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([python, "-c", code, *IMPORTS], capture_output=True, text=True, env=env)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def check(wheel_dir: Path, lock: Path, python: str | None, require_import: bool) -> int:
    wheels = sorted(wheel_dir.glob("*.whl"))
    print(f"gpu-wheels-check: {len(wheels)} wheels in {wheel_dir}")
    failed = False
    problems = check_versions(wheels, lock, WHEELS + BUILT)
    for p in problems:
        print(f"  FAIL version: {p}")
    failed |= bool(problems)
    print(f"(1) versions: {'FAIL' if problems else 'ok'}: every wheel at the lock's version")
    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / "site"
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                            "--no-deps", "--no-compile", "--target", str(target), *PLATFORM, *map(str, wheels)],
                           capture_output=True, text=True)
        print(f"(2) pip install --no-index --no-deps --target (cp312, manylinux x86_64): "
              f"{'ok' if r.returncode == 0 else 'FAIL'}")
        if r.returncode != 0:
            print(r.stderr.strip()[-2000:])
            return 1
        problems, notes = check_requirements(target)
        for p in problems:
            print(f"  FAIL requirement: {p}")
        for n in notes:
            print(f"  note: {n}")
        print(f"(3) requirements for Python 3.12 met by the set or the image: {'FAIL' if problems else 'ok'}")
        failed |= bool(problems)
        py = find_python312(python)
        if py is None:
            print("(4) imports under Python 3.12: NOT RUN — no Python 3.12 here (--python, $GPU_WHEELS_PY or "
                  "python3.12 on PATH)")
            failed |= require_import
        else:
            ok, out = import_check(py, target)
            print(f"(4) imports under {py}: {'ok' if ok else 'FAIL'}")
            print("\n".join(f"  {ln}" for ln in out.splitlines()))
            failed |= not ok
    print(f"gpu-wheels-check: {'FAILED' if failed else 'passed'}")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["pins", "check"])
    ap.add_argument("--lock", type=Path, default=REPO / "requirements-lock.txt")
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl")
    ap.add_argument("--python", default=None, help="a Python 3.12 for the import check")
    ap.add_argument("--require-import", action="store_true", help="fail when no Python 3.12 is found")
    args = ap.parse_args(argv)
    if args.what == "pins":
        print(" ".join(pins(args.lock, WHEELS)))
        return 0
    return check(args.wheels, args.lock, args.python, args.require_import)


if __name__ == "__main__":
    sys.exit(main())
