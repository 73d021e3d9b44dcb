"""Which sample every stream reads, epoch by epoch: pure functions of the manifest, the seed
and the stream's state (no processes, no I/O), so the planner can be checked for any world.

The epoch order of a language. Epoch e lists the language's shards in a seeded order
(`Random(f"{seed}/{lang}/{e}")`, the same for every stream) and their samples in file order:
the canonical enumeration g = 0 … N-1. That sequence is shuffled in windows of
W = data.shuffle_buffer consecutive positions, each by its own seeded permutation. Position p
of the epoch order is therefore a pure function of (epoch, p): no stream needs another's
state to know what it reads, and a position is all a checkpoint has to keep.

Shares. Stream s of S (S = world × DataLoader workers) reads the contiguous slice
[s·N//S, (s+1)·N//S) of each epoch: the S slices partition the epoch for any S and any shard
sizes, differ in size by at most one, and touch at most two shards that another stream also
reads. (Streams with an empty slice — a language with fewer samples than streams — do not
draw that language.)

Cursors. A stream's position in a language is a list of pending intervals
[(epoch, start, stop), ...] still to be read, then its share of every later epoch from
`next_epoch` on. Normally that is one interval, the rest of its current slice. After a
change of S (`resplit`), the samples no stream had consumed — per epoch, the unread parts of
every old slice — are cut into balanced contiguous pieces for the new streams, which then
continue with fresh epochs from the first one no old stream had started: each sample is still
used once per epoch, whatever the old and new shapes.
"""
from __future__ import annotations

import bisect
import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    sha256: str


def share(n: int, streams: int, sid: int) -> tuple[int, int]:
    """The slice [start, stop) of an n-sample epoch that stream `sid` of `streams` reads."""
    return sid * n // streams, (sid + 1) * n // streams


class LanguageOrder:
    """Epoch order of one language: position → (shard, index in shard, sample id), where the
    sample id is the sample's index in the manifest's own shard order (stable across epochs)."""

    def __init__(self, lang: str, shards: list[Shard], seed: int, window: int):
        self.lang, self.shards, self.seed, self.window = lang, shards, seed, window
        self.n = sum(s.samples for s in shards)
        self.first_id = [0]  # sample id of each shard's first sample (manifest order)
        for s in shards[:-1]:
            self.first_id.append(self.first_id[-1] + s.samples)
        self._epoch: tuple[int, list[int], list[int]] | None = None   # (epoch, shard order, starts)
        self._perm: tuple[int, int, list[int]] | None = None           # (epoch, window, permutation)

    def _shard_order(self, epoch: int) -> tuple[list[int], list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = list(range(len(self.shards)))
            random.Random(f"{self.seed}/{self.lang}/{epoch}").shuffle(order)
            starts, at = [], 0
            for k in order:
                starts.append(at)
                at += self.shards[k].samples
            self._epoch = (epoch, order, starts)
        return self._epoch[1], self._epoch[2]

    def _window_perm(self, epoch: int, w: int) -> list[int]:
        if self._perm is None or self._perm[:2] != (epoch, w):
            size = min(self.window, self.n - w * self.window)
            perm = list(range(size))
            random.Random(f"{self.seed}/{self.lang}/{epoch}/{w}").shuffle(perm)
            self._perm = (epoch, w, perm)
        return self._perm[2]

    def locate(self, epoch: int, pos: int) -> tuple[int, int, int]:
        """(manifest shard index, index in that shard, sample id) at position `pos` of `epoch`."""
        if not 0 <= pos < self.n:
            raise IndexError(f"{self.lang}: position {pos} outside an epoch of {self.n} samples")
        w, r = divmod(pos, self.window)
        g = w * self.window + self._window_perm(epoch, w)[r]
        order, starts = self._shard_order(epoch)
        k = bisect.bisect_right(starts, g) - 1
        shard, index = order[k], g - starts[k]
        return shard, index, self.first_id[shard] + index


class Cursor:
    """One stream's position in one language (see the module docstring). State: JSON-able."""

    def __init__(self, n: int, streams: int, sid: int, state: dict | None = None):
        self.share = share(n, streams, sid)
        state = state or {"pending": [], "next_epoch": 0}
        self.pending = deque(list(iv) for iv in state["pending"])
        self.next_epoch = state["next_epoch"]

    def available(self) -> bool:
        return bool(self.pending) or self.share[0] < self.share[1]

    def take(self) -> tuple[int, int]:
        """The next (epoch, position) this stream reads; call only when `available()`."""
        if not self.pending:
            self.pending.append([self.next_epoch, *self.share])
            self.next_epoch += 1
        iv = self.pending[0]
        epoch, pos = iv[0], iv[1]
        iv[1] += 1
        if iv[1] >= iv[2]:
            self.pending.popleft()
        return epoch, pos

    def state(self) -> dict:
        return {"pending": [list(iv) for iv in self.pending], "next_epoch": self.next_epoch}


def _merge(intervals: list[list[int]]) -> list[list[int]]:
    """Sorted, with touching intervals of one epoch joined."""
    out: list[list[int]] = []
    for e, a, b in sorted(intervals):
        if out and out[-1][0] == e and out[-1][2] >= a:
            out[-1][2] = max(out[-1][2], b)
        else:
            out.append([e, a, b])
    return out


def unconsumed(n: int, streams: int, cursors: list[dict | None], returned: list[tuple[int, int]] = ()
               ) -> tuple[list[list[int]], int]:
    """What S old streams (their cursor states, None for one that never read) left of a
    language: (the sorted (epoch, start, stop) intervals no stream has consumed, in the epochs
    before `first_fresh`; first_fresh). `returned`: single (epoch, position) samples that were
    read but never used (a partly handed-out pool) and go back."""
    states = [c or {"pending": [], "next_epoch": 0} for c in cursors]
    first_fresh = max(s["next_epoch"] for s in states)
    left = [list(iv) for s in states for iv in s["pending"]]
    for sid, s in enumerate(states):
        a, b = share(n, streams, sid)
        if a < b:  # the old slices of the epochs this stream had not started
            left += [[e, a, b] for e in range(s["next_epoch"], first_fresh)]
    left += [[e, p, p + 1] for e, p in returned]
    return _merge(left), first_fresh


def resplit(n: int, left: list[list[int]], first_fresh: int, streams: int) -> list[dict]:
    """Cursor states of `streams` new streams that together read `left` exactly once (balanced
    contiguous pieces, over the streams that have a share of the language), then fresh epochs
    from `first_fresh` on."""
    eligible = [sid for sid in range(streams) if share(n, streams, sid)[0] < share(n, streams, sid)[1]]
    total = sum(b - a for _, a, b in left)
    states = [{"pending": [], "next_epoch": first_fresh} for _ in range(streams)]
    queue = deque(list(iv) for iv in left)
    for k, sid in enumerate(eligible):
        want = (k + 1) * total // len(eligible) - k * total // len(eligible)
        while want > 0:
            e, a, b = queue[0]
            take = min(want, b - a)
            states[sid]["pending"].append([e, a, a + take])
            want -= take
            if a + take == b:
                queue.popleft()
            else:
                queue[0][1] = a + take
    return states
