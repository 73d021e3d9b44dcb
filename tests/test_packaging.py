"""Our top-level package `kernels` must not confuse transformers, which probes for the
unrelated Hugging Face package of the same name (hub kernels)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_transformers_bert_runs_with_our_kernels_package_installed():
    code = """
import kernels, torch, transformers
from transformers import BertConfig, BertModel
assert kernels.__file__.startswith(%r), kernels.__file__
cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37)
torch.manual_seed(0)
for attn in ("eager", "sdpa"):
    m = BertModel._from_config(cfg, attn_implementation=attn).eval()
    assert m.config._attn_implementation == attn
    out = m(torch.randint(0, 99, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 7, 32)
    assert torch.isfinite(out.last_hidden_state).all()
print("ok")
""" % str(REPO)
    r = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
