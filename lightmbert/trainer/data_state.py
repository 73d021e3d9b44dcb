"""The data position in a checkpoint, and resuming it — also on another job shape.

Saved (client state "data", written by rank 0 after an all-gather): the shape of the job
(world size, DataLoader workers, micro-batch size, grad_accum, length grouping, pairs per
batch), what the epoch orders depend on (seed, shuffle_buffer, each language's shard list),
the micro-batches each rank consumed, and the state of every stream as of its last consumed
batch (trainer/data.py).

Resumed:
- same shape → every stream continues from its state: bit-identical to a run that was never
  stopped, and O(1): nothing is read again but the not-yet-used part of the current pool;
- another world size, worker count, micro-batch size or grouping (a requeue on fewer nodes)
  → elastic: per language, the samples no stream had consumed in the epochs in progress are
  re-split over the new streams (trainer/sampler.py), which then go on with fresh epochs.
  Each sample is still used exactly once per epoch; the order from there on is a new seeded
  one (a new `gen`eration of the streams' random keys);
  The leftover is bounded (sampler.unconsumed): what it cuts is logged, with counts;
- other shards (names, sample counts or sha256, translation-pair shards included), seed,
  shuffle_buffer or languages → positions mean nothing any more: an error naming what
  changed, unless data.reset_position starts the data at a fresh epoch. A data entry of an
  older format also starts the data at a fresh epoch, with a warning.
"""
from __future__ import annotations

import hashlib
import json

import torch.distributed as dist

from lightmbert.configs import DataConfig

from .data import DataError, MixedStream, StatefulLoader
from .sampler import StreamState, resplit, unconsumed

VERSION = 2  # 2: equal padded slices, intervals carry their layout, StreamState records


def shape_of(cfg: DataConfig, world: int, grad_accum: int, parallel: bool) -> dict:
    return {"world": world, "workers": max(1, cfg.num_workers), "micro_batch": cfg.micro_batch_size,
            "grad_accum": grad_accum, "group_by_length": max(1, cfg.group_by_length),
            "parallel_pairs": cfg.parallel_pairs if parallel else 0}


def _digest(shards: list) -> str:
    """Names, sample counts and content (the manifest's sha256) of a list of shards."""
    items = [(s.url.rsplit("/", 1)[-1], s.samples, s.sha256) for s in shards]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def order_of(ds: MixedStream) -> dict:
    """What the data position depends on: each language's shards (and the translation-pair
    shards, whose items a pool refers to by index)."""
    from .sampler import Shard
    out = {"seed": ds.seed, "shuffle_buffer": ds.cfg.shuffle_buffer,
           "languages": {lang: _digest(order.shards) for lang, order in ds.orders.items()}}
    if ds.parallel is not None:
        pairs = ds.manifest.get("parallel") or {}
        out["parallel"] = _digest([Shard(s["path"], s["samples"], s["sha256"]) for s in pairs.get("shards", [])])
    return out


def gather(loader: StatefulLoader, grad_accum: int) -> dict:
    """Every rank's data state, on every rank (a collective: call it on all ranks)."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, loader.state_dict())
    return snapshot(parts, loader.dataset, grad_accum)


def snapshot(parts: list[dict], ds: MixedStream, grad_accum: int) -> dict:
    """The checkpoint's "data" entry from each rank's `StatefulLoader.state_dict()`."""
    return {"version": VERSION, "gen": ds.gen, "epoch_base": ds.epoch_base,
            "shape": shape_of(ds.cfg, ds.world, grad_accum, ds.parallel is not None),
            "order": order_of(ds), "consumed": [p["consumed"] for p in parts],
            "streams": {sid: st for p in parts for sid, st in p["streams"].items()}}


def _order_changes(saved: dict, now: dict) -> list[str]:
    out = [f"{k}: {saved[k]} → {now[k]}" for k in ("seed", "shuffle_buffer") if saved[k] != now[k]]
    old, new = saved["languages"], now["languages"]
    if sorted(old) != sorted(new):
        out.append(f"languages: {sorted(old)} → {sorted(new)}")
    out += [f"shards of {lang!r}" for lang in sorted(set(old) & set(new)) if old[lang] != new[lang]]
    if saved.get("parallel") != now.get("parallel"):
        out.append("the translation-pair shards")
    return out


EPOCH_BASE = 1 << 20   # a data reset starts at epoch (resets so far) · EPOCH_BASE


def fresh_epochs(saved: dict) -> dict:
    """Fresh epochs that no earlier position can have reached: epoch numbers key the orders,
    so starting again at epoch 0 would replay the run's first epochs in the same order."""
    gen = saved.get("gen", 0) + 1
    return {"gen": gen, "epoch_base": (saved.get("epoch_base", 0) // EPOCH_BASE + 1) * EPOCH_BASE}


def resume_plan(saved: dict | None, ds: MixedStream, grad_accum: int, reset: bool, log) -> dict | None:
    """The `resume` argument of this rank's MixedStream (see the module docstring); `ds` is a
    fresh MixedStream of the new job (for its orders and shape)."""
    if saved is None:
        return None
    if saved.get("version") != VERSION:
        log(f"warning: the checkpoint's data position has format version {saved.get('version')} (this "
            f"version reads {VERSION}); starting the data at a fresh epoch")
        return fresh_epochs(saved)
    now_shape = shape_of(ds.cfg, ds.world, grad_accum, ds.parallel is not None)
    changes = _order_changes(saved["order"], order_of(ds))
    if changes:
        if not reset:
            raise DataError("data: the checkpoint's data position belongs to other data ("
                            + "; ".join(changes) + "); resume with the same data, or set "
                            "data.reset_position=true to start the data at a fresh epoch")
        log(f"data.reset_position: starting the data at a fresh epoch ({'; '.join(changes)})")
        return fresh_epochs(saved)
    old = saved["shape"]
    W = now_shape["workers"]
    streams = {int(k): v for k, v in saved["streams"].items()}
    same = all(old[k] == now_shape[k] for k in ("world", "workers", "micro_batch", "group_by_length",
                                                 "parallel_pairs"))
    if same:
        consumed = saved["consumed"][ds.rank]
        mine = range(ds.rank * W, (ds.rank + 1) * W)
        if old["grad_accum"] != now_shape["grad_accum"]:
            log(f"data: grad_accum {old['grad_accum']} → {now_shape['grad_accum']}; the streams continue as they were")
        return {"gen": saved["gen"], "epoch_base": saved.get("epoch_base", 0), "first_role": consumed % W,
                "consumed": consumed,
                "streams": {sid: StreamState.from_dict(streams[sid]) for sid in mine if sid in streams}}
    return _elastic(saved, streams, ds, log)


def _elastic(saved: dict, streams: dict, ds: MixedStream, log) -> dict:
    old = saved["shape"]
    S_old, S_new = old["world"] * old["workers"], ds.world * ds.workers
    gen = saved["gen"] + 1
    new_states = [StreamState(sid, gen=gen) for sid in range(S_new)]
    states = {sid: StreamState.from_dict(st) for sid, st in streams.items()}
    left_total, cuts, cut_by = 0, [], {}
    for li, lang in enumerate(ds.languages):
        n = ds.orders[lang].n
        cursors = [states[sid].cursors.get(lang) if sid in states else None for sid in range(S_old)]
        # samples read into a pool but in no batch the trainer took: back to the unread ones
        returned = [(e, p, s) for st in states.values() for group in st.pool
                    for ref_li, e, p, s in group["s"] if ref_li == li]
        left, first_fresh, cut = unconsumed(n, S_old, cursors, returned, S_new)
        left_total += sum(b - a for _, a, b, _ in left)
        if cut:
            cut_by[lang] = cut
            cuts.append(f"{lang}: {sum(cut.values())} position(s) of epoch(s) {sorted(cut)}")
        for sid, cur in enumerate(resplit(n, left, first_fresh, S_new)):
            new_states[sid].cursors[lang] = cur
    if cuts:
        log("data: elastic resume: warning: the leftover of the epochs in progress is bounded, and these "
            "positions are not used in their epoch (streams that were epochs behind, or fragments of resizes "
            "that followed each other with no progress): " + "; ".join(cuts))
    log(f"data: elastic resume from {old['world']} rank(s) × {old['workers']} worker(s), micro-batch "
        f"{old['micro_batch']}, grad_accum {old['grad_accum']} → {ds.world} × {ds.workers}, "
        f"{ds.cfg.micro_batch_size}: the {left_total} samples of the epochs in progress no stream had used "
        f"are re-split over {S_new} stream(s); every sample is still used once per epoch"
        + (" (less the positions cut above)" if cuts else ""))
    return {"gen": gen, "epoch_base": saved.get("epoch_base", 0), "first_role": 0, "consumed": 0,
            "streams": {sid: new_states[sid] for sid in ds.sids()},
            "cut": cut_by}
