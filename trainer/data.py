"""Training batches from data_prep shards: per-language streams mixed by q_i ∝ p_i^α, split
across ranks and DataLoader workers, seeded shuffling, padding per batch, exact resume.

Every (rank, worker) pair owns one deterministic, endless stream (no rank can run out and
hang the others): its share of each language — whole shards when a language has at least one
shard per stream, every S-th sample otherwise — read epoch after epoch in a seeded shard
order through a seeded shuffle buffer, and mixed by a seeded draw of the language for every
sample (optionally grouped by length into batches, optionally with translation pairs — the
shards' pre-tokenised pair shards — riding along). The DataLoader hands out batches
round-robin over its workers, so the data position is one number, the micro-batches this rank has consumed; on resume worker w plays the role
of the worker that was next in line, and each role skips the batches it had produced.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from configs import DataConfig
from data_prep.manifest import read_manifest, shard_url
from data_prep.sampling import smoothed_probabilities
from data_prep.tarreader import ShardError, load_shard, npy_array


class DataError(ValueError):
    """Unusable training data (raised before any process group work)."""


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    sha256: str


@dataclass(frozen=True)
class StreamPlan:
    """What one (rank, role) stream reads of one language."""
    shards: tuple[Shard, ...]
    stride: int   # keep every stride-th sample ...
    offset: int   # ... starting at this one (stride 1: whole shards)
    samples: int


_VERIFIED: set[str] = set()  # shards whose sha256 this process has checked (data.verify: sha256)


def shard_samples(shard: Shard, verify: str = "count") -> list[tuple[str, dict]]:
    """The samples of one shard, checked whole before any is used (see data.verify)."""
    sha = shard.sha256 if verify == "sha256" and shard.url not in _VERIFIED else None
    out = load_shard(shard.url, shard.samples if verify != "none" else None, sha)
    if sha is not None:
        _VERIFIED.add(shard.url)
    return out


def read_samples(shard: Shard, verify: str = "count") -> Iterator[np.ndarray]:
    """input_ids of each sample of one shard, in order."""
    for key, fields in shard_samples(shard, verify):
        ids = fields.get("input_ids.npy")
        if ids is None:
            raise ShardError(f"{shard.url}: sample {key} has no input_ids.npy")
        # a copy: a view would keep the whole shard's buffer alive while the sample waits in
        # the shuffle buffer (several shards per language per worker)
        yield npy_array(ids, shard.url).copy()


def plan_streams(manifest: dict, root: str, languages: list[str], n_streams: int, sid: int) -> dict[str, StreamPlan]:
    plans = {}
    for lang in languages:
        shards = [Shard(shard_url(root, s["path"]), s["samples"], s["sha256"])
                  for s in manifest["languages"][lang]["shards"]]
        if len(shards) >= n_streams:
            mine = tuple(shards[i] for i in range(sid, len(shards), n_streams))
            plans[lang] = StreamPlan(mine, 1, 0, sum(s.samples for s in mine))
        else:
            total = sum(s.samples for s in shards)
            plans[lang] = StreamPlan(tuple(shards), n_streams, sid, max(0, -(-(total - sid) // n_streams)))
    return plans


class ParallelPairs:
    """The translation pairs of a data_prep output (manifest entry `parallel`, written by
    data_prep.parallel from `input.parallel`): items of (English ids, [(language, ids), ...]),
    restricted to the training languages. Each draw is `pairs` items with one of their
    translations each."""

    def __init__(self, manifest: dict, root: str, languages: list[str], verify: str = "count"):
        entry = manifest.get("parallel")
        if not entry:
            raise DataError(f"data.parallel: {root}/manifest.json has no translation pairs: shard with "
                            f"input.parallel set (data_prep.parallel), or set data.parallel: false")
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

    def draw(self, rng: random.Random, pairs: int) -> list[tuple[np.ndarray, str, np.ndarray]]:
        """`pairs` × (English ids, language, translation ids)."""
        out = []
        for _ in range(pairs):
            en, trs = self.items[rng.randrange(len(self.items))]
            lang, ids = rng.choice(trs)
            out.append((en, lang, ids))
        return out


class MixedStream(IterableDataset):
    """Endless micro-batches for one rank (see the module docstring)."""

    def __init__(self, cfg: DataConfig, manifest: dict, weights: dict[str, float], pad_id: int,
                 seed: int, rank: int, world: int, start_batch: int = 0, mask_id: int | None = None):
        self.cfg, self.manifest, self.weights = cfg, manifest, weights
        self.mask_id = mask_id  # set: BERT masking for the MLM loss
        self.languages = sorted(weights)
        self.pad_id, self.seed, self.rank, self.world = pad_id, seed, rank, world
        self.start_batch = start_batch
        self.workers = max(1, cfg.num_workers)
        self.parallel = None
        if cfg.parallel:
            if "en" not in self.languages:
                raise DataError("data.parallel: the shards must include English ('en') among the "
                                f"training languages (have {self.languages})")
            self.parallel = ParallelPairs(manifest, cfg.shards, self.languages, cfg.verify)

    def _lang_iter(self, lang: str, plan: StreamPlan, sid: int) -> Iterator[np.ndarray]:
        epoch = 0
        while True:
            rng = random.Random(f"{self.seed}/{sid}/{lang}/{epoch}")
            order = list(plan.shards)
            rng.shuffle(order)
            buf: list[np.ndarray] = []
            k = 0
            for shard in order:
                for ids in read_samples(shard, self.cfg.verify):
                    if plan.stride > 1:
                        keep = k % plan.stride == plan.offset
                        k += 1
                        if not keep:
                            continue
                    if len(buf) < self.cfg.shuffle_buffer:
                        buf.append(ids)
                        continue
                    j = rng.randrange(len(buf))
                    buf[j], ids = ids, buf[j]
                    yield ids
            rng.shuffle(buf)
            yield from buf
            epoch += 1

    def _samples(self, role: int) -> Iterator[tuple[int, np.ndarray]]:
        sid = self.rank * self.workers + role
        plans = plan_streams(self.manifest, self.cfg.shards, self.languages, self.world * self.workers, sid)
        langs = [lang for lang in self.languages if plans[lang].samples > 0]
        if not langs:
            raise DataError(f"stream {sid}: no samples (too few for {self.world} ranks × "
                            f"{self.workers} workers)")
        iters = {lang: self._lang_iter(lang, plans[lang], sid) for lang in langs}
        w = [self.weights[lang] for lang in langs]
        rng = random.Random(f"{self.seed}/{sid}/mix")
        index = {lang: i for i, lang in enumerate(self.languages)}
        while True:
            lang = rng.choices(langs, weights=w)[0]
            yield index[lang], next(iters[lang])

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

    def _groups(self, it: Iterator, role: int) -> Iterator[list]:
        """Lists of (language index, ids): B samples of the stream, then with data.parallel K
        English rows and their K translations. With data.group_by_length = G > 1, G·B samples
        are sorted by length and cut into G batches of neighbours (and G·K pairs likewise,
        matched shortest to shortest), handed out in a seeded random order: far less padding
        on short, varied texts; every sample still used once, in a fixed order."""
        B, G = self.cfg.micro_batch_size, max(1, self.cfg.group_by_length)
        K = self.cfg.parallel_pairs if self.parallel is not None else 0
        rng = random.Random(f"{self.seed}/{self.rank}/{role}/group")
        pair_rng = random.Random(f"{self.seed}/{self.rank}/{role}/parallel")
        index = {lang: i for i, lang in enumerate(self.languages)}
        en = index.get("en")
        while True:
            pool = [next(it) for _ in range(B * G)]
            pairs = self.parallel.draw(pair_rng, K * G) if K else []
            if G > 1:
                pool.sort(key=lambda s: len(s[1]))  # stable
                pairs.sort(key=lambda p: max(len(p[0]), len(p[2])))
            groups = [pool[i * B:(i + 1) * B] + [(en, p[0]) for p in pairs[i * K:(i + 1) * K]]
                      + [(index[p[1]], p[2]) for p in pairs[i * K:(i + 1) * K]] for i in range(G)]
            if G > 1:
                rng.shuffle(groups)
            yield from groups

    def _batches(self, role: int) -> Iterator[dict]:
        key = hashlib.sha256(f"{self.seed}/{self.rank}/{role}/mlm".encode()).hexdigest()
        g = torch.Generator().manual_seed(int(key[:12], 16))  # stable across processes
        for items in self._groups(self._samples(role), role):
            B, L = len(items), max(len(ids) for _, ids in items)
            input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
            mask = torch.zeros((B, L), dtype=torch.long)
            for r, (_, ids) in enumerate(items):
                input_ids[r, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
                mask[r, :len(ids)] = 1
            batch = {"input_ids": input_ids, "attention_mask": mask,
                     "lang": torch.tensor([li for li, _ in items], dtype=torch.long)}
            if self.mask_id is not None:
                batch.update(self._mask(input_ids, mask, g))
            yield batch

    def __iter__(self):
        info = get_worker_info()
        w = info.id if info is not None else 0
        W = self.workers
        role = (w + self.start_batch) % W             # who was next in line at the resume point
        done = max(0, -(-(self.start_batch - role) // W))  # batches this role had produced
        batches = self._batches(role)
        for _ in range(done):
            next(batches)
        yield from batches


def build_loader(cfg: DataConfig, pad_id: int, seed: int, rank: int, world: int,
                 start_batch: int = 0, mask_id: int | None = None) -> tuple[DataLoader, MixedStream]:
    manifest = read_manifest(cfg.shards)
    tokens = {k: v["tokens"] for k, v in manifest["languages"].items()
              if not cfg.languages or k in cfg.languages}
    missing = [k for k in cfg.languages if k not in manifest["languages"]]
    if missing:
        raise DataError(f"data.languages: {missing} not in {cfg.shards}/manifest.json "
                        f"(has {sorted(manifest['languages'])})")
    weights = {k: q for k, (_, q) in smoothed_probabilities(tokens, cfg.alpha).items() if q > 0}
    ds = MixedStream(cfg, manifest, weights, pad_id, seed, rank, world, start_batch, mask_id)
    # its own generator: iterating a DataLoader draws a worker seed, which must not shift
    # the global RNG that dropout uses (exact resume restores that one)
    loader = DataLoader(ds, batch_size=None, num_workers=cfg.num_workers,
                        prefetch_factor=4 if cfg.num_workers else None,
                        persistent_workers=False, generator=torch.Generator().manual_seed(seed))
    return loader, ds


def tokens_per_language(batch: dict, languages: list[str]) -> Counter:
    real = batch["attention_mask"].sum(1)
    out: Counter = Counter()
    for li, n in zip(batch["lang"].tolist(), real.tolist()):
        out[languages[li]] += n
    return out
