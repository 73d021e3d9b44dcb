"""lightmbert.trainer.data in one process: length grouping keeps every sample, cuts padding, and stays
deterministic across a resume. (Translation pairs: tests/test_pairs.py.)"""
from __future__ import annotations

import pytest

from lightmbert.configs import DataConfig
from lightmbert.data_prep.manifest import read_manifest
from tests.helpers import take


def stream(shards, group: int, batch: int = 8):
    from lightmbert.trainer.data import MixedStream
    cfg = DataConfig(shards=str(shards), micro_batch_size=batch, num_workers=0, shuffle_buffer=20,
                     group_by_length=group)
    manifest = read_manifest(shards)
    weights = {k: 1.0 for k in manifest["languages"]}
    return MixedStream(cfg, manifest, weights, pad_id=0, seed=7, rank=0, world=1)


def resumed(make, n: int, m: int) -> list:
    """m batches of a stream restored from its state after n batches (one process)."""
    from lightmbert.trainer.data import StatefulLoader
    ds = make()
    run = StatefulLoader(ds, ds)   # the stream itself stands in for a DataLoader without workers
    take(run, n)
    again = make()
    again.restore({"streams": run.state_dict()["streams"]})
    return take(again, m)


def rows(batch):
    """The real tokens of each row, as tuples."""
    return [tuple(ids[:n].tolist()) for ids, n in zip(batch["input_ids"], batch["attention_mask"].sum(1))]


@pytest.mark.parametrize("group", [4, 5])
def test_grouping_keeps_every_sample_and_cuts_padding(segment_shards, group):
    plain, grouped = take(stream(segment_shards, 0), 2 * group), take(stream(segment_shards, group), 2 * group)
    # same samples (and language labels) in the same window of the stream, only regrouped
    for w in range(2):
        a = sorted(r for b in plain[w * group:(w + 1) * group] for r in zip(rows(b), b["lang"].tolist()))
        c = sorted(r for b in grouped[w * group:(w + 1) * group] for r in zip(rows(b), b["lang"].tolist()))
        assert a == c
    lengths = [sorted(len(r) for r in rows(b)) for b in grouped[:group]]
    # each batch is a run of neighbours in length order: sorted by their shortest, they tile
    flat = [n for ls in sorted(lengths) for n in ls]
    assert flat == sorted(flat)

    def positions(batches):
        return sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in plain)
    assert real == sum(int(b["attention_mask"].sum()) for b in grouped)
    assert positions(grouped) < 0.8 * positions(plain), "grouping should remove most padding"
    # the order of the batches within a window is shuffled, not shortest-first
    firsts = [len(rows(b)[0]) for b in grouped]
    assert firsts != sorted(firsts)


def test_grouped_stream_resumes_exactly(segment_shards):
    full = take(stream(segment_shards, 4), 11)
    again = resumed(lambda: stream(segment_shards, 4), 6, 5)   # in the middle of a pool of 4
    assert len(again) == 5
    for a, b in zip(full[6:], again):
        assert a["input_ids"].equal(b["input_ids"]) and a["lang"].equal(b["lang"])


def test_group_by_length_must_not_be_negative():
    with pytest.raises(ValueError, match="group_by_length"):
        DataConfig(shards="x", group_by_length=-1)


def test_shards_from_a_pipe_or_http_give_the_same_batches(segment_shards):
    """data.shards may name where the data_prep folder is served, not only the folder."""
    from tests.test_tarreader import serve
    from lightmbert.trainer.data import MixedStream

    def batches(root):
        cfg = DataConfig(shards=root, micro_batch_size=8, num_workers=0, shuffle_buffer=20)
        manifest = read_manifest(root)
        ds = MixedStream(cfg, manifest, {k: 1.0 for k in manifest["languages"]}, 0, 7, 0, 1)
        return [b["input_ids"] for b in take(ds, 12)]
    local = batches(str(segment_shards))
    srv = serve(segment_shards)
    try:
        for root in (f"pipe:cat {segment_shards}", "pipe:cat " + str(segment_shards / "{}"),
                     f"http://127.0.0.1:{srv.server_port}"):
            got = batches(root)
            assert len(got) == len(local) and all(a.equal(b) for a, b in zip(got, local)), root
    finally:
        srv.shutdown()


def test_verify_modes(segment_shards, tmp_path):
    import shutil

    from lightmbert.data_prep.tarreader import ShardError
    from lightmbert.trainer.data import MixedStream
    root = tmp_path / "shards"
    shutil.copytree(segment_shards, root)
    m = read_manifest(root)
    victims = [root / sh["path"] for sh in m["languages"]["de"]["shards"]]
    originals = [v.read_bytes() for v in victims]
    for v, data in zip(victims, originals):
        data = bytearray(data)
        data[512 + 150] ^= 1     # one token id: same structure, same count, another hash
        v.write_bytes(data)

    def first_batches(verify):
        cfg = DataConfig(shards=str(root), micro_batch_size=8, num_workers=0, shuffle_buffer=20,
                         verify=verify, languages=["de"])
        return take(MixedStream(cfg, m, {"de": 1.0}, 0, 7, 0, 1), 3)
    assert len(first_batches("count")) == 3
    with pytest.raises(ShardError, match="sha256 .* differs"):
        first_batches("sha256")
    for v, data in zip(victims, originals):
        v.write_bytes(data[:len(data) // 2])
    with pytest.raises(ShardError, match="truncated"):
        first_batches("none")  # the structure is always checked
