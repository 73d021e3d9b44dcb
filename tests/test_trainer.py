"""lightmbert.trainer.distill on CPU (gloo, 2 processes): ZeRO 1/2/3 under torchrun and the deepspeed
launcher, exact resume after SIGKILL, checkpoint-on-SIGTERM, frozen embeddings, export,
TensorBoard tags, and clear errors before any process group can hang."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightmbert.configs import DistillConfig, load
from tests.helpers import CONFIG, REPO, env, finish, kill_tree, launch, trace

@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_train_and_loss_decreases(shards, tmp_path, launcher, stage):
    out = tmp_path / "run"
    code, log = finish(launch(launcher, out, shards, f"--engine.zero_stage={stage}",
                              "--run.max_steps=30", "--run.log_interval=1"))
    assert code == 0, log[-4000:]
    t0, t1 = trace(out, 0), trace(out, 1)
    assert [r["step"] for r in t0] == list(range(1, 31))
    assert [r["loss"] for r in t0] == [r["loss"] for r in t1]            # global mean on both
    assert [r["batch_sha256"] for r in t0] != [r["batch_sha256"] for r in t1]  # different data
    losses = [float(r["loss"]) for r in t0]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage and ds["train_batch_size"] == 16
    assert load(DistillConfig, out / "config.yaml").engine.zero_stage == stage
    assert (out / "student" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [[], ["--data.num_workers=2", "--engine.grad_accum=2", "--data.group_by_length=3"]],
                         ids=["1worker", "2workers-accum2-grouped"])
def test_exact_resume_after_sigkill(shards, tmp_path, shape):
    n = 10
    a = tmp_path / "a"
    code, log = finish(launch("torchrun", a, shards, "--run.max_steps=20", f"--run.save_interval={n}",
                              "--run.export=false", *shape))
    assert code == 0, log[-3000:]
    b = tmp_path / "b"
    p = launch("torchrun", b, shards, "--run.max_steps=20", f"--run.save_interval={n}",
               "--run.export=false", *shape)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill after step n + 3: the last checkpoint is step n
        if (b / "trace_rank0.jsonl").exists() and len(trace(b)) >= n + 3:
            break
        time.sleep(0.05)
    kill_tree(p.pid)
    p.wait()
    killed_at = len(trace(b))
    assert n < killed_at < 20, killed_at
    assert (b / "checkpoints" / "latest").read_text() == f"step{n:08d}"
    code, log = finish(launch("torchrun", b, shards, "--run.max_steps=20", f"--run.save_interval={n}",
                              "--run.export=false", *shape))
    assert code == 0, log[-3000:]
    assert "resumed from step00000010" in log and "elastic" not in log
    for rank in (0, 1):
        ta, tb = trace(a, rank), trace(b, rank)
        resumed = [r for r in tb if r["step"] > n][-(20 - n):]   # the restarted run's steps
        assert [r["step"] for r in resumed] == list(range(n + 1, 21))
        assert resumed == ta[n:], f"rank {rank}: resumed run differs from the uninterrupted one"


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_75(shards, tmp_path):
    out = tmp_path / "run"
    p = launch("python", out, shards, "--run.max_steps=100000", "--run.save_interval=0", nproc=1)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "trace_rank0.jsonl").exists() and len(trace(out)) >= 3):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    code, log = finish(p, 300)
    assert code == 75, log[-3000:]
    tag = (out / "checkpoints" / "latest").read_text()
    assert tag == f"step{trace(out)[-1]['step']:08d}"
    assert "exiting with 75" in log


@pytest.mark.slow
def test_frozen_embeddings_export_and_tensorboard(shards, tmp_path):
    from transformers import AutoModel

    from lightmbert.trainer.models import build_student, load_teacher
    out = tmp_path / "run"
    code, log = finish(launch("torchrun", out, shards, "--engine.zero_stage=3", "--run.max_steps=12",
                              "--run.log_interval=4"))
    assert code == 0, log[-3000:]
    cfg = load(DistillConfig, out / "config.yaml")
    teacher = load_teacher(cfg.teacher, False, torch.device("cpu"), torch.float32, cfg.run.seed)
    exported = AutoModel.from_pretrained(out / "student").eval()
    for (name, p), (_, q) in zip(teacher.embeddings.state_dict().items(),
                                 exported.embeddings.state_dict().items()):
        assert torch.equal(p, q), f"embedding {name} changed"
    fresh, layers = build_student(teacher, cfg.student, cfg.run.seed)
    assert layers == [0, 1]
    moved = any(not torch.equal(a, b) for a, b in zip(fresh.encoder.parameters(), exported.encoder.parameters()))
    assert moved, "the student's layers did not train"
    # the CLI export from the ZeRO-3 checkpoint gives the same model as the live export
    r = subprocess.run([sys.executable, "-m", "lightmbert.trainer.export", str(out), str(tmp_path / "cli")],
                       cwd=REPO, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    cli = AutoModel.from_pretrained(tmp_path / "cli").eval()
    ids = torch.randint(5, 280, (3, 17))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    with torch.no_grad():
        a = exported(ids, attention_mask=mask).last_hidden_state
        b = cli(ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(out / "student")("the fox")["input_ids"]
    # TensorBoard: the documented tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    for tag in ("loss/total", "loss/hidden", "loss/attention", "lr", "grad_norm",
                "throughput/tokens_per_s", "throughput/samples_per_s", "time/step_s",
                "memory/host_rss_gib", "data/skipped_batches", "data/tokens/en"):
        assert tag in tags, (tag, sorted(tags))


def test_student_layers_copied_and_embeddings_frozen_at_init():
    from lightmbert.configs import StudentConfig, TeacherConfig
    from lightmbert.trainer.models import ModelError, build_student, load_teacher
    t = load_teacher(TeacherConfig(random_init=dict(vocab_size=99, hidden_size=32, num_hidden_layers=6,
                                                    num_attention_heads=4, intermediate_size=64)),
                     False, torch.device("cpu"), torch.float32, 0)
    for sel, extra, want in [("bottom", {}, [0, 1, 2]), ("uniform", {}, [0, 2, 5]),
                             ("list", {"layers": [5, 1, 3]}, [5, 1, 3])]:
        s, layers = build_student(t, StudentConfig(num_layers=3, layer_selection=sel, **extra), 0)
        assert layers == want
        for i, j in enumerate(layers):
            for a, b in zip(s.encoder.layer[i].parameters(), t.encoder.layer[j].parameters()):
                assert torch.equal(a, b)
        assert all(not p.requires_grad for p in s.embeddings.parameters())
        assert all(p.requires_grad for p in s.encoder.parameters())
    s, _ = build_student(t, StudentConfig(num_layers=2, freeze_embeddings=False), 0)
    assert all(p.requires_grad for p in s.embeddings.parameters())
    with pytest.raises(ModelError, match="num_layers=7 > the teacher's 6"):
        build_student(t, StudentConfig(num_layers=7), 0)
    # freeze_layers: the bottom layers join the embeddings outside the optimizer
    from lightmbert.trainer.optim import param_groups
    s, _ = build_student(t, StudentConfig(num_layers=3, freeze_layers=2), 0)
    frozen = {id(p) for layer in s.encoder.layer[:2] for p in layer.parameters()}
    assert all(not p.requires_grad for layer in s.encoder.layer[:2] for p in layer.parameters())
    assert all(p.requires_grad for p in s.encoder.layer[2].parameters())
    optimised = {id(p) for g in param_groups(s, 0.01) for p in g["params"]}
    assert optimised and not optimised & frozen
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in s.named_parameters() if id(p) in optimised}
    assert trainable <= {"encoder.layer", "pooler.dense"}, trainable  # random-init teacher: a pooler
    assert {id(p) for p in s.encoder.layer[2].parameters()} <= optimised
    with pytest.raises(ValueError, match=r"freeze_layers: must be in \[0, num_layers=3\), got 3"):
        StudentConfig(num_layers=3, freeze_layers=3)


@pytest.mark.slow
def test_bad_inputs_fail_fast_under_torchrun(shards, tmp_path):
    cases = [
        (["--data.shards=/nonexistent/shards"], "no manifest"),
        (["--teacher.random_init.vocab_size=100"], "shards and teacher do not match"),
        (["--loss.layer_map=[[1,9]]"], "layer_map: pair [1, 9] out of range"),
        (["--student.num_layers=9"], "num_layers=9 > the teacher's 4"),
        (["--engine.zero_stage=5"], "zero_stage: must be 0, 1, 2 or 3"),
    ]
    for overrides, message in cases:
        t0 = time.time()
        code, log = finish(launch("torchrun", tmp_path / "x", shards, *overrides), timeout=300)
        assert code != 0 and message in log, (overrides, log[-2000:])
        assert time.time() - t0 < 120


def _tiny_teacher(mlm: bool, layers=4):
    from lightmbert.configs import TeacherConfig
    from lightmbert.trainer.models import load_teacher
    return load_teacher(TeacherConfig(random_init=dict(vocab_size=300, hidden_size=32, num_hidden_layers=layers,
                                                       num_attention_heads=4, intermediate_size=64)),
                        mlm, torch.device("cpu"), torch.float32, 0)


def _objective_step(teacher, student, loss_cfg, labels=None):
    from lightmbert.trainer.capture import ProjectionCapture
    from lightmbert.trainer.losses import DistillObjective
    obj = DistillObjective(loss_cfg, student, teacher)
    sc, tc = ProjectionCapture(student, obj.captures[0]), ProjectionCapture(teacher, obj.captures[1])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (3, 13), generator=g)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        t = teacher(ids, attention_mask=mask, output_hidden_states=True)
    s = student(ids, attention_mask=mask, output_hidden_states=True)
    total, terms = obj(s.hidden_states, t.hidden_states, sc.pop_all(), tc.pop_all(), mask, student, teacher,
                       labels)
    total.backward()
    return obj, total, terms


def test_logit_kd_and_mlm_terms_train_the_head():
    from lightmbert.configs import LossConfig, StudentConfig
    from lightmbert.trainer.models import build_student
    teacher = _tiny_teacher(mlm=True)
    student, _ = build_student(teacher, StudentConfig(num_layers=2), 0)
    labels = torch.full((3, 13), -100)
    labels[0, 3] = 17
    labels[2, 5] = 42
    _, total, terms = _objective_step(teacher, student, LossConfig(logit_weight=1.0, mlm_weight=0.5), labels)
    assert set(terms) == {"hidden", "attention", "logit", "mlm"}
    assert torch.isfinite(total) and terms["logit"] > 0 and terms["mlm"] > 0
    assert student.cls.predictions.transform.dense.weight.grad.abs().sum() > 0
    assert student.bert.embeddings.word_embeddings.weight.grad is None  # frozen (tied decoder too)


def test_narrower_student_uses_a_learned_projection():
    from lightmbert.configs import LossConfig, StudentConfig
    from lightmbert.trainer.models import ModelError, build_student
    teacher = _tiny_teacher(mlm=False)
    with pytest.raises(ModelError, match="set student.init: random"):
        build_student(teacher, StudentConfig(num_layers=2, hidden_size=16, freeze_embeddings=False), 0)
    student, _ = build_student(teacher, StudentConfig(num_layers=2, hidden_size=16, freeze_embeddings=False,
                                                      init="random"), 0)
    obj, total, terms = _objective_step(teacher, student, LossConfig())
    assert obj.proj is not None and obj.proj.weight.shape == (32, 16)
    assert obj.proj.weight.grad.abs().sum() > 0 and torch.isfinite(total)


def test_init_from_an_exported_student(tmp_path):
    from lightmbert.configs import StudentConfig
    from lightmbert.trainer.models import ModelError, build_student
    teacher = _tiny_teacher(mlm=False)
    first, _ = build_student(teacher, StudentConfig(num_layers=2, init="random", freeze_embeddings=False), 1)
    first.save_pretrained(tmp_path / "stage1")
    second, _ = build_student(teacher, StudentConfig(num_layers=2, init_from=str(tmp_path / "stage1")), 2)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ModelError, match="does not fit this student"):
        build_student(teacher, StudentConfig(num_layers=3, init_from=str(tmp_path / "stage1")), 2)


@pytest.mark.slow
def test_all_loss_terms_under_deepspeed(shards, tmp_path):
    out = tmp_path / "run"
    code, log = finish(launch("torchrun", out, shards, "--run.max_steps=6", "--run.log_interval=1",
                              "--loss.logit_weight=1.0", "--loss.mlm_weight=0.5", "--loss.attention=prob_kl",
                              "--loss.embedding_weight=0.1", "--student.freeze_embeddings=false",
                              "--loss.pooled_weight=0.5", "--loss.relation_weight=0.5"))
    assert code == 0, log[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    for tag in ("loss/logit", "loss/mlm", "loss/attention", "loss/embedding", "loss/hidden", "loss/pooled",
                "loss/relation"):
        vals = [e.value for e in ev.Scalars(tag)]
        assert len(vals) == 6 and all(v == v and v >= 0 for v in vals), (tag, vals)


NAN_DRIVER = """
import sys, torch
import lightmbert.trainer.losses as L
orig, calls = L.DistillObjective.forward, [0]
def forward(self, *a, **k):
    total, terms = orig(self, *a, **k)
    calls[0] += 1
    if calls[0] in BAD:
        total = total * float("nan")
    return total, terms
L.DistillObjective.forward = forward
from lightmbert.trainer.distill import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_counted_and_abort(shards, tmp_path):
    def run(bad, out, *extra):
        code = NAN_DRIVER.replace("BAD", repr(set(bad)))
        p = subprocess.run([sys.executable, "-c", code, "--config", CONFIG, f"--data.shards={shards}",
                            f"--run.output_dir={out}", "--run.trace=true", "--run.log_interval=1", *extra],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        return p.returncode, p.stdout + p.stderr
    code, log = run({3, 4}, tmp_path / "a", "--run.max_steps=6")
    assert code == 0, log[-3000:]
    assert "non-finite loss" in log and "(2 in a row)" in log
    t = trace(tmp_path / "a")
    assert [r["step"] for r in t] == list(range(1, 7)) and all(r["loss"] != "nan" for r in t)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(tmp_path / "a" / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    assert ev.Scalars("data/skipped_batches")[-1].value == 2
    code, log = run(set(range(1, 100)), tmp_path / "b", "--run.max_steps=6", "--run.max_bad_steps=4")
    assert code == 3 and "4 consecutive non-finite losses" in log, log[-3000:]


@pytest.mark.slow
def test_teacher_directory_with_another_tokenizer_is_refused(shards, tmp_path):
    from lightmbert.data_prep.synthetic import make_tokenizer
    from lightmbert.trainer.models import load_teacher
    cfg = load(DistillConfig, REPO / CONFIG)
    teacher = load_teacher(cfg.teacher, False, torch.device("cpu"), torch.float32, 0)
    good = tmp_path / "teacher_good"
    teacher.save_pretrained(good)
    import shutil
    manifest = json.loads((shards / "manifest.json").read_text())
    for f in Path(manifest["tokenizer"]["name"]).iterdir():
        shutil.copy(f, good / f.name)
    code, log = finish(launch("python", tmp_path / "ok", shards, f"--teacher.name_or_path={good}",
                              "--teacher.random_init={}", "--run.max_steps=2", nproc=1))
    assert code == 0, log[-3000:]
    bad = tmp_path / "teacher_bad"
    teacher.save_pretrained(bad)
    make_tokenizer(bad, extra_text=["a different vocabulary entirely"])
    code, log = finish(launch("python", tmp_path / "no", shards, f"--teacher.name_or_path={bad}",
                              "--teacher.random_init={}", "--run.max_steps=2", nproc=1))
    assert code == 2 and "differs from the teacher's own tokenizer" in log, log[-3000:]
    assert (tmp_path / "no" / ".lock").read_text() == "", "a failed start must release the run lock"


@pytest.mark.slow
def test_a_truncated_shard_ends_every_rank_with_its_name(shards, tmp_path):
    """The truncated shards are read only by rank 1's second DataLoader worker (whole shards
    go round-robin to the 4 streams): rank 1 names them, and rank 0 does not hang."""
    import shutil
    root = tmp_path / "shards"
    shutil.copytree(shards, root)
    m = json.loads((root / "manifest.json").read_text())
    de = m["languages"]["de"]["shards"]
    victims = [root / de[i]["path"] for i in range(3, len(de), 4)]   # stream 3 = rank 1, worker 1
    for v in victims:
        v.write_bytes(v.read_bytes()[: v.stat().st_size // 2])
    t0 = time.time()
    code, log = finish(launch("torchrun", tmp_path / "run", root, "--run.max_steps=200", "--data.num_workers=2",
                              "--data.languages=[de]"), timeout=300)
    assert code != 0, log[-3000:]
    assert "rank 1:" in log and "truncated" in log and any(str(v) in log for v in victims), log[-3000:]
    # every rank exits naming it (the batch agreement), none by a collective's timeout
    assert log.count("lightmbert.trainer.distill: error: rank 1:") == 2, log[-3000:]
    assert time.time() - t0 < 150
