"""The data position (trainer/data.py streams + trainer/data_state.py) in one process, ranks
and DataLoader workers simulated: exact continuation on the same shape (also through real
DataLoader workers), O(1) restore, every sample once per epoch across shape changes
(2 ranks × 2 workers → 1 × 1 → 3 × 2, other micro-batch sizes and grouping), and a clear
error when the data itself changed."""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from lightmbert.configs import DataConfig
from lightmbert.data_prep.manifest import read_manifest
from tests.helpers import take

SEED = random.randrange(1 << 30)


def make_ds(shards, rank=0, world=1, workers=0, batch=5, group=3, seed=7, **kw):
    from lightmbert.trainer.data import MixedStream, mix_weights
    cfg = DataConfig(shards=str(shards), micro_batch_size=batch, num_workers=workers, shuffle_buffer=20,
                     group_by_length=group, **kw)
    m = read_manifest(shards)
    return MixedStream(cfg, m, mix_weights(cfg, m), 0, seed, rank, world)


class RoundRobin:
    """What a DataLoader with W workers makes of our endless streams: worker w plays the
    stream of role (w + first_role) % W, batches taken in turn."""

    def __init__(self, ds):
        self.ds = ds

    def __iter__(self):
        W = self.ds.workers
        its = [iter(self.ds.stream((w + self.ds.first_role) % W)) for w in range(W)]
        for k in itertools.count():
            batch, state = next(its[k % W])
            batch["_state"] = state
            yield batch


def run_job(shards, world, workers, steps, saved=None, **kw):
    """`world` ranks each taking `steps` micro-batches, from a checkpoint's data entry or fresh:
    (rows used — [language, epoch, sample id] —, the data entry a checkpoint then holds)."""
    from lightmbert.trainer.data import StatefulLoader
    from lightmbert.trainer.data_state import resume_plan, snapshot
    rows, parts = [], []
    for rank in range(world):
        ds = make_ds(shards, rank, world, workers, **kw)
        loader = StatefulLoader(RoundRobin(ds), ds)
        loader.restore(resume_plan(saved, ds, 1, False, lambda msg: None))
        for batch in itertools.islice(iter(loader), steps):
            rows += [tuple(r) for r in batch["rows"]]
        parts.append(loader.state_dict())
    return rows, snapshot(parts, ds, 1)


def test_elastic_resume_uses_every_sample_once_per_epoch(segment_shards):
    m = read_manifest(segment_shards)
    sizes = {lang: sum(s["samples"] for s in v["shards"]) for lang, v in m["languages"].items()}
    jobs = [dict(world=2, workers=2, steps=30, batch=5, group=3),     # ≈ 300 of 2,742 samples
            dict(world=1, workers=1, steps=77, batch=5, group=3),     # shrink, mid-pool
            dict(world=3, workers=2, steps=250, batch=4, group=1)]    # grow, other batch shape
    uses, saved = Counter(), None
    for job in jobs:
        rows, saved = run_job(segment_shards, saved=saved, **job)
        uses.update(rows)
    langs = sorted(sizes)
    for li, lang in enumerate(langs):
        # the padding of an epoch to equal slices (wrapped repeats, < streams of them) aside
        epoch0 = Counter({sid: k for (l2, e, sid, wrapped), k in uses.items() if l2 == li and e == 0 and not wrapped})
        assert sorted(epoch0) == list(range(sizes[lang])), f"{lang}: epoch 0 incomplete"
        assert max(epoch0.values()) == 1, f"{lang}: a sample used twice in epoch 0"
        assert sum(k for (l2, e, _, w), k in uses.items() if l2 == li and e == 0 and w) < 4, f"{lang}: padding"
        later = Counter({(e, sid, w): k for (l2, e, sid, w), k in uses.items() if l2 == li and e > 0})
        assert max(later.values(), default=1) == 1, f"{lang}: a sample used twice in a later epoch"
    assert saved["gen"] == 2 and saved["shape"]["world"] == 3 and saved["shape"]["micro_batch"] == 4


def test_same_shape_continues_exactly_from_the_state(segment_shards):
    def per_rank(rows):  # rank 0's rows, then rank 1's (5 rows a batch on both)
        return rows[:len(rows) // 2], rows[len(rows) // 2:]
    full, _ = run_job(segment_shards, 2, 2, 23)
    first, saved = run_job(segment_shards, 2, 2, 9)
    assert run_job(segment_shards, 2, 2, 9)[1] == saved        # the state itself is deterministic
    rest, _ = run_job(segment_shards, 2, 2, 14, saved=saved)
    for rank in (0, 1):
        assert per_rank(first)[rank] + per_rank(rest)[rank] == per_rank(full)[rank], f"rank {rank}"


def test_resume_through_real_workers_is_bit_identical(segment_shards):
    """2 DataLoader worker processes; restored in the middle of a length-grouping pool."""
    from lightmbert.trainer.data import build_loader
    from lightmbert.trainer.data_state import resume_plan, snapshot
    cfg = DataConfig(shards=str(segment_shards), micro_batch_size=5, num_workers=2, shuffle_buffer=20,
                     group_by_length=3)

    def loader():
        return build_loader(cfg, pad_id=0, seed=7, rank=0, world=1)
    full = take(loader(), 12)
    first = loader()
    got = take(first, 7)
    saved = snapshot([first.state_dict()], first.dataset, 1)
    second = loader()
    second.restore(resume_plan(saved, second.dataset, 1, False, print))
    got += take(second, 5)
    assert len(got) == 12
    for k, (a, b) in enumerate(zip(full, got)):
        assert a["input_ids"].equal(b["input_ids"]) and a["rows"] == b["rows"], f"batch {k}"


def test_restore_reads_a_bounded_amount_whatever_the_progress(segment_shards, monkeypatch):
    """O(1) resume: the first batch after a restore reads no more shards after 400 batches than
    after 10 (the old replay read every batch again)."""
    import lightmbert.trainer.data as D
    reads = []
    real = D.read_samples
    monkeypatch.setattr(D, "read_samples", lambda shard, verify="count": reads.append(shard.url) or real(shard, verify))

    def first_batch_reads(n):
        from lightmbert.trainer.data import StatefulLoader
        ds = make_ds(segment_shards)
        run = StatefulLoader(ds, ds)
        take(run, n)
        again = make_ds(segment_shards)
        again.restore({"streams": run.state_dict()["streams"]})
        reads.clear()
        take(again, 1)
        return len(reads)
    early, late = first_batch_reads(10), first_batch_reads(400)
    languages = len(read_manifest(segment_shards)["languages"])
    assert early <= 2 * languages + 5 * 3 and late <= 2 * languages + 5 * 3, (early, late)


def test_changed_data_is_an_error_unless_reset(segment_shards, tmp_path):
    import shutil

    from lightmbert.trainer.data import DataError
    from lightmbert.trainer.data_state import resume_plan
    _, saved = run_job(segment_shards, 1, 1, 4)
    with pytest.raises(DataError, match=r"seed: 7 → 8.*data.reset_position=true"):
        resume_plan(saved, make_ds(segment_shards, seed=8), 1, False, print)
    with pytest.raises(DataError, match=r"shuffle_buffer"):
        ds = make_ds(segment_shards)
        ds.cfg.shuffle_buffer = 21
        resume_plan(saved, ds, 1, False, print)
    other = tmp_path / "shards"
    shutil.copytree(segment_shards, other)
    m = read_manifest(other)
    m["languages"]["de"]["shards"] = m["languages"]["de"]["shards"][:-1]
    import json
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"shards of 'de'"):
        resume_plan(saved, make_ds(other), 1, False, print)
    logs = []
    plan = resume_plan(saved, make_ds(segment_shards, seed=8), 1, True, logs.append)
    assert plan == {"gen": 1, "epoch_base": 1 << 20} and "fresh epoch" in logs[0]
