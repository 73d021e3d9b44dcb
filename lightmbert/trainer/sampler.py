"""Which sample every stream reads, epoch by epoch: pure functions of the manifest, the seed
and the stream's state (no processes, no I/O), so the planner can be checked for any world.

Layout of an epoch. With S streams (S = world × DataLoader workers) an epoch of a language
of n samples has P = S·c positions, c = ⌈n/S⌉: stream s reads the slice [s·c, (s+1)·c).
Every stream gets an equal, non-empty slice of every language at any S (a language with
fewer samples than streams included), so the language mix is exactly the configured one
and streams that draw alike stay in the same epoch. The P − n < S positions past the end
wrap to the epoch's first samples (as torch's DistributedSampler pads): the only samples
used twice in an epoch. S is part of an epoch's layout: a pending interval of positions
carries the S it was cut for.

Order within an epoch. Epoch e lists the language's shards in a seeded order
(`Random(f"{seed}/{lang}/{e}")`, the same for every stream) and their samples in file order:
the canonical enumeration g = 0 … n-1. Position p of slice s is a canonical sample of that
slice, shuffled within windows of W = data.shuffle_buffer consecutive positions of the slice
by a seeded bijection (a Feistel network: no table, whatever W). A window therefore only
touches the shards its own canonical range overlaps, and a stream only the shards of its
own slice: each stream reads each of its shards once per epoch.

Cursors. A stream's position in a language is a list of pending intervals
[(epoch, start, stop, S), ...] still to be read, then its slice of every later epoch from
`next_epoch` on (in its own layout). After a change of S (`resplit`), the positions no stream
had consumed — per epoch, the unread parts of every old slice — are cut into balanced
contiguous pieces for the new streams, which then continue with fresh epochs (new layout)
from the first one no old stream had started: each position is still used once. That
leftover is bounded (`unconsumed`): epochs more than LAG_EPOCHS (or LAG_POSITIONS of a
stream's reading, for tiny slices) behind the newest one, and fragments beyond
`max_intervals`, are cut and counted, so a checkpoint's data entry stays
O(streams × languages) however long the run and however many resizes.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from collections import deque
from dataclasses import asdict, dataclass, field

LAG_EPOCHS = 2          # leftover kept: the last 2 epochs before first_fresh …
LAG_POSITIONS = 64      # … or, for slices shorter than 32 positions, a stream's last 64 positions
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    sha256: str


def slice_len(n: int, streams: int) -> int:
    return -(-n // streams)


def share(n: int, streams: int, sid: int) -> tuple[int, int]:
    """The slice [start, stop) of an epoch (laid out for `streams`) that stream `sid` reads."""
    c = slice_len(n, streams)
    return sid * c, (sid + 1) * c


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-mixed 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def seed_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def permute(i: int, m: int, key: int) -> int:
    """A seeded bijection of [0, m): a 4-round Feistel network on the smallest even number of
    bits holding m, cycle-walked back into range (expected < 4 rounds of walking)."""
    if m <= 1:
        return i
    bits = max(2, (m - 1).bit_length())
    half = (bits + 1) // 2
    mask = (1 << half) - 1
    while True:
        left, right = i >> half, i & mask
        for k in range(4):
            left, right = right, left ^ (_mix64(key ^ (right << 3) ^ k) & mask)
        i = (left << half) | right
        if i < m:
            return i


class LanguageOrder:
    """Epoch order of one language: (epoch, position, layout S) → (shard, index in shard, sample
    id), the sample id being the sample's index in the manifest's own shard order."""

    def __init__(self, lang: str, shards: list[Shard], seed: int, window: int):
        self.lang, self.shards, self.seed, self.window = lang, shards, seed, max(1, window)
        self.n = sum(s.samples for s in shards)
        self.first_id = [0]  # sample id of each shard's first sample (manifest order)
        for s in shards[:-1]:
            self.first_id.append(self.first_id[-1] + s.samples)
        self._epoch: tuple[int, list[int], list[int]] | None = None   # (epoch, shard order, starts)
        self._key: tuple[tuple, int] | None = None                      # (window, its Feistel key)

    def _shard_order(self, epoch: int) -> tuple[list[int], list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = [k for k in range(len(self.shards)) if self.shards[k].samples > 0]
            random.Random(f"{self.seed}/{self.lang}/{epoch}").shuffle(order)
            starts, at = [], 0
            for k in order:
                starts.append(at)
                at += self.shards[k].samples
            self._epoch = (epoch, order, starts)
        return self._epoch[1], self._epoch[2]

    def window_of(self, pos: int, streams: int) -> tuple[int, int]:
        """(first position, size) of the shuffle window holding `pos` in a layout for `streams`."""
        c = slice_len(self.n, streams)
        s, off = divmod(pos, c)
        base = s * c + off // self.window * self.window
        return base, min(self.window, (s + 1) * c - base)

    def canonical(self, epoch: int, pos: int, streams: int) -> int:
        """The padded canonical index q (0 … P-1) at a position of an epoch laid out for
        `streams`: sample q mod n, a wrapped repeat when q ≥ n."""
        if not 0 <= pos < streams * slice_len(self.n, streams):
            raise IndexError(f"{self.lang}: position {pos} outside an epoch of {self.n} samples "
                             f"laid out for {streams} stream(s)")
        base, m = self.window_of(pos, streams)
        if self._key is None or self._key[0] != (epoch, streams, base):
            self._key = ((epoch, streams, base), seed_int(f"{self.seed}/{self.lang}/{epoch}/{streams}/{base}"))
        return base + permute(pos - base, m, self._key[1])

    def place(self, epoch: int, g: int) -> tuple[int, int, int]:
        """(manifest shard index, index in that shard, sample id) of canonical index g."""
        order, starts = self._shard_order(epoch)
        k = bisect.bisect_right(starts, g) - 1
        shard, index = order[k], g - starts[k]
        return shard, index, self.first_id[shard] + index

    def locate(self, epoch: int, pos: int, streams: int) -> tuple[int, int, int, bool]:
        """(manifest shard index, index in that shard, sample id, whether a wrapped repeat)."""
        q = self.canonical(epoch, pos, streams)
        return (*self.place(epoch, q % self.n), q >= self.n)

    def window_shards(self, epoch: int, pos: int, streams: int) -> set[int]:
        """The manifest shards the window holding `pos` can read (what a cache must hold)."""
        base, m = self.window_of(pos, streams)
        order, starts = self._shard_order(epoch)
        lo, hi = base % self.n, base % self.n + m   # m ≤ n: wraps at most once
        spans = [(lo, min(hi, self.n))] + ([(0, hi - self.n)] if hi > self.n else [])
        out = set()
        for a, b in spans:
            for k in range(bisect.bisect_right(starts, a) - 1, bisect.bisect_left(starts, b)):
                out.add(order[k])
        return out


class Cursor:
    """One stream's position in one language (see the module docstring). State: JSON-able."""

    def __init__(self, n: int, streams: int, sid: int, state: dict | None = None):
        self.streams = streams
        self.share = share(n, streams, sid)
        state = state or {"pending": [], "next_epoch": 0}
        self.pending = deque(list(iv) for iv in state["pending"])
        self.next_epoch = state["next_epoch"]

    def take(self) -> tuple[int, int, int]:
        """The next (epoch, position, layout S) this stream reads."""
        if not self.pending:
            self.pending.append([self.next_epoch, *self.share, self.streams])
            self.next_epoch += 1
        iv = self.pending[0]
        epoch, pos, streams = iv[0], iv[1], iv[3]
        iv[1] += 1
        if iv[1] >= iv[2]:
            self.pending.popleft()
        return epoch, pos, streams

    def state(self) -> dict:
        return {"pending": [list(iv) for iv in self.pending], "next_epoch": self.next_epoch}


@dataclass
class StreamState:
    """Everything a (rank, worker) stream needs to continue exactly: one record that
    trainer/data.py writes and trainer/data_state.py re-splits (never a partial dict).
    `pool`: the batches of the current pool not handed out yet (their sample refs
    [language, epoch, position, S] under "s", their pairs under "p")."""
    sid: int
    gen: int = 0
    drawn: int = 0      # language draws so far (the mix is a pure function of it)
    pools: int = 0      # pools filled so far
    batches: int = 0    # batches handed out so far
    pool: list = field(default_factory=list)
    cursors: dict = field(default_factory=dict)   # language → Cursor.state() (absent: fresh)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StreamState":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown or "sid" not in d:
            raise ValueError(f"stream state {str(d)[:200]}: unknown keys {sorted(unknown)} or no sid")
        return cls(**d)


def _merge(intervals: list[list[int]]) -> list[list[int]]:
    """Sorted, with touching intervals of one (epoch, layout) joined."""
    out: list[list[int]] = []
    for e, a, b, s in sorted(intervals, key=lambda iv: (iv[0], iv[3], iv[1])):
        if out and out[-1][0] == e and out[-1][3] == s and out[-1][2] >= a:
            out[-1][2] = max(out[-1][2], b)
        else:
            out.append([e, a, b, s])
    return out


def max_intervals(old: int, new: int, returned: int = 0) -> int:
    """The most leftover intervals a language keeps at a resize from `old` to `new` streams:
    a resize leaves about one per old stream, plus the positions of partly handed-out pools
    (`returned`: scattered by the length sort, at most B·G per stream); more only pile up
    when resizes follow each other with no progress in between."""
    return 2 * (old + new) + returned + 256


def unconsumed(n: int, streams: int, cursors: list[dict | None], returned: list = (), new_streams: int = 1
               ) -> tuple[list[list[int]], int, dict[int, int]]:
    """What S old streams (their cursor states, None for one that never read) left of a
    language: (the sorted (epoch, start, stop, S) intervals no stream has consumed, in the
    epochs before `first_fresh`; first_fresh; {epoch: positions cut}). `returned`: single
    (epoch, position, S) positions that were read but never used (a partly handed-out pool)
    and go back. The leftover is bounded (module docstring): older epochs and the smallest
    fragments beyond `max_intervals(streams, new_streams, len(returned))` are cut, and counted."""
    states = [c or {"pending": [], "next_epoch": 0} for c in cursors]
    first_fresh = max(s["next_epoch"] for s in states)
    lag = max(LAG_EPOCHS, -(-LAG_POSITIONS // slice_len(n, streams)))  # streams drift a few draws apart
    left = [list(iv) for s in states for iv in s["pending"]]
    for sid, s in enumerate(states):
        a, b = share(n, streams, sid)  # the old slices of the epochs this stream had not started
        left += [[e, a, b, streams] for e in range(max(s["next_epoch"], first_fresh - lag), first_fresh)]
    left += [[e, p, p + 1, s] for e, p, s in returned]
    left = _merge(left)
    cut: dict[int, int] = {}
    keep = []
    for iv in left:
        if iv[0] < first_fresh - lag:
            cut[iv[0]] = cut.get(iv[0], 0) + iv[2] - iv[1]
        else:
            keep.append(iv)
    if len(keep) > max_intervals(streams, new_streams, len(returned)):
        by_size = sorted(range(len(keep)), key=lambda i: keep[i][2] - keep[i][1], reverse=True)
        drop = set(by_size[max_intervals(streams, new_streams, len(returned)):])
        for i in drop:
            cut[keep[i][0]] = cut.get(keep[i][0], 0) + keep[i][2] - keep[i][1]
        keep = [iv for i, iv in enumerate(keep) if i not in drop]
    # a stream that never started the older epochs has its cut slices counted too
    for sid, s in enumerate(states):
        a, b = share(n, streams, sid)
        for e in range(s["next_epoch"], first_fresh - lag):
            cut[e] = cut.get(e, 0) + b - a
    return keep, first_fresh, cut


def resplit(n: int, left: list[list[int]], first_fresh: int, streams: int) -> list[dict]:
    """Cursor states of `streams` new streams that together read `left` exactly once (balanced
    contiguous pieces), then fresh epochs (laid out for `streams`) from `first_fresh` on."""
    total = sum(b - a for _, a, b, _ in left)
    states = [{"pending": [], "next_epoch": first_fresh} for _ in range(streams)]
    queue = deque(list(iv) for iv in left)
    for sid in range(streams):
        want = (sid + 1) * total // streams - sid * total // streams
        while want > 0:
            e, a, b, s = queue[0]
            take = min(want, b - a)
            states[sid]["pending"].append([e, a, a + take, s])
            want -= take
            if a + take == b:
                queue.popleft()
            else:
                queue[0][1] = a + take
    return states
