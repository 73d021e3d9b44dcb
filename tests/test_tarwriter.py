"""Our fast tar writer must produce exactly the bytes of webdataset's TarWriter."""
import random

import numpy as np
import pytest
import webdataset as wds

from lightmbert.data_prep.tarwriter import FastTarWriter, ShardStream, npy_bytes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bytes_identical_to_webdataset(tmp_path, seed):
    rng = random.Random(seed)
    samples = []
    for g in range(rng.randint(1, 300)):
        n = rng.randint(0, 700)
        dtype = rng.choice([np.uint16, np.uint32, np.int64])
        ids = np.array([rng.randrange(0, 60000) for _ in range(n)], dtype=dtype)
        samples.append({"__key__": f"pt-br-{g:09d}", "input_ids.npy": ids,
                        "lang.txt": rng.choice(["pt-br", "zh", "ast"])})
    ref = tmp_path / "ref.tar"
    with wds.TarWriter(str(ref), mtime=0, user="lightmbert", group="lightmbert", mode=0o444) as w:
        for s in samples:
            w.write(s)
    ours = tmp_path / "ours.tar"
    t = FastTarWriter(ours)
    for s in samples:
        t.write({"__key__": s["__key__"], "input_ids.npy": npy_bytes(s["input_ids.npy"]),
                 "lang.txt": s["lang.txt"].encode()})
    t.close()
    assert ours.read_bytes() == ref.read_bytes()


def test_shard_stream_rolls_over_and_renames(tmp_path):
    s = ShardStream(str(tmp_path / "x-%06d.tar"), maxcount=3, start_shard=2)
    for g in range(7):
        s.write({"__key__": f"k{g}", "a.txt": b"%d" % g})
    s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000002.tar", "x-000003.tar", "x-000004.tar"]
    keys = [x["__key__"] for x in wds.WebDataset(str(tmp_path / "x-{000002..000004}.tar"),
                                                  shardshuffle=False)]
    assert keys == [f"k{g}" for g in range(7)]
