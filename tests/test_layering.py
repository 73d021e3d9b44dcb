"""The package layering, checked on the source (every import statement, including the lazy
ones inside functions, which a runtime sys.modules check would miss). Sub-packages of
`lightmbert`:

    kernels      imports nothing of ours
    configs      imports nothing of ours
    data_prep    configs only (CPU prep nodes: never trainer, evaluation or demo)
    evaluation   configs, data_prep (any HF encoder directory: never trainer)
    trainer      configs, data_prep, kernels, evaluation (never demo)
    deploy       configs, data_prep, evaluation (any HF encoder directory: never trainer)
    demo         anything of ours but tests
    benchmarks   configs, data_prep, kernels, trainer, evaluation, deploy (never tests: shared fixtures
                 live in data_prep.synthetic; never demo, which uses benchmarks' table reporter)

And the namespace itself: nothing of ours is importable under a generic top-level name
(`kernels`, `configs`, … belong to whoever else installs them: transformers imports Hugging
Face's `kernels`).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PKG = REPO / "lightmbert"
SUBPACKAGES = {"kernels", "configs", "data_prep", "evaluation", "trainer", "deploy", "demo", "benchmarks"}
ALLOWED = {
    "kernels": set(),
    "configs": set(),
    "data_prep": {"configs"},
    "evaluation": {"configs", "data_prep"},
    "trainer": {"configs", "data_prep", "kernels", "evaluation"},
    "deploy": {"configs", "data_prep", "evaluation"},
    "demo": SUBPACKAGES - {"demo"},
    "benchmarks": {"configs", "data_prep", "kernels", "trainer", "evaluation", "deploy"},
}
assert set(ALLOWED) == SUBPACKAGES


def imports_of(path: Path, package: str) -> set[str]:
    """Sub-packages of ours that a file of `lightmbert.<package>` imports: absolute
    (`lightmbert.x…`, `from lightmbert import x`), relative (`from ..x import`), or `tests`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:          # from . import x / from .x import y: the same sub-package
                modules = [f"lightmbert.{package}"]
            elif node.level >= 2:        # from .. import x / from ..x import y: relative to lightmbert
                base = f"lightmbert.{node.module}" if node.module else "lightmbert"
                modules = [base] if node.module else [f"lightmbert.{a.name}" for a in node.names]
            elif node.module == "lightmbert":
                modules = [f"lightmbert.{a.name}" for a in node.names]
            else:
                modules = [node.module or ""]
        else:
            continue
        for m in modules:
            parts = m.split(".")
            if parts[0] == "tests":
                found.add("tests")
            elif parts[0] == "lightmbert" and len(parts) > 1 and parts[1] in SUBPACKAGES:
                found.add(parts[1])
    return found - {package}


def graph() -> dict[str, set[str]]:
    return {pkg: set().union(*(imports_of(f, pkg) for f in (PKG / pkg).rglob("*.py")))
            for pkg in ALLOWED}


def test_layering_rules_hold():
    g = graph()
    bad = {pkg: sorted(deps - ALLOWED[pkg]) for pkg, deps in g.items() if deps - ALLOWED[pkg]}
    assert not bad, f"forbidden imports: {bad} (graph: { {k: sorted(v) for k, v in g.items()} })"


def test_the_checker_sees_lazy_relative_and_from_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import x\nfrom ..configs import load\ndef f():\n    import lightmbert.trainer.models\n"
                 "    from lightmbert.evaluation.pooling import mean_pool\n    from lightmbert import demo\n"
                 "    from .. import deploy\n    import tests.helpers\n")
    assert imports_of(f, "data_prep") == {"configs", "trainer", "evaluation", "demo", "deploy", "tests"}


def test_no_generic_top_level_names_of_ours():
    """Everything of ours lives under lightmbert/: no top-level Python package or module that
    would shadow (or be shadowed by) a site-packages name like Hugging Face's `kernels`."""
    stray = sorted(p.name for p in REPO.iterdir()
                   if p.name not in {"lightmbert", "tests"} and not p.name.startswith(".")
                   and ((p / "__init__.py").is_file() or p.suffix == ".py"))
    assert not stray, f"importable top-level names besides lightmbert: {stray}"


def test_data_prep_and_evaluation_load_without_trainer():
    """At run time too: a CPU prep node or an evaluation box never loads the trainer."""
    code = ("import sys, lightmbert.data_prep.shard, lightmbert.data_prep.inspect, lightmbert.data_prep.parallel, "
            "lightmbert.data_prep.progress, lightmbert.evaluation, lightmbert.evaluation.xnli\n"
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['lightmbert', 'trainer'], ['lightmbert', 'demo'])]\n"
            "assert not bad, bad\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


if __name__ == "__main__":  # print the graph (for notes and reviews)
    for pkg, deps in graph().items():
        print(f"{pkg:<11} → {', '.join(sorted(deps)) or '—'}")
