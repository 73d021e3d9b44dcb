"""Packing of segments into sequences, and the exponential-smoothing language weights."""
import random

import numpy as np
import pytest

from lightmbert.data_prep.packing import Packer, unpack
from lightmbert.data_prep.sampling import sampling_weights, smoothed_probabilities

CLS, SEP = 101, 102


def rand_docs(rng, n):
    return [[[rng.randrange(1000, 2000) for _ in range(rng.randint(0, 30))]
             for _ in range(rng.randint(1, 5))] for _ in range(n)]


@pytest.mark.parametrize("mode", ["pack", "segment"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_keeps_every_token_in_order(mode, seed):
    rng = random.Random(seed)
    docs = rand_docs(rng, 50)
    prefix = [7, 8]
    p = Packer(16, CLS, SEP, prefix, mode)
    spans = []
    for d in docs:
        before = len(p.lengths)
        p.add_document(d)
        spans.append((before, len(p.lengths)))
    ids, lengths = p.arrays(np.int32)
    seqs = unpack(ids, lengths)
    assert all(len(s) <= 16 for s in seqs)
    assert all(s[0] == CLS and list(s[1:3]) == prefix and s[-1] == SEP for s in seqs)
    # per document: the contents of its sequences are exactly its segments, in order
    for d, (a, b) in zip(docs, spans):
        got = [t for s in seqs[a:b] for t in s[3:-1]]
        assert got == [t for seg in d for t in seg]
    assert p.stats["empty_segments"] == sum(1 for d in docs for s in d if not s)
    assert p.stats["split_segments"] == sum(1 for d in docs for s in d if len(s) > 16 - 4)


def test_pack_vs_segment_boundaries():
    p = Packer(10, CLS, SEP, mode="pack")
    p.add_document([[1, 2], [3, 4, 5], [6, 7, 8, 9]])  # room 8: [1..5] then [6..9]
    p.add_document([[10]])                              # documents never share a sequence
    assert [list(s) for s in unpack(*p.arrays(np.int32))] == \
        [[CLS, 1, 2, 3, 4, 5, SEP], [CLS, 6, 7, 8, 9, SEP], [CLS, 10, SEP]]
    s = Packer(10, CLS, SEP, mode="segment")
    s.add_document([[1, 2], [3] * 11])                  # a long segment is split, not cut
    assert [list(x) for x in unpack(*s.arrays(np.int32))] == \
        [[CLS, 1, 2, SEP], [CLS] + [3] * 8 + [SEP], [CLS, 3, 3, 3, SEP]]


def test_no_room_is_an_error():
    with pytest.raises(ValueError, match="no room"):
        Packer(8, CLS, SEP, prefix_ids=list(range(6)))


def test_smoothing_against_hand_computed_values():
    counts = {"en": 900, "de": 90, "sw": 10}
    got = smoothed_probabilities(counts, alpha=0.5)
    # p = .9, .09, .01 → sqrt = .948683, .3, .1 → sum 1.348683
    assert got["en"][0] == pytest.approx(0.9)
    assert got["en"][1] == pytest.approx(0.948683 / 1.348683, rel=1e-5)
    assert got["de"][1] == pytest.approx(0.3 / 1.348683, rel=1e-5)
    assert got["sw"][1] == pytest.approx(0.1 / 1.348683, rel=1e-5)
    assert {k: q for k, (_, q) in smoothed_probabilities(counts, 1.0).items()} == \
        pytest.approx({"en": 0.9, "de": 0.09, "sw": 0.01})
    assert {k: q for k, (_, q) in smoothed_probabilities(counts, 0.0).items()} == \
        pytest.approx({k: 1 / 3 for k in counts})
    # alpha < 1 raises the low-resource share, keeps the order
    q = sampling_weights({"languages": {k: {"tokens": v} for k, v in counts.items()}}, 0.7)
    assert q["sw"] > 0.01 and q["en"] < 0.9 and q["en"] > q["de"] > q["sw"]
    assert sum(q.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        smoothed_probabilities({}, 0.7)
