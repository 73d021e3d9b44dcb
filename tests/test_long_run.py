"""The second fault of each kind (issue #22), one test per defect, each of which failed on the
code before the fix: a second elastic resume after a stream handed out nothing; rotation and
partial saves; shard re-reads with big windows; the language mix at any stream count;
streams drifting apart; data that changed in content; rank 0's resume pick; the run lock
across hosts; errors that reach one rank only; window permutations without tables; the
Slurm template's requeue decision."""
from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from lightmbert.configs import DataConfig
from lightmbert.trainer.sampler import Cursor, LanguageOrder, Shard, permute, unconsumed
from tests.helpers import REPO

SEED = random.randrange(1 << 30)


def fake_manifest(sizes: dict[str, list[int]], sha: str = "") -> dict:
    return {"languages": {lang: {"tokens": 10 * sum(s), "shards": [
        {"path": f"{lang}-{k}.tar", "samples": n, "sha256": f"{lang}{k}{sha}"} for k, n in enumerate(s)]}
        for lang, s in sizes.items()},
        "tokenizer": {"pad_id": 0, "cls_id": 1, "sep_id": 2, "vocab_size": 50}}


def fake_ds(m, rank=0, world=1, workers=1, batch=4, group=1, weights=None, window=64):
    from lightmbert.trainer.data import MixedStream, mix_weights
    cfg = DataConfig(shards="/fake", micro_batch_size=batch, num_workers=workers, shuffle_buffer=window,
                     group_by_length=group)
    ds = MixedStream(cfg, m, weights or mix_weights(cfg, m), 0, 7, rank, world)
    ds.read = lambda shard: [np.arange(1 + k % 5) for k in range(shard.samples)]
    return ds


def job(m, world, workers, steps, saved=None, **kw):
    from lightmbert.trainer.data import InProcessLoader, StatefulLoader
    from lightmbert.trainer.data_state import resume_plan, snapshot
    parts, rows = [], []
    for rank in range(world):
        ds = fake_ds(m, rank, world, workers, **kw)
        loader = StatefulLoader(InProcessLoader(ds), ds)
        loader.restore(resume_plan(saved, ds, 1, False, lambda msg: None))
        it = iter(loader)
        for _ in range(steps):
            rows += next(it)["rows"]
        parts.append(loader.state_dict())
    return rows, snapshot(parts, ds, 1)


# 1 ------------------------------------------------------------------------------------------
def test_a_second_elastic_resume_after_streams_that_handed_out_nothing():
    """Before: a stream restored from a resize and checkpointed before its first batch was saved
    as {sid, cursors}; the next resize died with KeyError: 'pool' on every rank."""
    m = fake_manifest({"de": [50, 30], "el": [40]})
    _, saved = job(m, 2, 1, 5)
    _, saved = job(m, 1, 2, 1, saved)           # worker 1 hands out nothing before the checkpoint
    assert all(set(st) >= {"pool", "drawn", "pools", "batches", "cursors"} for st in saved["streams"].values())
    rows, saved = job(m, 3, 1, 4, saved)        # the second resize
    assert rows and saved["gen"] == 2


# 2 ------------------------------------------------------------------------------------------
class Engine:
    def __init__(self, world, fail=False):
        self.world, self.fail = world, fail

    def save_checkpoint(self, root, tag, client_state, save_latest):
        os.makedirs(os.path.join(root, tag), exist_ok=True)
        for r in range(self.world):
            open(os.path.join(root, tag, f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"), "w").close()
            if self.fail:
                raise KeyboardInterrupt("preempted while saving")


@pytest.mark.parametrize("keep", [1, 2])
def test_a_second_preempted_save_never_deletes_the_only_complete_checkpoint(tmp_path, keep):
    """Before: preempted while saving 237, resumed from 200, preempted again at 230 → rotation by
    name kept the partial 237 (and 238) and deleted 230: "none of the checkpoints is complete"."""
    from lightmbert.trainer.checkpoint import Checkpointer
    Checkpointer(tmp_path, keep, 0, world=2).save(Engine(2), 200, {})
    for step in (237, 238)[:keep]:
        with pytest.raises(KeyboardInterrupt):
            Checkpointer(tmp_path, keep, 0, world=2).save(Engine(2, fail=True), step, {})
    ck = Checkpointer(tmp_path, keep, 0, world=2)
    assert ck.resume_tag() == "step00000200"     # and the partial tags are set aside
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("partial-")) == \
        [f"partial-step{s:08d}" for s in (237, 238)[:keep]]
    ck.save(Engine(2), 230, {})
    again = Checkpointer(tmp_path, keep, 0, world=2)
    assert again.latest() == "step00000230"
    assert not list((tmp_path / "checkpoints").glob("partial-*")), "rotation removes the partial saves"


def test_a_preempted_first_save_restarts_from_step_0(tmp_path):
    """Found by the chaos test: the run's very first save cut short left only a partial tag, and
    every requeue then failed with "none of the checkpoints is complete" (exit 2, for good)."""
    from lightmbert.trainer.checkpoint import Checkpointer
    with pytest.raises(KeyboardInterrupt):
        Checkpointer(tmp_path, 2, 0, world=2).save(Engine(2, fail=True), 10, {})
    ck = Checkpointer(tmp_path, 2, 0, world=2)
    assert ck.resume_tag() is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["partial-step00000010"]
    ck.save(Engine(2), 10, {})                    # the same step again, from an empty directory
    assert Checkpointer(tmp_path, 2, 0, world=2).latest() == "step00000010"
    assert not list((tmp_path / "checkpoints").glob("partial-*"))


def test_a_save_into_an_existing_partial_tag_starts_empty(tmp_path):
    """Before: a 4-rank partial save's zero_pp_rank_2/3 files stayed beside a 2-rank save."""
    from lightmbert.trainer.checkpoint import Checkpointer
    with pytest.raises(KeyboardInterrupt):
        Engine(4, fail=True).save_checkpoint(str(tmp_path / "checkpoints"), "step00000010", {}, False)
    for r in range(4):
        (tmp_path / "checkpoints" / "step00000010" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").touch()
    Checkpointer(tmp_path, 2, 0, world=2).save(Engine(2), 10, {})
    names = sorted(p.name for p in (tmp_path / "checkpoints" / "step00000010").glob("zero_pp_rank_*"))
    assert names == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]


# 3 ------------------------------------------------------------------------------------------
def epoch_reads(sizes, window, streams):
    """Shard reads of every stream reading one whole epoch of a language."""
    from lightmbert.trainer.data import ShardCache
    order = LanguageOrder("xx", [Shard(f"s{k}", n, "") for k, n in enumerate(sizes)], 5, window)
    total = 0
    for sid in range(streams):
        cache = ShardCache(order, lambda shard: [np.zeros(1)] * shard.samples)
        cursor = Cursor(order.n, streams, sid)
        for _ in range(-(-order.n // streams)):
            cache.get(*cursor.take())
        total += cache.reads
    return total


@pytest.mark.parametrize("sizes,window,streams,ideal", [
    ([1000] * 20, 5000, 1, 20),                                   # before: 11,943 reads
    ([10_000] * 10 + [20] * 5 + [10_000] * 10, 1000, 1, 25),      # before: 145
    ([1000] * 16, 64, 256, 16 + 256),                             # every stream: its 1–2 shards
    ([1000] * 20, 5000, 7, 20 + 7)])
def test_shard_reads_per_epoch_are_bounded_by_shards_plus_streams(sizes, window, streams, ideal):
    assert epoch_reads(sizes, window, streams) <= ideal


# 4 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [1, 64, 256])
def test_the_language_mix_is_the_target_at_any_stream_count(streams):
    """Before: a language with fewer samples than streams got q·E/S (0.195 for 0.5 at 256)."""
    m = fake_manifest({"big": [5000], "tiny": [100]})
    rows = []
    for rank in range(streams):
        ds = fake_ds(m, rank, streams, 1, batch=8, weights={"big": 0.5, "tiny": 0.5})
        it = ds.stream(0).rows()
        for _ in range(4 if streams > 1 else 500):
            rows += [r for _, _, r in next(it)[0]]
    share = Counter(r[0] for r in rows)[1] / len(rows)
    assert abs(share - 0.5) <= 0.02, (streams, share)


# 5 ------------------------------------------------------------------------------------------
def leftover_after(batches: int, group: int = 1) -> tuple[int, int, dict]:
    """(pending intervals, pending positions, cut) of the small language after 64 ranks × 4
    workers each took `batches` micro-batches and the job was resized to 48 × 4 streams (what
    every rank's resume_plan re-splits, summed over the new streams)."""
    from lightmbert.trainer.data_state import resume_plan
    m = fake_manifest({"big": [100_000], "small": [300]})
    _, saved = job(m, 64, 4, batches, batch=8, group=group)
    intervals = positions = 0
    cut: dict = {}
    for rank in range(48):
        plan = resume_plan(saved, fake_ds(m, rank, 48, 4, batch=8, group=group), 1, False, lambda msg: None)
        cut = plan["cut"]
        for st in plan["streams"].values():
            pending = st.cursors["small"]["pending"]
            intervals += len(pending)
            positions += sum(b - a for _, a, b, _ in pending)
    return intervals, positions, cut


def test_streams_stay_in_step_so_the_elastic_leftover_does_not_grow():
    """Before: 76,765 pending intervals after 10k micro-batches, 722,971 after 100k."""
    early, late = leftover_after(5), leftover_after(60)
    P = 256 * 2                                   # an epoch of 300 samples laid out for 256 streams
    assert not early[2] and not late[2], (early, late)          # nothing cut
    assert late[1] <= 2 * P and late[0] <= 2 * 256 + 192, (early, late)
    assert late[0] <= early[0] + 256 and late[1] <= early[1] + P, (early, late)


def test_one_resize_with_length_grouping_cuts_nothing():
    """A partly handed-out pool returns positions scattered by the length sort (review)."""
    assert leftover_after(6, group=8)[2] == {}


# 6 ------------------------------------------------------------------------------------------
def test_changed_shard_content_or_pairs_is_noticed():
    from lightmbert.trainer.data import DataError
    from lightmbert.trainer.data_state import order_of, resume_plan
    m = fake_manifest({"de": [50, 30], "el": [40]})
    _, saved = job(m, 1, 1, 3)
    other = fake_manifest({"de": [50, 30], "el": [40]}, sha="-reprepared")  # same names and counts
    with pytest.raises(DataError, match=r"shards of 'de'; shards of 'el'"):
        resume_plan(saved, fake_ds(other), 1, False, print)
    ds = fake_ds(m)
    ds.parallel = object()   # pairs on: their shards are part of the digest
    ds.manifest = {**m, "parallel": {"shards": [{"path": "p0.tar", "samples": 9, "sha256": "a"}]}}
    with_pairs = order_of(ds)
    ds.manifest["parallel"]["shards"][0]["sha256"] = "b"
    assert order_of(ds)["parallel"] != with_pairs["parallel"]
    saved2 = {**saved, "order": with_pairs}
    with pytest.raises(DataError, match="translation-pair shards"):
        resume_plan(saved2, ds, 1, False, print)


# 7 + 9 ---------------------------------------------------------------------------------------
def _two_ranks(rank, tmp, fn):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        fn(rank, tmp)
    finally:
        dist.destroy_process_group()


def _pick(rank, tmp):
    from pathlib import Path

    from lightmbert.trainer.checkpoint import Checkpointer
    # rank 1 sees a stale copy of the directory (NFS attribute caching): it must follow rank 0
    ck = Checkpointer(Path(tmp) / ("run" if rank == 0 else "stale"), 2, rank, world=2)
    Path(tmp, f"pick{rank}").write_text(f"{ck.resume_tag()} {ck.saved_world()}")


def _batch(rank, tmp):
    from pathlib import Path

    from lightmbert.data_prep.tarreader import ShardError
    from lightmbert.trainer.step import DataFailure, Stepper

    def data():
        yield {}
        if rank == 1:
            raise ShardError("/data/de-000003.tar: truncated")
        yield {}

    def garbled():
        if rank == 0:
            raise ValueError("invalid literal for int() with base 8")
        yield from ({}, {})
    s = Stepper(None, None, None, "cpu", 2, 2, 3, False, [], None, print, rank)
    got = []
    for it in (data(), garbled()):
        try:
            s.next_batches(it, 2)
            got.append("no error")
        except DataFailure as e:
            got.append(str(e))
    Path(tmp, f"batch{rank}").write_text(" | ".join(got))


@pytest.mark.parametrize("what", ["pick", "batch"])
def test_decisions_and_data_errors_reach_every_rank(tmp_path, what):
    import torch.multiprocessing as mp
    from tests.test_distributed_state import make_ckpt
    make_ckpt(tmp_path / "run", 20, world=1)
    make_ckpt(tmp_path / "stale", 10, world=2)
    mp.spawn(_two_ranks, args=(str(tmp_path), _pick if what == "pick" else _batch), nprocs=2, join=True)
    got = [(tmp_path / f"{what}{r}").read_text() for r in (0, 1)]
    if what == "pick":
        assert got == ["step00000020 1"] * 2
    else:
        assert got == ["rank 1: /data/de-000003.tar: truncated | "
                       "rank 0: ValueError: invalid literal for int() with base 8"] * 2


def test_a_data_reset_never_replays_the_first_epochs():
    """data.reset_position (or an older data entry) starts fresh epochs no position reached:
    epoch numbers key the orders, so epoch 0 again would replay the run's first batches."""
    from lightmbert.trainer.data_state import resume_plan
    m = fake_manifest({"de": [50, 30], "el": [40]})
    rows, saved = job(m, 1, 1, 3)
    again, saved2 = job(m, 1, 1, 3, {**saved, "version": 1})
    assert {r[1] for r in rows} == {0} and min(r[1] for r in again) >= 1 << 20
    plan = resume_plan({**saved2, "order": {**saved2["order"], "seed": 8}}, fake_ds(m), 1, True, lambda msg: None)
    assert plan["epoch_base"] == 2 << 20
    third, saved3 = job(m, 1, 1, 2, saved2)           # the base survives a same-shape resume
    assert min(r[1] for r in third) >= 1 << 20 and saved3["epoch_base"] == 1 << 20


def test_every_language_is_checked_when_the_dataset_is_built():
    from lightmbert.trainer.data import DataError
    m = fake_manifest({"de": [50], "el": [0, 0]})
    with pytest.raises(DataError, match=r"\['el'\] have no samples"):
        fake_ds(m, weights={"de": 0.5, "el": 0.5})


# 8 ------------------------------------------------------------------------------------------
def test_a_live_run_on_another_host_is_refused_a_dead_one_taken_over(tmp_path, monkeypatch, capsys):
    """Before: where flock is node-local the second job took over a live one with a warning."""
    from lightmbert.trainer import runlock
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(runlock, "STALE_S", 4.0)
    monkeypatch.setattr(runlock, "WATCH_S", 0.6)
    path = tmp_path / ".lock"
    stop = threading.Event()

    def other_host():   # a live holder elsewhere: its heartbeat moves (whole records, as its pwrite)
        while not stop.is_set():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"host": "node-b", "pid": 1, "heartbeat": time.time(), "command": "B"}))
            os.replace(tmp, path)
            time.sleep(0.05)
    t = threading.Thread(target=other_host)
    t.start()
    time.sleep(0.1)
    try:
        with pytest.raises(runlock.RunLocked, match=r"on another host.*node-b.*heartbeat is fresh"):
            runlock.RunLock(tmp_path).acquire("A")
    finally:
        stop.set()
        t.join()
    # the holder died: a heartbeat that no longer moves, or one older than STALE_S
    for beat in (time.time(), time.time() - 60):
        path.write_text(json.dumps({"host": "node-b", "pid": 1, "heartbeat": beat, "command": "B"}))
        lock = runlock.RunLock(tmp_path)
        lock.acquire("A")
        assert "taking over" in capsys.readouterr().err
        record = json.loads(path.read_text())
        time.sleep(0.5)
        assert json.loads(path.read_text())["heartbeat"] > record["heartbeat"], "the holder's heartbeat moves"
        lock.release()
        assert path.read_text() == ""
    # a longer record left by a dead holder: ours replaces it whole (valid JSON, no stale tail)
    path.write_text(json.dumps({"host": "node-b", "pid": 1, "heartbeat": time.time() - 60, "command": "B" * 3000}))
    lock = runlock.RunLock(tmp_path)
    lock.acquire("A")
    time.sleep(0.3)
    assert json.loads(path.read_text())["command"] == "A"
    lock.release()


# 10 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3, 7, 64, 1000, 4097])
def test_window_permutation_is_a_seeded_bijection(m):
    key = SEED
    out = [permute(i, m, key) for i in range(m)]
    assert sorted(out) == list(range(m)), f"seed {SEED}"
    if m >= 64:
        assert out != list(range(m)) and out != [permute(i, m, key + 1) for i in range(m)], f"seed {SEED}"


def test_a_huge_window_needs_no_table():
    """Before: a permutation list per window (shuffle_buffer 1e6: 38 MiB per language)."""
    order = LanguageOrder("xx", [Shard(f"s{k}", 100_000, "") for k in range(20)], 3, 1_000_000)
    tracemalloc.start()
    got = {order.locate(0, p, 1)[2] for p in range(0, 2_000_000, 997)}
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20 and len(got) == len(range(0, 2_000_000, 997)), peak


# 11 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainer,srun,preempted,restarts,requeued", [
    (75, 1, False, 0, True),       # torchrun turns the worker's 75 into 1: the exit file says 75
    (None, 137, True, 0, True),    # killed before the trainer could report: resume from the last checkpoint
    (None, 1, True, 0, True),
    (2, 1, True, 0, False), (3, 1, True, 0, False), (4, 1, True, 0, False), (0, 0, True, 0, False),
    (None, 1, False, 0, False),    # a crash without a signal
    (75, 1, False, 50, False)])    # the cap on restarts
def test_slurm_template_requeues_only_what_can_resume(tmp_path, trainer, srun, preempted, restarts, requeued):
    """Before: any non-zero exit after a recorded PreemptTime requeued (a bad config: forever)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    report = f'echo {trainer} > "$LIGHTMBERT_EXIT_FILE"\n' if trainer is not None else ""
    (bin_ / "srun").write_text(f"#!/bin/sh\n{report}exit {srun}\n")
    (bin_ / "scontrol").write_text(
        "#!/bin/sh\n"
        f"case \"$1 $2\" in\n"
        f"  'show hostnames') echo n1;;\n"
        f"  'show node') echo 'NodeAddr=127.0.0.1';;\n"
        f"  'show job') echo 'JobId=7 PreemptTime={'2026-12-05T10:00:00' if preempted else 'None'}';;\n"
        f"  requeue*) echo requeue >> {tmp_path}/requeued;;\n"
        "esac\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1",
           "SLURM_NNODES": "1", "SLURM_RESTART_COUNT": str(restarts), "LIGHTMBERT_PYTHON": "python",
           "LIGHTMBERT_EXIT_FILE": str(tmp_path / "exit")}
    r = subprocess.run(["bash", str(REPO / "slurm" / "distill.sh"), "configs/distill/tiny_cpu.yaml"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert (tmp_path / "requeued").exists() == requeued, r.stdout + r.stderr
    assert r.returncode == (0 if requeued else trainer if trainer is not None else srun), r.stdout + r.stderr
    assert not (tmp_path / "exit").exists()


def test_rank0_reports_the_trainer_exit_code(tmp_path, monkeypatch):
    from lightmbert.trainer.distill import main
    monkeypatch.setenv("LIGHTMBERT_EXIT_FILE", str(tmp_path / "exit"))
    assert main(["--config", "configs/distill/tiny_cpu.yaml", "--run.max_steps=-1"]) == 2   # a bad config
    assert (tmp_path / "exit").read_text() == "2\n"
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "exit").unlink()
    main(["--config", "configs/distill/tiny_cpu.yaml", "--run.max_steps=-1"])
    assert not (tmp_path / "exit").exists(), "only rank 0 reports"


def test_a_window_too_big_for_memory_is_a_warning_naming_it(capsys):
    fake_ds(fake_manifest({lang: [100_000] * 30 for lang in ("de", "el")}), window=10_000_000)
    assert "data.shuffle_buffer 10000000" in capsys.readouterr().err
    fake_ds(fake_manifest({"de": [1000] * 5}), window=1000)
    assert "shuffle_buffer" not in capsys.readouterr().err
