"""The distribution: one `lightmbert` namespace that shadows nothing (transformers ≥ 5.25 imports
Hugging Face's `kernels` package, which our former top-level `kernels/` hid), models loaded
without hub kernels (offline, the same numbers on every machine), and a non-editable install
whose console scripts work from any directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.helpers import REPO

SCRIPTS = ["lightmbert-prep", "lightmbert-inspect", "lightmbert-distill", "lightmbert-export-hf",
           "lightmbert-eval", "lightmbert-xnli", "lightmbert-trim", "lightmbert-export-onnx"]


def run_from_root(code: str, **env) -> subprocess.CompletedProcess:
    """`python -c code` from `/` (not the repo: only what is installed can be imported), offline."""
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    e.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", code], cwd="/", env=e, capture_output=True, text=True,
                          timeout=300)


def test_generic_names_are_not_ours_and_bert_runs():
    code = f"""
import importlib.util, os, torch, transformers, lightmbert.kernels
from transformers import BertConfig, BertModel
def ours(spec):   # a package directory directly in the checkout (the venv may live there too)
    return spec is not None and os.path.dirname(os.path.dirname(spec.origin or "")) == {str(REPO)!r}
spec = importlib.util.find_spec("kernels")   # Hugging Face's package, or nothing: never ours
assert not ours(spec), spec.origin
assert lightmbert.kernels.__file__.startswith({str(REPO / 'lightmbert')!r})
for name in ("trainer", "configs", "data_prep", "evaluation", "deploy", "demo", "benchmarks"):
    assert not ours(importlib.util.find_spec(name)), name
cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
torch.manual_seed(0)
for attn in ("eager", "sdpa"):
    m = BertModel._from_config(cfg, attn_implementation=attn).eval()
    out = m(torch.randint(0, 99, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 7, 32) and torch.isfinite(out.last_hidden_state).all()
print("hf-kernels" if spec else "no-hf-kernels", transformers.__version__)
"""
    r = run_from_root(code)
    assert r.returncode == 0, r.stderr[-3000:]


def test_models_load_offline_without_hub_kernels(tmp_path):
    """Every loader of ours passes use_kernels=False (transformers' default with Hugging Face's
    `kernels` installed is to kernelize from the hub); `teacher.hub_kernels: true` opts in."""
    code = f"""
import json, torch, transformers
from transformers import BertConfig, BertForMaskedLM, PreTrainedModel
from lightmbert.configs import TeacherConfig
from lightmbert.evaluation.encoders import load_encoder, load_kwargs
from lightmbert.trainer.models import load_teacher
from lightmbert.data_prep.synthetic import make_tokenizer
from lightmbert.deploy.trim import _load_model
from pathlib import Path
d = make_tokenizer(Path({str(tmp_path / 'bert')!r}))
BertForMaskedLM(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37)).save_pretrained(d)
supported = hasattr(PreTrainedModel, "set_use_kernels") or hasattr(PreTrainedModel, "use_kernels")
assert load_kwargs() == ({{"use_kernels": False}} if supported else {{}})
assert load_kwargs(True) == ({{"use_kernels": True}} if supported else {{}})
from transformers import AutoModel
default = AutoModel.from_pretrained(d)          # transformers' own default, for the record
ours = [load_teacher(TeacherConfig(name_or_path=d), False, torch.device("cpu"), torch.float32, 0),
        load_teacher(TeacherConfig(name_or_path=d), True, torch.device("cpu"), torch.float32, 0),
        _load_model(Path(d)), load_encoder(str(d))[0]]
for m in ours:
    assert getattr(m, "use_kernels", False) is False, type(m).__name__
    m.train(); m.eval()                        # a mode change must not kernelize either
    assert getattr(m, "use_kernels", False) is False, type(m).__name__
print(json.dumps({{"transformers": transformers.__version__, "supported": supported,
                  "default_use_kernels": bool(getattr(default, "use_kernels", False))}}))
"""
    r = run_from_root(code)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["supported"]:
        import importlib.util
        if importlib.util.find_spec("kernels") is not None:   # what the loaders protect against
            assert info["default_use_kernels"] is True, info


@pytest.mark.slow
def test_non_editable_install_console_scripts_from_root(tmp_path):
    """`pip install .` (a wheel, not editable): every sub-package and console script is in it, and
    each script's --help works from `/` with only the wheel's copy of lightmbert importable."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    src = tmp_path / "src"   # a copy: setuptools builds in the source tree (build/, *.egg-info)
    shutil.copytree(REPO / "lightmbert", src / "lightmbert", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    r = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                        str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lightmbert-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("trainer", "kernels", "data_prep", "configs", "evaluation", "deploy", "demo", "benchmarks"):
        assert f"lightmbert/{sub}/__init__.py" in names, sub
    assert not [n for n in names if n.split("/")[0] not in ("lightmbert",) and ".dist-info" not in n], names
    site = tmp_path / "site"
    r = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # -S: no site module, so the development checkout's editable hook is not loaded; the wheel's
    # copy comes first, then the environment's third-party packages.
    path = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    code = """
import contextlib, io, sys
from importlib.metadata import entry_points
import lightmbert
assert lightmbert.__file__.startswith(sys.argv[1]), lightmbert.__file__
eps = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("lightmbert-")}
assert sorted(eps) == sorted(sys.argv[2:]), sorted(eps)
for name in sys.argv[2:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = eps[name].load()(["--help"])
        except SystemExit as e:
            rc = e.code
    assert rc in (0, None) and "usage" in out.getvalue().lower(), (name, rc, out.getvalue()[-500:])
    print(name, "ok")
"""
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-S", "-c", code, str(site), *SCRIPTS], cwd="/", env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count(" ok") == len(SCRIPTS), r.stdout
    # and the module form that torchrun -m / deepspeed -m use
    r = subprocess.run([sys.executable, "-S", "-m", "lightmbert.trainer.distill", "--help"], cwd="/", env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), (r.stdout + r.stderr)[-2000:]
