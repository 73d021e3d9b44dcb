"""Training batches from data_prep shards: per-language streams mixed by q_i ∝ p_i^α, split
across ranks and DataLoader workers, seeded shuffling, padding per batch, stateful resume.

Every (rank, worker) pair owns one deterministic, endless stream (no rank can run out and
hang the others). Which samples a stream reads is trainer/sampler.py's plan: per language, a
contiguous, equal, non-empty slice of every epoch's seeded order, the slices of all streams
partitioning the (padded) epoch exactly. The stream mixes its languages by a low-discrepancy
sequence (every stream's shares are the configured ones at any stream count), optionally groups
G·B samples by length into G batches, optionally adds translation pairs (the shards'
pre-tokenised pair shards), and pads. All its randomness is keyed by counters (the mix draw,
the pool, the batch), so its whole position is a few integers per language plus the
not-yet-handed-out part of the current pool: every batch carries that state, the
`StatefulLoader` keeps the state of the last batch the trainer consumed from each stream,
and a resume restores it without replaying anything (trainer/data_state.py: the checkpoint
side, elastic resume). The DataLoader hands out batches round-robin over its workers; on
resume worker w plays the stream that was next in line.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import random
import sys
from collections import Counter
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightmbert.configs import DataConfig
from lightmbert.data_prep.manifest import read_manifest, shard_url
from lightmbert.data_prep.sampling import smoothed_probabilities
from lightmbert.data_prep.tarreader import ShardError, load_shard, npy_array

from .sampler import Cursor, LanguageOrder, Shard, StreamState, seed_int

CACHE_WARN_SAMPLES = 4_000_000  # samples a worker's shard caches may hold before we warn


class DataError(ValueError):
    """Unusable training data or data state (raised before any process group work)."""


_VERIFIED: set[str] = set()  # shards whose sha256 this process has checked (data.verify: sha256)


def shard_samples(shard: Shard, verify: str = "count") -> list[tuple[str, dict]]:
    """The samples of one shard, checked whole before any is used (see data.verify)."""
    sha = shard.sha256 if verify == "sha256" and shard.url not in _VERIFIED else None
    out = load_shard(shard.url, shard.samples if verify != "none" else None, sha)
    if sha is not None:
        _VERIFIED.add(shard.url)
    return out


def read_samples(shard: Shard, verify: str = "count") -> list[np.ndarray]:
    """input_ids of each sample of one shard, in order (views into the shard's bytes)."""
    out = []
    for key, fields in shard_samples(shard, verify):
        ids = fields.get("input_ids.npy")
        if ids is None:
            raise ShardError(f"{shard.url}: sample {key} has no input_ids.npy")
        out.append(npy_array(ids, shard.url))
    return out


def language_orders(manifest: dict, root: str, languages: list[str], seed: int, window: int
                    ) -> dict[str, LanguageOrder]:
    return {lang: LanguageOrder(lang, [Shard(shard_url(root, s["path"]), s["samples"], s["sha256"])
                                       for s in manifest["languages"][lang]["shards"]], seed, window)
            for lang in languages}


class ParallelPairs:
    """The translation pairs of a data_prep output (manifest entry `parallel`, written by
    lightmbert.data_prep.parallel from `input.parallel`): items of (English ids, [(language, ids), ...]),
    restricted to the training languages. A draw is `pairs` (item, translation) indices."""

    def __init__(self, manifest: dict, root: str, languages: list[str], verify: str = "count"):
        entry = manifest.get("parallel")
        if not entry:
            raise DataError(f"data.parallel: {root}/manifest.json has no translation pairs: shard with "
                            f"input.parallel set (lightmbert.data_prep.parallel), or set data.parallel: false")
        self.items: list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]] = []
        self.unused = 0  # items with no translation into the training languages
        allowed = set(languages) - {"en"}
        for entry_shard in entry["shards"]:
            shard = Shard(shard_url(root, entry_shard["path"]), entry_shard["samples"], entry_shard["sha256"])
            for key, fields in shard_samples(shard, verify):
                if "en.input_ids.npy" not in fields:
                    raise DataError(f"data.parallel: {shard.url}: sample {key} has no English side")
                trs = sorted((f.split(".", 1)[0], npy_array(b, shard.url).copy()) for f, b in fields.items()
                             if f.endswith(".input_ids.npy") and f.split(".", 1)[0] in allowed)
                if trs:
                    self.items.append((npy_array(fields["en.input_ids.npy"], shard.url).copy(), trs))
                else:
                    self.unused += 1
        if not self.items:
            raise DataError(f"data.parallel: no pairs into the training languages {sorted(allowed)} in {root}")

    def draw(self, rng: random.Random, pairs: int) -> list[list[int]]:
        out = []
        for _ in range(pairs):
            item = rng.randrange(len(self.items))
            out.append([item, rng.randrange(len(self.items[item][1]))])
        return out

    def get(self, ref: list[int]) -> tuple[np.ndarray, str, np.ndarray]:
        """(English ids, language, translation ids) of one drawn reference."""
        en, trs = self.items[ref[0]]
        return (en, *trs[ref[1]])

    def length(self, ref: list[int]) -> int:
        """Tokens of the longer side of one drawn pair (the length batches are grouped by)."""
        en, _, x = self.get(ref)
        return max(len(en), len(x))


class ShardCache:
    """One language's shards in memory for one stream: the shards of the shuffle window being
    read, nothing else (sampler.py: a window touches only the shards its canonical range
    overlaps). Reads are counted (`reads`) so the bound can be checked."""

    def __init__(self, order: LanguageOrder, read):
        self.order, self.read = order, read
        self.window: tuple | None = None
        self.shards: dict[int, list] = {}
        self.reads = 0

    def get(self, epoch: int, pos: int, streams: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(input_ids, (sample id, 1 if a wrapped repeat)) at a position of the epoch order."""
        window = (epoch, streams, *self.order.window_of(pos, streams))
        if window != self.window:  # drop what the new window does not read
            keep = self.order.window_shards(epoch, pos, streams)
            self.shards = {k: v for k, v in self.shards.items() if k in keep}
            self.window = window
        k, index, sample_id, wrapped = self.order.locate(epoch, pos, streams)
        if k not in self.shards:
            self.shards[k] = self.read(self.order.shards[k])
            self.reads += 1
        # a copy: a view would keep the whole shard alive as long as the batch
        return self.shards[k][index].copy(), (sample_id, int(wrapped))


PHI64 = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: the Weyl sequence of the language mix


class Stream:
    """One (rank, worker) stream: its cursors, mix, pool and their state (see the module
    docstring). Yields (batch, position): the position is small — the batch counter and how
    far into the current pool — except with the first batch of a pool, which also carries
    the pool's `fill` snapshot (the cursors and mix after filling it, and its batches'
    sample references); `full_state` turns the two into a checkpointable state."""

    def __init__(self, ds: "MixedStream", sid: int, state: StreamState | None = None):
        self.ds, self.sid = ds, sid
        self.streams = ds.world * ds.workers
        st = state or StreamState(sid, gen=ds.gen)
        self.key = f"{ds.seed}/{ds.gen}/{sid}"
        fresh = {"pending": [], "next_epoch": ds.epoch_base}
        self.cursors = [Cursor(ds.orders[lang].n, self.streams, sid, st.cursors.get(lang, fresh))
                        for lang in ds.languages]
        self.drawn, self.pools, self.batches = st.drawn, st.pools, st.batches
        self.pool: list = [(g, None) for g in st.pool]    # (refs, rows or None: read again)
        self.next = 0                                       # next batch of the pool
        self.fill = self._snapshot() if self.pool else None  # sent with the pool's first batch
        self.cache = [ShardCache(ds.orders[lang], ds.read) for lang in ds.languages]
        self.phase = seed_int(f"{self.key}/mix")

    def _snapshot(self) -> dict:
        return {"drawn": self.drawn, "pools": self.pools, "pool": [refs for refs, _ in self.pool],
                "cursors": {lang: c.state() for lang, c in zip(self.ds.languages, self.cursors)}}

    def _draw(self) -> int:
        """The language of the next sample: the Weyl sequence phase + k·φ (mod 1) against the
        mix's cumulative shares. Low-discrepancy: after k draws every language's count is
        within a few samples of q·k, so every stream's shares are the configured ones and
        streams consume each language in step (the elastic leftover stays small); the seeded
        phase makes streams differ."""
        x = (self.phase + self.drawn * PHI64) & ((1 << 64) - 1)
        self.drawn += 1
        return min(bisect.bisect_right(self.ds.mix_edges, x), len(self.ds.languages) - 1)

    def _sample(self, li: int, epoch: int, pos: int, streams: int) -> tuple[np.ndarray, tuple[int, int]]:
        return self.cache[li].get(epoch, pos, streams)

    def _rows(self, samples: list, pair_refs: list) -> list[tuple[int, np.ndarray, list | None]]:
        """(language index, ids, [language, epoch, sample id, wrapped] or None) of a batch's rows:
        its samples ((ref, ids, (sample id, wrapped)) each), then with data.parallel the English
        side and the translation of each pair. `wrapped`: 1 for a padding repeat (sampler.py)."""
        rows = [(r[0], ids, [r[0], r[1], *rid]) for r, ids, rid in samples]
        pairs = [self.ds.parallel.get(r) for r in pair_refs]
        rows += [(self.ds.index["en"], en, None) for en, _, _ in pairs]
        rows += [(self.ds.index[lang], ids, None) for _, lang, ids in pairs]
        return rows

    def _fill(self) -> None:
        """The next pool: B·G samples (and G·K pairs) cut into G batches; with G > 1 sorted by
        length first (neighbours together) and handed out in a seeded random order."""
        B, G, K = self.ds.cfg.micro_batch_size, self.ds.group, self.ds.pairs
        samples = []
        for _ in range(B * G):
            li = self._draw()
            ref = [li, *self.cursors[li].take()]
            samples.append((ref, *self._sample(*ref)))
        pairs = self.ds.parallel.draw(random.Random(f"{self.key}/parallel/{self.pools}"), K * G) if K else []
        if G > 1:
            samples.sort(key=lambda s: len(s[1]))  # stable
            if pairs:
                pairs.sort(key=self.ds.parallel.length)
        groups = [(samples[i * B:(i + 1) * B], pairs[i * K:(i + 1) * K]) for i in range(G)]
        if G > 1:
            random.Random(f"{self.key}/group/{self.pools}").shuffle(groups)
        self.pools += 1
        self.pool = [({"s": [r for r, _, _ in s], "p": p}, self._rows(s, p)) for s, p in groups]
        self.next = 0
        self.fill = self._snapshot()

    def rows(self) -> Iterator[tuple[list, dict]]:
        """Endless (rows, position) of the stream's batches, before padding (what `__iter__`
        collates; the planner tests use it directly)."""
        while True:
            if self.next == len(self.pool):
                self._fill()
            refs, rows = self.pool[self.next]
            if rows is None:  # restored from a checkpoint: read again
                rows = self._rows([(r, *self._sample(*r)) for r in refs["s"]], refs["p"])
            self.batches += 1
            self.next += 1
            position = {"sid": self.sid, "gen": self.ds.gen, "batches": self.batches, "next": self.next}
            if self.fill is not None:
                position["fill"], self.fill = self.fill, None
            yield rows, position

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        for rows, position in self.rows():
            yield self.ds.collate(rows, f"{self.key}/mlm/{position['batches'] - 1}"), position


def full_state(fill: dict, position: dict) -> StreamState:
    """A stream's checkpointable state from its pool's fill snapshot and its latest position."""
    return StreamState(sid=position["sid"], gen=position["gen"], drawn=fill["drawn"], pools=fill["pools"],
                       batches=position["batches"], pool=fill["pool"][position["next"]:], cursors=fill["cursors"])


class MixedStream(IterableDataset):
    """Endless micro-batches for one rank (fresh, or `restore`d before iteration)."""

    def __init__(self, cfg: DataConfig, manifest: dict, weights: dict[str, float], pad_id: int,
                 seed: int, rank: int, world: int, mask_id: int | None = None):
        self.cfg, self.manifest = cfg, manifest
        self.mask_id = mask_id  # set: BERT masking for the MLM loss
        self.languages = sorted(weights)
        self.index = {lang: i for i, lang in enumerate(self.languages)}
        self.mix = [weights[lang] for lang in self.languages]
        total, acc, self.mix_edges = sum(self.mix), 0.0, []
        for q in self.mix[:-1]:  # cumulative shares as 64-bit fixed point (Stream._draw)
            acc += q / total
            self.mix_edges.append(int(acc * 2.0 ** 64))
        self.read = lambda shard: read_samples(shard, cfg.verify)   # shard → its samples' ids
        self.pad_id, self.seed, self.rank, self.world = pad_id, seed, rank, world
        self.workers = max(1, cfg.num_workers)
        self.group = max(1, cfg.group_by_length)
        self.gen, self.first_role, self.resume_streams = 0, 0, {}
        self.epoch_base = 0   # the first epoch of a fresh stream (data_state.fresh_epochs)
        self.orders = language_orders(manifest, cfg.shards, self.languages, seed, cfg.shuffle_buffer)
        # checked here, on every rank alike, not lazily in some DataLoader worker
        empty = [lang for lang, order in self.orders.items() if order.n == 0]
        if empty:
            raise DataError(f"data: languages {empty} have no samples in {cfg.shards}/manifest.json")
        # a stream holds the shards its current window overlaps (ShardCache), per language
        held = sum(min(o.n, cfg.shuffle_buffer + 2 * max(s.samples for s in o.shards)) for o in self.orders.values())
        if held > CACHE_WARN_SAMPLES and rank == 0:
            print(f"[data] warning: data.shuffle_buffer {cfg.shuffle_buffer} over {len(self.orders)} languages: "
                  f"each DataLoader worker may hold up to {held:,} samples of shards in memory "
                  f"(× {self.workers} workers per rank); lower shuffle_buffer or num_workers if memory is short",
                  file=sys.stderr, flush=True)
        self.parallel = None
        if cfg.parallel:
            if "en" not in self.languages:
                raise DataError("data.parallel: the shards must include English ('en') among the "
                                f"training languages (have {self.languages})")
            self.parallel = ParallelPairs(manifest, cfg.shards, self.languages, cfg.verify)
        self.pairs = cfg.parallel_pairs if self.parallel is not None else 0

    def restore(self, resume: dict) -> None:
        """`resume` (trainer/data_state.py): the streams' random-key generation, the role of the
        stream that is next in line, and the state of each of this rank's streams."""
        self.gen, self.first_role = resume.get("gen", 0), resume.get("first_role", 0)
        self.epoch_base = resume.get("epoch_base", 0)
        self.resume_streams = {int(sid): st if isinstance(st, StreamState) else StreamState.from_dict(st)
                               for sid, st in resume.get("streams", {}).items()}

    def sids(self) -> range:
        """The streams of this rank."""
        return range(self.rank * self.workers, (self.rank + 1) * self.workers)

    def stream(self, role: int) -> Stream:
        sid = self.rank * self.workers + role
        return Stream(self, sid, self.resume_streams.get(sid))

    def _mask(self, input_ids: torch.Tensor, real: torch.Tensor, g: torch.Generator) -> dict:
        """BERT masking: p of the real, non-special tokens; 80% [MASK], 10% random, 10% kept."""
        tok = self.manifest["tokenizer"]
        special = (input_ids == tok["cls_id"]) | (input_ids == tok["sep_id"]) | ~real.bool()
        pick = (torch.rand(input_ids.shape, generator=g) < self.cfg.mlm_probability) & ~special
        labels = torch.where(pick, input_ids, torch.full_like(input_ids, -100))
        r = torch.rand(input_ids.shape, generator=g)
        rand_ids = torch.randint(0, tok["vocab_size"], input_ids.shape, generator=g)
        masked = torch.where(pick & (r < 0.8), torch.full_like(input_ids, self.mask_id), input_ids)
        masked = torch.where(pick & (r >= 0.8) & (r < 0.9), rand_ids, masked)
        return {"input_ids": masked, "labels": labels}

    def collate(self, rows: list, mlm_key: str) -> dict:
        """Padded tensors of a batch's rows (Stream._rows); `rows`: [language, epoch, sample id,
        wrapped] of each sample row (for tests and run.trace: which samples were used)."""
        B, L = len(rows), max(len(ids) for _, ids, _ in rows)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for r, (_, ids, _) in enumerate(rows):
            input_ids[r, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
            mask[r, :len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask,
                 "lang": torch.tensor([li for li, _, _ in rows], dtype=torch.long),
                 "rows": [ref for _, _, ref in rows if ref is not None]}
        if self.mask_id is not None:
            key = hashlib.sha256(mlm_key.encode()).hexdigest()
            batch.update(self._mask(input_ids, mask, torch.Generator().manual_seed(int(key[:12], 16))))
        return batch

    def __iter__(self):
        info = get_worker_info()
        role = ((info.id if info is not None else 0) + self.first_role) % self.workers
        for batch, state in self.stream(role):
            batch["_state"] = state
            yield batch


class StatefulLoader:
    """The DataLoader plus the data position: the state of each stream as of the last batch
    the trainer took from it (batches prefetched by the workers are not consumed yet)."""

    def __init__(self, loader: DataLoader, dataset: MixedStream):
        self.loader, self.dataset = loader, dataset
        self.consumed = 0                      # micro-batches this rank took
        self.streams: dict[int, StreamState] = {}  # sid → state as restored or fresh (none taken since)
        self.fills: dict[int, dict] = {}       # sid → its current pool's fill snapshot
        self.positions: dict[int, dict] = {}   # sid → position after its last consumed batch

    def restore(self, resume: dict | None) -> None:
        """Before iterating: continue from a checkpoint's position (None: a fresh start)."""
        if resume:
            self.dataset.restore(resume)
            self.consumed = resume.get("consumed", 0)
            self.streams = dict(self.dataset.resume_streams)

    def __iter__(self):
        for batch in self.loader:
            position = batch.pop("_state")
            if "fill" in position:
                self.fills[position["sid"]] = position.pop("fill")
            self.positions[position["sid"]] = position
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict:
        """Every stream of this rank, each a complete StreamState record (as a dict)."""
        ds = self.dataset
        streams = {sid: StreamState(sid, gen=ds.gen, cursors={lang: {"pending": [], "next_epoch": ds.epoch_base}
                                                              for lang in ds.languages}) for sid in ds.sids()}
        streams.update(self.streams)
        streams.update({sid: full_state(self.fills[sid], pos) for sid, pos in self.positions.items()})
        return {"consumed": self.consumed, "streams": {sid: st.to_dict() for sid, st in streams.items()}}


class InProcessLoader:
    """What the DataLoader makes of a rank's streams, in one process and without padding:
    batches {"rows": [[language, epoch, sample id, wrapped], ...], "_state": position} taken
    from the workers in turn (the planner's tests and benchmarks drive a StatefulLoader with it)."""

    def __init__(self, dataset: MixedStream):
        self.dataset = dataset

    def __iter__(self):
        ds = self.dataset
        its = [ds.stream((w + ds.first_role) % ds.workers).rows() for w in range(ds.workers)]
        for k in itertools.count():
            rows, position = next(its[k % ds.workers])
            yield {"rows": [ref for _, _, ref in rows if ref is not None], "_state": position}


def as_is(batch: dict) -> dict:
    """The DataLoader's collate for our ready-made batches: its default would walk the stream
    state and rows element by element (a third of the loader's time with length grouping)."""
    return batch


def mix_weights(cfg: DataConfig, manifest: dict) -> dict[str, float]:
    tokens = {k: v["tokens"] for k, v in manifest["languages"].items()
              if not cfg.languages or k in cfg.languages}
    missing = [k for k in cfg.languages if k not in manifest["languages"]]
    if missing:
        raise DataError(f"data.languages: {missing} not in {cfg.shards}/manifest.json "
                        f"(has {sorted(manifest['languages'])})")
    return {k: q for k, (_, q) in smoothed_probabilities(tokens, cfg.alpha).items() if q > 0}


def build_loader(cfg: DataConfig, pad_id: int, seed: int, rank: int, world: int,
                 mask_id: int | None = None) -> StatefulLoader:
    """A fresh loader; `.restore()` it before iterating to resume."""
    manifest = read_manifest(cfg.shards)
    ds = MixedStream(cfg, manifest, mix_weights(cfg, manifest), pad_id, seed, rank, world, mask_id)
    # its own generator: iterating a DataLoader draws a worker seed, which must not shift
    # the global RNG that dropout uses (exact resume restores that one)
    loader = DataLoader(ds, batch_size=None, num_workers=cfg.num_workers, collate_fn=as_is,
                        prefetch_factor=4 if cfg.num_workers else None,
                        persistent_workers=False, generator=torch.Generator().manual_seed(seed))
    return StatefulLoader(loader, ds)


def tokens_per_language(batch: dict, languages: list[str]) -> Counter:
    real = batch["attention_mask"].sum(1)
    out: Counter = Counter()
    for li, n in zip(batch["lang"].tolist(), real.tolist()):
        out[languages[li]] += n
    return out
