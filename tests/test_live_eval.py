"""Live cross-lingual evaluation during training (lightmbert.trainer.live_eval): the same numbers as
`lightmbert.evaluation.retrieval`, bit-identical training with it on or off, TensorBoard tags, a step-0
baseline that survives a restart, and the drop alarm (loud, and a stop with exit code 4)."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from lightmbert.configs import EvalConfig
from lightmbert.data_prep.synthetic import WORDS, make_tokenizer
from tests.helpers import CONFIG, REPO, env, finish, launch, trace
from lightmbert.trainer.live_eval import DropGuard, LiveEval


def test_drop_guard_needs_patience_and_resets():
    g = DropGuard(max_drop=0.02, patience=2)
    assert g.update(0.80) is False and g.baseline == 0.80          # the step-0 point
    assert [g.update(v) for v in (0.79, 0.77, 0.85, 0.77, 0.70, 0.60)] == [False, False, False, False, True, True]
    assert g.below == 3
    h = DropGuard(0.02, 2)
    h.load_state_dict(g.state_dict())
    assert (h.baseline, h.below) == (0.80, 3) and h.update(0.5) is True


def _sentences(n, seed):
    rng = random.Random(seed)
    words = [w for ws in WORDS.values() for w in ws]
    out = set()
    while len(out) < n:
        out.add(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return sorted(out)


def write_pairs(path, n=24, seed=0):
    s = _sentences(2 * n, seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):  # de: a noisy copy (learnable), ru: unrelated (chance)
            f.write(json.dumps({"en": s[i], "translations": {"de": s[i] + " hund", "ru": s[n + i]}}) + "\n")
    return path


@pytest.mark.parametrize("world", [1, 3])
def test_live_eval_equals_offline_retrieval(tmp_path, monkeypatch, world):
    """Each of `world` simulated ranks encodes its slice; gathered, the scores equal
    lightmbert.evaluation.retrieval on the same pairs (what lightmbert.demo.report computes after training)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    import lightmbert.trainer.live_eval as le
    from lightmbert.evaluation import load_pairs, retrieval
    tok_dir = make_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64), add_pooling_layer=False).train()
    pairs = write_pairs(tmp_path / "p.jsonl", n=23)   # 2 × 2 × 20 texts: not a multiple of 3
    manifest = {"packing": {"prefix": ""}, "seq_len": 32, "tokenizer": {"name": str(tok_dir)}}
    cfg = EvalConfig(pairs=str(pairs), max_pairs=20)
    evals = [LiveEval(cfg, manifest, r, world, torch.device("cpu")) for r in range(world)]

    def all_gather(parts, mine):  # stands in for the collective: each simulated rank's slice
        assert all(len(e._local(model)) == len(mine) for e in evals), "unequal slices"
        for part, e in zip(parts, evals):
            part.copy_(e._local(model))
    monkeypatch.setattr(le.dist, "all_gather", all_gather)
    got, secs = evals[0].run(model)
    assert model.training, "the student must be back in train mode"
    want = retrieval(model.eval(), AutoTokenizer.from_pretrained(tok_dir), load_pairs(pairs, max_per_language=20),
                     batch_size=cfg.batch_size)
    assert set(got) == {"de", "ru", "mean"} and got["de"]["pairs"] == 20
    for k in got:
        for d in ("en2x", "x2en", "mean"):
            assert got[k][d] == pytest.approx(want[k][d], abs=1e-9), (k, d)
    assert got["de"]["mean"] > got["ru"]["mean"]


def test_bad_eval_pairs_are_named(tmp_path):
    manifest = {"packing": {}, "seq_len": 32, "tokenizer": {"name": str(make_tokenizer(tmp_path / "tok"))}}
    with pytest.raises(ValueError, match="eval.pairs: .*missing.jsonl"):
        LiveEval(EvalConfig(pairs=str(tmp_path / "missing.jsonl")), manifest, 0, 1, torch.device("cpu"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "a", "translations": {"de": "b"}}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"eval.pairs: .*bad.jsonl:2"):
        LiveEval(EvalConfig(pairs=str(bad)), manifest, 0, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="no pairs .* for eval.languages"):
        LiveEval(EvalConfig(pairs=str(write_pairs(tmp_path / "p.jsonl")), languages=["zh"]), manifest, 0, 1,
                 torch.device("cpu"))


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    return [(e.step, e.value) for e in ev.Scalars(tag)] if tag in ev.Tags()["scalars"] else []


@pytest.mark.slow
def test_eval_on_and_off_train_bit_identically_and_log_retrieval(shards, tmp_path):
    pairs = write_pairs(tmp_path / "heldout.jsonl")
    common = ["--run.max_steps=10", "--run.save_interval=5", "--run.export=false", "--data.num_workers=2"]
    code, log = finish(launch("torchrun", tmp_path / "off", shards, *common))
    assert code == 0, log[-3000:]
    code, log = finish(launch("torchrun", tmp_path / "on", shards, *common, f"--eval.pairs={pairs}",
                              "--eval.interval=4", "--eval.max_pairs=20"))
    assert code == 0, log[-3000:]
    for rank in (0, 1):
        assert trace(tmp_path / "on", rank) == trace(tmp_path / "off", rank), f"rank {rank}: eval changed training"
    on = tmp_path / "on"
    mean = scalars(on, "eval/retrieval/mean")
    assert [s for s, _ in mean] == [0, 4, 8, 10]                    # step 0, every 4, the last step
    assert all(0.0 <= v <= 1.0 for _, v in mean)
    assert [s for s, _ in scalars(on, "eval/retrieval/de")] == [0, 4, 8, 10]
    assert [v for _, v in scalars(on, "eval/alarm")] == [0.0] * 4
    assert "[eval] step       0 | retrieval" in log and "2 languages" in log
    # a restart keeps the step-0 baseline (in the checkpoint) and does not re-evaluate step 0
    code, log2 = finish(launch("torchrun", on, shards, *common[1:], "--run.max_steps=12", f"--eval.pairs={pairs}",
                               "--eval.interval=4", "--eval.max_pairs=20"))
    assert code == 0, log2[-3000:]
    assert "resumed from step00000010" in log2 and "[eval] step       0" not in log2
    assert f"(step 0: {mean[0][1]:.4f}" in log2


DROP_DRIVER = """
import sys
import lightmbert.trainer.live_eval as le
orig, calls = le.LiveEval.run, [0]
def run(self, student):
    res, secs = orig(self, student)
    res["mean"]["mean"] = 0.9 - 0.1 * calls[0]   # every evaluation worse than the one before
    calls[0] += 1
    return res, secs
le.LiveEval.run = run
from lightmbert.trainer.distill import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_drop_alarm_is_loud_and_can_stop_the_run(shards, tmp_path):
    pairs = write_pairs(tmp_path / "heldout.jsonl")

    def run(out, *extra):
        p = subprocess.run([sys.executable, "-c", DROP_DRIVER, "--config", CONFIG, f"--data.shards={shards}",
                            f"--run.output_dir={out}", "--run.max_steps=12", "--run.save_interval=0",
                            "--run.export=false", f"--eval.pairs={pairs}", "--eval.interval=2",
                            "--eval.max_drop=0.15", "--eval.patience=2", *extra],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        return p.returncode, p.stdout + p.stderr
    # baseline 0.9; step 2: 0.8 (within 0.15), step 4: 0.7, step 6: 0.6 → 2nd below in a row at step 6
    code, log = run(tmp_path / "warn")
    assert code == 0, log[-3000:]
    assert log.count("ALARM at step") == 4 and "ALARM at step 6:" in log   # steps 6, 8, 10, 12
    assert [v for _, v in scalars(tmp_path / "warn", "eval/alarm")] == [0, 0, 0, 1, 1, 1, 1]
    code, log = run(tmp_path / "stop", "--eval.stop_on_drop=true")
    assert code == 4, log[-3000:]
    assert "ALARM at step 6:" in log and "exiting with 4" in log
    assert (tmp_path / "stop" / "checkpoints" / "latest").read_text() == "step00000006"
