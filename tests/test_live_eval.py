"""Live cross-lingual evaluation during training (lightmbert.trainer.live_eval): the same numbers as
`lightmbert.evaluation.retrieval`, bit-identical training with it on or off, TensorBoard tags, a step-0
baseline that survives a restart, and the drop alarm (loud, and a stop with exit code 4) — for
eval.pairs and any number of eval.sets, all encoded in one sharded pass, each with its own guard."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from lightmbert.configs import ConfigError, DistillConfig, EvalConfig, EvalSetConfig, load
from lightmbert.data_prep.synthetic import WORDS, make_tokenizer
from tests.helpers import CONFIG, REPO, env, finish, launch, trace
from lightmbert.trainer.live_eval import HELDOUT, DropGuard, LiveEval


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
    """Each of `world` simulated ranks encodes its slice of both sets' texts; gathered once, each
    set's scores equal lightmbert.evaluation.retrieval on its own pairs (what
    lightmbert.demo.report computes after training)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    import lightmbert.trainer.live_eval as le
    from lightmbert.evaluation import load_pairs, retrieval
    tok_dir = make_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64), add_pooling_layer=False).train()
    pairs = write_pairs(tmp_path / "p.jsonl", n=23)   # 3 × 20 distinct texts (en recurs in de and ru)
    ood = write_pairs(tmp_path / "ood.jsonl", n=9, seed=1)  # + the second set's 2 × 7: not a multiple of 3
    manifest = {"packing": {"prefix": ""}, "seq_len": 32, "tokenizer": {"name": str(tok_dir)}}
    cfg = EvalConfig(pairs=str(pairs), max_pairs=20,
                     sets={"ood": EvalSetConfig(pairs=str(ood), languages=["de"], max_pairs=7)})
    evals = [LiveEval(cfg, manifest, r, world, torch.device("cpu")) for r in range(world)]
    passes = []

    def all_gather(parts, mine):  # stands in for the collective: each simulated rank's slice
        passes.append(len(mine))
        assert all(len(e._local(model)) == len(mine) for e in evals), "unequal slices"
        for part, e in zip(parts, evals):
            part.copy_(e._local(model))
    monkeypatch.setattr(le.dist, "all_gather", all_gather)
    encode, encoded = le.encode, []
    monkeypatch.setattr(le, "encode", lambda m, t, texts, *a: encoded.append(len(texts)) or encode(m, t, texts, *a))
    got, secs = evals[0].run(model)
    assert model.training, "the student must be back in train mode"
    # one pass for both sets: one gather (world 3), one encode call of every distinct text (world 1)
    distinct = {t for p in load_pairs(pairs, None, 20).values() for pr in p for t in pr} \
        | {t for p in load_pairs(ood, ["de"], 7).values() for pr in p for t in pr}
    assert len(distinct) == 60 + 14 and sorted(evals[0].texts) == sorted(distinct)
    assert passes == ([-(-74 // 3)] if world > 1 else []) and (world > 1 or encoded == [74])
    assert list(got) == [HELDOUT, "ood"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for name, path, langs, n in ((HELDOUT, pairs, None, 20), ("ood", ood, ["de"], 7)):
        want = retrieval(model.eval(), tok, load_pairs(path, langs, max_per_language=n), batch_size=cfg.batch_size)
        model.train()
        assert set(got[name]) == set(want) and got[name]["de"]["pairs"] == n, name
        for k in want:
            for d in ("en2x", "x2en", "mean"):
                assert got[name][k][d] == pytest.approx(want[k][d], abs=1e-9), (name, k, d)
    assert set(got[HELDOUT]) == {"de", "ru", "mean"} and set(got["ood"]) == {"de", "mean"}
    assert got[HELDOUT]["de"]["mean"] > got[HELDOUT]["ru"]["mean"]


def test_bad_eval_pairs_are_named(tmp_path):
    manifest = {"packing": {}, "seq_len": 32, "tokenizer": {"name": str(make_tokenizer(tmp_path / "tok"))}}
    with pytest.raises(ValueError, match="eval.pairs: .*missing.jsonl"):
        LiveEval(EvalConfig(pairs=str(tmp_path / "missing.jsonl")), manifest, 0, 1, torch.device("cpu"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "a", "translations": {"de": "b"}}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"eval.pairs: .*bad.jsonl:2"):
        LiveEval(EvalConfig(pairs=str(bad)), manifest, 0, 1, torch.device("cpu"))
    good = str(write_pairs(tmp_path / "p.jsonl"))
    with pytest.raises(ValueError, match="no pairs .* for eval.languages"):
        LiveEval(EvalConfig(pairs=good, languages=["zh"]), manifest, 0, 1, torch.device("cpu"))
    # an extra set's errors name its own keys
    with pytest.raises(ValueError, match=r"eval.sets.ood.pairs: .*missing.jsonl"):
        LiveEval(EvalConfig(pairs=good, sets={"ood": EvalSetConfig(str(tmp_path / "missing.jsonl"))}), manifest,
                 0, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"eval.sets.ood.pairs: no pairs .* for eval.sets.ood.languages \['zh'\]"):
        LiveEval(EvalConfig(sets={"ood": EvalSetConfig(good, languages=["zh"])}), manifest, 0, 1,
                 torch.device("cpu"))


BASE = ["--run.output_dir=o", "--teacher.name_or_path=t", "--data.shards=s"]


def test_eval_sets_config_names_the_bad_key(tmp_path):
    """eval.sets from YAML and from the command line; a bad name, an empty or missing `pairs` and
    an unknown key are errors that name the key."""
    yml = tmp_path / "d.yaml"
    yml.write_text("eval:\n  pairs: in.jsonl\n  sets:\n    ood: {pairs: ood.jsonl, languages: [de], max_pairs: 5}\n")
    cfg = load(DistillConfig, yml, BASE + ["--eval.sets.ood.max_pairs=7", "--eval.sets.web_2.pairs=2024"])
    assert cfg.eval.sets == {"ood": EvalSetConfig("ood.jsonl", ["de"], 7), "web_2": EvalSetConfig("2024")}
    assert cfg.eval.enabled and not load(DistillConfig, None, BASE).eval.enabled
    cfg = load(DistillConfig, yml, BASE + ['--eval.pairs=', '--eval.sets={"x": {"pairs": "x.jsonl"}}'])
    assert cfg.eval.sets == {"x": EvalSetConfig("x.jsonl")} and cfg.eval.enabled  # replaced, not merged
    for override, error in [
        ('--eval.sets={"Out-Of-Domain": {"pairs": "x.jsonl"}}', r"^eval\.sets: bad set name 'Out-Of-Domain'"),
        ('--eval.sets={"heldout": {"pairs": "x.jsonl"}}', r"^eval\.sets: set name 'heldout' is reserved"),
        ('--eval.sets={"ood": {"pairs": ""}}', r"^eval\.sets\.ood\.pairs: must be a non-empty path"),
        ('--eval.sets={"ood": {"languages": [de]}}', r"^eval\.sets\.ood\.pairs: missing required value"),
        ("--eval.sets.ood.pairz=x.jsonl", r"^eval\.sets\.ood\.pairz: unknown key .*known keys here: languages"),
        ("--eval.sets.ood.max_pairs=0", r"^eval\.sets\.ood\.max_pairs: must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=error):
            load(DistillConfig, None, BASE + ["--eval.sets.ood.pairs=x.jsonl", override])


def _results(**means):
    """What LiveEval.run returns, reduced to what the guards read."""
    return {name: {"mean": {"mean": v}} for name, v in means.items()}


def _two_sets(tmp_path, **kw):
    manifest = {"packing": {}, "seq_len": 32, "tokenizer": {"name": str(make_tokenizer(tmp_path / "tok"))}}
    cfg = EvalConfig(pairs=str(write_pairs(tmp_path / "p.jsonl", n=4)), max_drop=0.02, patience=2,
                     sets={"ood": EvalSetConfig(str(write_pairs(tmp_path / "o.jsonl", n=4, seed=1)))}, **kw)
    return LiveEval(cfg, manifest, 0, 1, torch.device("cpu"))


def test_alarm_when_only_the_second_set_drops(tmp_path, capsys):
    """One guard per set, each against its own step-0 value: the held-out set steady, the
    out-of-domain one falling → the alarm, naming `ood` and its values; one `eval/alarm`."""
    from lightmbert.trainer.metrics import Metrics
    ev = _two_sets(tmp_path)
    assert ev.needs_baseline()
    metrics = Metrics(tmp_path / "run", 0, 10, 0, 1, False, 1)
    got = []
    for step, (h, o) in enumerate([(0.50, 0.90), (0.51, 0.80), (0.50, 0.70), (0.49, 0.60)]):
        res = _results(heldout=h, ood=o)
        got.append(ev.update(res, step))
        metrics.evaluation(step, res, ev.guards, got[-1], 1.0)
    metrics.close()
    assert got == [[], [], ["ood"], ["ood"]]
    assert not ev.needs_baseline() and ev.guards[HELDOUT].below == 0 and ev.guards["ood"].below == 3
    out = capsys.readouterr().out
    assert out.count("ALARM at step") == 2
    assert "eval.sets.ood (ood): 0.7000 vs 0.9000 at step 0 (-0.2000, 2 evaluations in a row)" in out
    assert "eval.pairs" not in out.split("ALARM at step 2")[1].split("\n")[0]   # only the set that dropped
    assert "[eval] step       1 | retrieval 0.5100 (step 0: 0.5000, +0.0100)" in out
    assert "[eval] step       1 | ood retrieval 0.8000 (step 0: 0.9000, -0.1000)" in out
    run = tmp_path / "run"
    assert [v for _, v in scalars(run, "eval/alarm")] == [0, 0, 1, 1]
    assert [round(v, 4) for _, v in scalars(run, "eval/ood/retrieval/mean")] == [0.9, 0.8, 0.7, 0.6]
    assert [round(v, 4) for _, v in scalars(run, "eval/ood/retrieval/drop")] == [0.0, 0.1, 0.2, 0.3]
    assert [round(v, 4) for _, v in scalars(run, "eval/retrieval/mean")] == [0.5, 0.51, 0.5, 0.49]


def test_guard_state_old_format_and_added_sets(tmp_path):
    """The checkpointed guards: every set's round-trips; a state written before eval.sets
    ({"baseline", "below"}) is the held-out set's; a set the state lacks (added on the resume)
    takes its baseline at its first evaluation — at that step, not step 0."""
    ev = _two_sets(tmp_path)
    assert ev.load_state_dict({"baseline": 0.8, "below": 1}) == ["ood"]
    h, o = ev.guards[HELDOUT], ev.guards["ood"]
    assert (h.baseline, h.below, h.baseline_step) == (0.8, 1, 0) and o.baseline is None and ev.needs_baseline()
    assert ev.update(_results(heldout=0.7, ood=0.4), 12) == [HELDOUT]    # 2nd below in a row
    assert (o.baseline, o.baseline_step, o.below) == (0.4, 12, 0)
    state = ev.state_dict()
    assert state == {"sets": {HELDOUT: {"baseline": 0.8, "below": 2, "baseline_step": 0},
                              "ood": {"baseline": 0.4, "below": 0, "baseline_step": 12}}}
    again = _two_sets(tmp_path)
    assert again.load_state_dict(state) == [] and again.state_dict() == state
    # a run without eval.pairs: the old state has no set to go to; an unknown set's state is dropped
    only = _two_sets(tmp_path)
    only.guards.pop(HELDOUT)
    assert only.load_state_dict({"baseline": 0.8, "below": 1}) == ["ood"]
    assert only.load_state_dict({"sets": {"gone": {"baseline": 0.1}}}) == ["ood"]
    assert only.load_state_dict({}) == ["ood"]   # a checkpoint of a run without live eval


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    return [(e.step, e.value) for e in ev.Scalars(tag)] if tag in ev.Tags()["scalars"] else []


@pytest.mark.slow
def test_eval_on_and_off_train_bit_identically_and_log_retrieval(shards, tmp_path):
    """Two sets in one run (eval.pairs and eval.sets.ood): training is bit-identical to a run
    without evaluation, both sets' tags are logged; a restart keeps both baselines, and a set
    added on the restart takes its baseline at its first evaluation."""
    pairs = write_pairs(tmp_path / "heldout.jsonl")
    ood = write_pairs(tmp_path / "ood.jsonl", n=10, seed=3)
    common = ["--run.max_steps=10", "--run.save_interval=5", "--run.export=false", "--data.num_workers=2"]
    code, log = finish(launch("torchrun", tmp_path / "off", shards, *common))
    assert code == 0, log[-3000:]
    evals = [f"--eval.pairs={pairs}", "--eval.interval=4", "--eval.max_pairs=20"]
    code, log = finish(launch("torchrun", tmp_path / "on", shards, *common, *evals,
                              f"--eval.sets.ood.pairs={ood}", "--eval.sets.ood.languages=[de]"))
    assert code == 0, log[-3000:]
    for rank in (0, 1):
        assert trace(tmp_path / "on", rank) == trace(tmp_path / "off", rank), f"rank {rank}: eval changed training"
    on = tmp_path / "on"
    mean = scalars(on, "eval/retrieval/mean")
    assert [s for s, _ in mean] == [0, 4, 8, 10]                    # step 0, every 4, the last step
    assert all(0.0 <= v <= 1.0 for _, v in mean)
    assert [s for s, _ in scalars(on, "eval/retrieval/de")] == [0, 4, 8, 10]
    ood_mean = scalars(on, "eval/ood/retrieval/mean")
    assert [s for s, _ in ood_mean] == [0, 4, 8, 10] and all(0.0 <= v <= 1.0 for _, v in ood_mean)
    assert [s for s, _ in scalars(on, "eval/ood/retrieval/de")] == [0, 4, 8, 10]
    assert scalars(on, "eval/ood/retrieval/ru") == []             # eval.sets.ood.languages
    assert [v for _, v in scalars(on, "eval/alarm")] == [0.0] * 4
    assert "[eval] step       0 | retrieval" in log and "2 languages" in log
    assert "[eval] step       0 | ood retrieval" in log and "1 languages, " in log and "for 2 sets" in log
    # a restart keeps the step-0 baselines (in the checkpoint) and does not re-evaluate step 0;
    # the set added now ("late") is compared against its first evaluation, at step 12
    code, log2 = finish(launch("torchrun", on, shards, *common[1:], "--run.max_steps=12", *evals,
                               f'--eval.sets={{"ood": {{"pairs": "{ood}", "languages": ["de"]}}, '
                               f'"late": {{"pairs": "{ood}"}}}}'))
    assert code == 0, log2[-3000:]
    assert "resumed from step00000010" in log2 and "[eval] step       0" not in log2
    assert f"(step 0: {mean[0][1]:.4f}" in log2
    assert f"(step 0: {ood_mean[0][1]:.4f}" in log2.split("[eval] step      12 | ood")[1]
    assert "no baseline in the checkpoint for late" in log2 and "late retrieval" in log2
    assert "(step 12: " in log2.split("[eval] step      12 | late")[1]
    assert [s for s, _ in scalars(on, "eval/late/retrieval/mean")] == [12]


DROP_DRIVER = """
import os, sys
import lightmbert.trainer.live_eval as le
orig, calls = le.LiveEval.run, [0]
def run(self, student):
    res, secs = orig(self, student)
    # the set named in DROP_SET: every evaluation worse than the one before
    res[os.environ["DROP_SET"]]["mean"]["mean"] = 0.9 - 0.1 * calls[0]
    calls[0] += 1
    return res, secs
le.LiveEval.run = run
from lightmbert.trainer.distill import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_drop_alarm_is_loud_and_can_stop_the_run(shards, tmp_path):
    """The held-out set dropping → a loud alarm each evaluation; with a second set, its drop
    alone (the held-out set as it is) raises the alarm and stops the run with exit code 4."""
    pairs = write_pairs(tmp_path / "heldout.jsonl")

    def run(out, drop_set, *extra):
        p = subprocess.run([sys.executable, "-c", DROP_DRIVER, "--config", CONFIG, f"--data.shards={shards}",
                            f"--run.output_dir={out}", "--run.max_steps=12", "--run.save_interval=0",
                            "--run.export=false", f"--eval.pairs={pairs}", "--eval.interval=2",
                            "--eval.max_drop=0.15", "--eval.patience=2", *extra],
                           cwd=REPO, env=dict(env(), DROP_SET=drop_set), capture_output=True, text=True,
                           timeout=600)
        return p.returncode, p.stdout + p.stderr
    # baseline 0.9; step 2: 0.8 (within 0.15), step 4: 0.7, step 6: 0.6 → 2nd below in a row at step 6
    code, log = run(tmp_path / "warn", "heldout")
    assert code == 0, log[-3000:]
    assert log.count("ALARM at step") == 4 and "ALARM at step 6:" in log   # steps 6, 8, 10, 12
    assert "eval.pairs (heldout): 0.6000 vs 0.9000 at step 0 (-0.3000, 2 evaluations in a row)" in log
    assert [v for _, v in scalars(tmp_path / "warn", "eval/alarm")] == [0, 0, 0, 1, 1, 1, 1]
    code, log = run(tmp_path / "stop", "ood", "--eval.stop_on_drop=true", f"--eval.sets.ood.pairs={pairs}")
    assert code == 4, log[-3000:]
    alarm = log[log.index("ALARM at step 6:"):].splitlines()[0]
    assert "on 1 set(s): eval.sets.ood (ood): 0.6000 vs 0.9000" in alarm and "heldout" not in alarm
    assert "live retrieval of ood stayed below" in log and "exiting with 4" in log
    assert (tmp_path / "stop" / "checkpoints" / "latest").read_text() == "step00000006"
    assert [v for _, v in scalars(tmp_path / "stop", "eval/alarm")] == [0, 0, 0, 1]
