"""trainer/sampler.py, the data planner, for any number of streams (no processes): the streams
of an epoch get equal, non-empty slices that partition every language's (padded) epoch, on
ragged shards; the epoch order is seeded; an elastic re-split after any progress keeps every
position at exactly one use; the leftover is bounded; windows need no table."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from lightmbert.trainer.sampler import Cursor, LanguageOrder, Shard, resplit, share, unconsumed

RAGGED = {"big": [5000, 5000, 1234], "tiny": [7, 100, 3], "one": [1]}
STREAMS = [1, 2, 3, 4, 16, 64]
SEED = random.randrange(1 << 30)


def order(sizes, seed=11, window=64):
    return LanguageOrder("xx", [Shard(f"s{i}.tar", n, "") for i, n in enumerate(sizes)], seed, window)


def read(o: LanguageOrder, cursor: Cursor, k: int) -> list[tuple[int, int, int]]:
    """k samples a stream takes: (epoch, shard, index in shard)."""
    out = []
    for _ in range(k):
        e, p, streams = cursor.take()
        shard, index, _, wrapped = o.locate(e, p, streams)
        if not wrapped:
            out.append((e, shard, index))
    return out


@pytest.mark.parametrize("lang", sorted(RAGGED))
@pytest.mark.parametrize("streams", STREAMS)
def test_the_streams_of_an_epoch_partition_the_language(lang, streams):
    o = order(RAGGED[lang], window=50)
    everything = {(k, i) for k, n in enumerate(RAGGED[lang]) for i in range(n)}
    for epoch in range(2):
        seen: Counter = Counter()
        for sid in range(streams):
            c = Cursor(o.n, streams, sid, {"pending": [], "next_epoch": epoch})
            a, b = share(o.n, streams, sid)
            assert b - a == -(-o.n // streams) >= 1                       # equal and non-empty
            got = read(o, c, b - a)
            assert all(e == epoch for e, _, _ in got) and c.next_epoch == epoch + 1 and not c.pending
            seen.update((k, i) for _, k, i in got)
        assert set(seen) == everything, f"{lang}, {streams} streams, epoch {epoch}: samples missing"
        assert max(seen.values()) == 1, f"{lang}, {streams} streams, epoch {epoch}: a sample read twice"


def test_the_epoch_order_is_seeded_and_shuffled():
    sizes = RAGGED["big"]

    def epoch(o, e, streams=1):
        return [o.locate(e, p, streams)[2] for p in range(o.n)]
    a, b = order(sizes, seed=SEED), order(sizes, seed=SEED)
    assert epoch(a, 0) == epoch(b, 0), f"seed {SEED}"
    assert epoch(a, 0) != epoch(a, 1) and epoch(a, 0) != epoch(order(sizes, seed=SEED + 1), 0)
    first = epoch(a, 0)
    assert sorted(first) == list(range(a.n))
    assert first != sorted(first)
    # a stream's slice is a run of whole shards plus at most two partial ones (three where
    # the last slice wraps)
    for streams in (3, 7):
        for sid in range(streams):
            lo, hi = share(a.n, streams, sid)
            shards = Counter(a.locate(0, p, streams)[0] for p in range(lo, hi))
            partial = [k for k, n in shards.items() if n < sizes[k]]
            assert len(partial) <= 3, (streams, sid, shards)


def simulate(n: int, streams_old: int, streams_new: int, rng: random.Random):
    """Old streams read random amounts (some nothing, some into the next epoch, a few samples
    handed back unused); the rest is re-split over the new streams, which read on until every
    stream is past the first fresh epoch. Returns the uses of every (epoch, position)."""
    uses: Counter = Counter()
    cursors = [Cursor(n, streams_old, sid) for sid in range(streams_old)]
    returned = []
    for c in cursors:
        if rng.random() < 0.2:
            continue
        # up to the rest of this epoch and all of the next (streams within LAG_EPOCHS)
        taken = [c.take() for _ in range(rng.randrange(0, 2 * -(-n // streams_old) + 1))]
        back = rng.sample(taken, min(len(taken), rng.randrange(0, 4)))  # read, never used
        returned += back
        uses.update(t for t in taken if t not in back)
    left, first_fresh, cut = unconsumed(n, streams_old, [c.state() for c in cursors], returned, streams_new)
    assert not cut
    new = [Cursor(n, streams_new, sid, st) for sid, st in enumerate(resplit(n, left, first_fresh, streams_new))]
    for c in new:
        while c.pending or c.next_epoch <= first_fresh:
            uses[c.take()] += 1
    return uses, first_fresh


@pytest.mark.parametrize("n", [1, 3, 110, 1234])
def test_elastic_resplit_uses_every_sample_once_per_epoch(n):
    rng = random.Random(SEED + n)
    for streams_old, streams_new in [(2, 1), (1, 2), (4, 3), (16, 64), (64, 2), (3, 3)]:
        uses, first_fresh = simulate(n, streams_old, streams_new, rng)
        for epoch in range(first_fresh + 1):
            # an epoch is laid out for the streams that started it: the old ones before first_fresh
            S = streams_old if epoch < first_fresh else streams_new
            got = Counter({p: k for (e, p, s), k in uses.items() if e == epoch})
            assert all(s == S for (e, _, s) in uses if e == epoch)
            P = S * -(-n // S)
            assert sorted(got) == list(range(P)), f"seed {SEED}: n {n}, {streams_old}→{streams_new}, epoch {epoch} incomplete"
            assert max(got.values()) == 1, f"seed {SEED}: n {n}, {streams_old}→{streams_new}, epoch {epoch}: reused"
        assert not [e for e, _, _ in uses if e > first_fresh]


def test_resplit_twice_2_to_1_to_2():
    n, rng = 1234, random.Random(SEED)
    uses: Counter = Counter()
    states, streams = [None, None], 2
    for streams_new in (1, 2):
        cursors = [Cursor(n, streams, sid, st) for sid, st in enumerate(states)]
        for c in cursors:  # read part of this epoch (and maybe into the next)
            for _ in range(rng.randrange(n // streams)):
                uses[c.take()] += 1
        left, first_fresh, cut = unconsumed(n, streams, [c.state() for c in cursors], new_streams=streams_new)
        assert not cut
        states, streams = resplit(n, left, first_fresh, streams_new), streams_new
    for c in (Cursor(n, streams, sid, st) for sid, st in enumerate(states)):
        while c.pending or c.next_epoch <= 2:
            uses[c.take()] += 1
    for epoch in range(3):
        positions = sorted((s, p) for (e, p, s), k in uses.items() if e == epoch for _ in range(k))
        layout = positions[0][0]   # the stream count the epoch was started with (n even: no padding)
        assert positions == [(layout, p) for p in range(n)], f"seed {SEED}: epoch {epoch}"
