"""The package layering, checked on the source (every import statement, including the lazy
ones inside functions, which a runtime sys.modules check would miss):

    kernels      imports nothing of ours
    configs      imports nothing of ours
    data_prep    configs only (CPU prep nodes: never trainer, evaluation or demo)
    evaluation   configs, data_prep (any HF encoder directory: never trainer)
    trainer      configs, data_prep, kernels, evaluation (never demo)
    deploy       configs, data_prep, evaluation (any HF encoder directory: never trainer)
    demo         anything of ours but tests
    benchmarks   configs, data_prep, kernels, trainer, evaluation, deploy (never tests: shared fixtures
                 live in data_prep.synthetic; never demo, which uses benchmarks' table reporter)
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"kernels", "configs", "data_prep", "evaluation", "trainer", "deploy", "demo", "benchmarks", "tests"}
ALLOWED = {
    "kernels": set(),
    "configs": set(),
    "data_prep": {"configs"},
    "evaluation": {"configs", "data_prep"},
    "trainer": {"configs", "data_prep", "kernels", "evaluation"},
    "deploy": {"configs", "data_prep", "evaluation"},
    "demo": OURS - {"tests", "demo"},
    "benchmarks": {"configs", "data_prep", "kernels", "trainer", "evaluation", "deploy"},
}


def imports_of(path: Path, package: str) -> set[str]:
    """Top-level packages of ours that a file imports (absolute or relative)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & OURS
    return found - {package}


def graph() -> dict[str, set[str]]:
    return {pkg: set().union(*(imports_of(f, pkg) for f in (REPO / pkg).rglob("*.py")))
            for pkg in ALLOWED}


def test_layering_rules_hold():
    g = graph()
    bad = {pkg: sorted(deps - ALLOWED[pkg]) for pkg, deps in g.items() if deps - ALLOWED[pkg]}
    assert not bad, f"forbidden imports: {bad} (graph: { {k: sorted(v) for k, v in g.items()} })"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import x\ndef f():\n    import trainer.models\n    from evaluation.pooling import mean_pool\n")
    assert imports_of(f, "data_prep") == {"trainer", "evaluation"}


def test_data_prep_and_evaluation_load_without_trainer():
    """At run time too: a CPU prep node or an evaluation box never loads the trainer."""
    code = ("import sys, data_prep.shard, data_prep.inspect, data_prep.parallel, data_prep.progress, evaluation, "
            "evaluation.xnli\nassert not [m for m in sys.modules if m.split('.')[0] in ('trainer', 'demo')]\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


if __name__ == "__main__":  # print the graph (for notes and reviews)
    for pkg, deps in graph().items():
        print(f"{pkg:<11} → {', '.join(sorted(deps)) or '—'}")
