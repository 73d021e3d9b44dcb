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
- other shards, seed, shuffle_buffer or languages → positions mean nothing any more: an error
  naming what changed, unless data.reset_position starts the data at a fresh epoch.
"""
from __future__ import annotations

import hashlib
import json

import torch.distributed as dist

from lightmbert.configs import DataConfig

from .data import DataError, MixedStream, StatefulLoader
from .sampler import resplit, unconsumed

VERSION = 1


def shape_of(cfg: DataConfig, world: int, grad_accum: int, parallel: bool) -> dict:
    return {"world": world, "workers": max(1, cfg.num_workers), "micro_batch": cfg.micro_batch_size,
            "grad_accum": grad_accum, "group_by_length": max(1, cfg.group_by_length),
            "parallel_pairs": cfg.parallel_pairs if parallel else 0}


def order_of(ds: MixedStream) -> dict:
    """What the epoch orders depend on (a language by the digest of its shard list)."""
    def digest(order) -> str:
        names = [(s.url.rsplit("/", 1)[-1], s.samples) for s in order.shards]
        return hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]
    return {"seed": ds.seed, "shuffle_buffer": ds.cfg.shuffle_buffer,
            "languages": {lang: digest(order) for lang, order in ds.orders.items()}}


def gather(loader: StatefulLoader, grad_accum: int) -> dict:
    """Every rank's data state, on every rank (a collective: call it on all ranks)."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, loader.state_dict())
    return snapshot(parts, loader.dataset, grad_accum)


def snapshot(parts: list[dict], ds: MixedStream, grad_accum: int) -> dict:
    """The checkpoint's "data" entry from each rank's `StatefulLoader.state_dict()`."""
    return {"version": VERSION, "gen": ds.gen,
            "shape": shape_of(ds.cfg, ds.world, grad_accum, ds.parallel is not None),
            "order": order_of(ds), "consumed": [p["consumed"] for p in parts],
            "streams": {sid: st for p in parts for sid, st in p["streams"].items()}}


def _order_changes(saved: dict, now: dict) -> list[str]:
    out = [f"{k}: {saved[k]} → {now[k]}" for k in ("seed", "shuffle_buffer") if saved[k] != now[k]]
    old, new = saved["languages"], now["languages"]
    if sorted(old) != sorted(new):
        out.append(f"languages: {sorted(old)} → {sorted(new)}")
    out += [f"shards of {lang!r}" for lang in sorted(set(old) & set(new)) if old[lang] != new[lang]]
    return out


def resume_plan(saved: dict | None, ds: MixedStream, grad_accum: int, reset: bool, log) -> dict | None:
    """The `resume` argument of this rank's MixedStream (see the module docstring); `ds` is a
    fresh MixedStream of the new job (for its orders and shape)."""
    if saved is None:
        return None
    now_shape = shape_of(ds.cfg, ds.world, grad_accum, ds.parallel is not None)
    changes = _order_changes(saved["order"], order_of(ds))
    if changes:
        if not reset:
            raise DataError("data: the checkpoint's data position belongs to other data ("
                            + "; ".join(changes) + "); resume with the same data, or set "
                            "data.reset_position=true to start the data at a fresh epoch")
        log(f"data.reset_position: starting the data at a fresh epoch ({'; '.join(changes)})")
        return {"gen": saved["gen"] + 1}
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
        return {"gen": saved["gen"], "first_role": consumed % W, "consumed": consumed,
                "streams": {sid: streams[sid] for sid in mine if sid in streams}}
    return _elastic(saved, streams, ds, log)


def _elastic(saved: dict, streams: dict, ds: MixedStream, log) -> dict:
    old = saved["shape"]
    S_old, S_new = old["world"] * old["workers"], ds.world * ds.workers
    new_states: list[dict] = [{"cursors": {}} for _ in range(S_new)]
    left_total = 0
    for li, lang in enumerate(ds.languages):
        n = ds.orders[lang].n
        cursors = [streams.get(sid, {}).get("cursors", {}).get(lang) for sid in range(S_old)]
        # samples read into a pool but in no batch the trainer took: back to the unread ones
        returned = [(e, p) for st in streams.values() for group in st["pool"]
                    for ref_li, e, p in group["s"] if ref_li == li]
        left, first_fresh = unconsumed(n, S_old, cursors, returned)
        left_total += sum(b - a for _, a, b in left)
        for sid, cur in enumerate(resplit(n, left, first_fresh, S_new)):
            new_states[sid]["cursors"][lang] = cur
    log(f"data: elastic resume from {old['world']} rank(s) × {old['workers']} worker(s), micro-batch "
        f"{old['micro_batch']}, grad_accum {old['grad_accum']} → {ds.world} × {ds.workers}, "
        f"{ds.cfg.micro_batch_size}: the {left_total} samples of the epochs in progress no stream had used "
        f"are re-split over {S_new} stream(s); every sample is still used once per epoch")
    W = ds.workers
    return {"gen": saved["gen"] + 1, "first_role": 0, "consumed": 0,
            "streams": {sid: {"sid": sid, **new_states[sid]} for sid in range(ds.rank * W, (ds.rank + 1) * W)}}
