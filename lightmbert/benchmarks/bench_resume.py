"""python -m lightmbert.benchmarks.bench_resume [--steps 10,1000] [--tiny] [--out runs/bench]

Does resuming cost more the longer a run has gone? The data position after N optimizer steps
of configs/distill/tiny_cpu.yaml's data settings (micro-batch 8, 1 DataLoader worker,
shuffle_buffer 64, on synthetic shards of 4 languages) is restored two ways, each timed from
building the loader to holding the first batch:
  stateful   what the trainer does: the streams' saved state (trainer/data_state.py)
  replay     what it did before: a fresh loader that skips the N micro-batches already used
The model, optimizer and checkpoint loading do not depend on N and are left out.
Then, at the planner level (no model, shard reads faked), a long run: `--micro` micro-batches
in all on 4 ranks × 4 workers, with a resize to 3 × 4 half-way, then timed: the data entry's
size and the restore (resume_plan + the first batch of every stream) on the same shape and on
another (a second resize). Flat in the run's length: the streams stay in step, so the
elastic leftover is about one slice per stream, whatever the progress.
`--tiny`: 10 and 50 steps and 400 / 4,000 simulated micro-batches, a smoke test of the
script. Prints two tables, writes CSV.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

from .report import report


def make_shards(tmp: Path, docs: int) -> Path:
    from lightmbert.configs import PrepConfig, load
    from lightmbert.data_prep.shard import run
    from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text
    tok = make_tokenizer(tmp / "tok")
    for i, lang in enumerate(WORDS):
        write_text(tmp / "text" / f"{lang}.txt", random_documents(lang, docs, seed=i))
    run(load(PrepConfig, None, [f"--input.directory={tmp}/text", f"--tokenizer.name_or_path={tok}",
                                f"--output.dir={tmp}/shards", "--output.shard_samples=100",
                                "--packing.seq_len=32", "--workers=1"]))
    return tmp / "shards"


def simulate(micro: int) -> dict:
    """A simulated run of `micro` micro-batches with a resize half-way (see the docstring)."""
    import json

    import numpy as np

    from lightmbert.configs import DataConfig
    from lightmbert.trainer.data import InProcessLoader, MixedStream, StatefulLoader
    from lightmbert.trainer.data_state import resume_plan, snapshot
    sizes = {"big": [10_000] * 8, "mid": [3000, 1000], "small": [300]}
    m = {"languages": {lang: {"tokens": sum(s), "shards": [{"path": f"{lang}{k}", "samples": n, "sha256": ""}
                                                             for k, n in enumerate(s)]} for lang, s in sizes.items()},
         "tokenizer": {"pad_id": 0}}
    weights = {"big": 0.6, "mid": 0.3, "small": 0.1}

    def job(world, saved, batches):
        cfg = DataConfig(shards="/sim", micro_batch_size=8, num_workers=4, shuffle_buffer=1000)
        parts = []
        for rank in range(world):
            ds = MixedStream(cfg, m, weights, 0, 1, rank, world)
            ds.read = lambda shard: [np.zeros(4, np.int32)] * shard.samples
            loader = StatefulLoader(InProcessLoader(ds), ds)
            loader.restore(resume_plan(saved, ds, 1, False, lambda msg: None))
            it = iter(loader)
            for _ in range(batches):
                next(it)
            parts.append(loader.state_dict())
        return snapshot(parts, ds, 1)
    saved = job(4, None, micro // 2 // 4)
    saved = job(3, saved, micro // 2 // 3)
    out = {"micro_batches": micro, "entry_kb": round(len(json.dumps(saved)) / 1024, 1)}
    for name, world in (("restore_same_s", 3), ("restore_resize_s", 2)):
        t0 = time.perf_counter()
        job(world, saved, 1)
        out[name] = round(time.perf_counter() - t0, 3)
    return out


def main(argv=None) -> int:
    from lightmbert.configs import DistillConfig, load
    from lightmbert.data_prep.manifest import read_manifest
    from lightmbert.trainer.data import build_loader
    from lightmbert.trainer.data_state import resume_plan, snapshot
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="10,1000")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--micro", default="1000,10000,100000", help="simulated micro-batches (comma-separated)")
    args = ap.parse_args(argv)
    steps = [10, 50] if args.tiny else [int(s) for s in args.steps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        shards = make_shards(Path(d), 300 if args.tiny else 2000)
        cfg = load(DistillConfig, "configs/distill/tiny_cpu.yaml", [f"--data.shards={shards}"])
        pad = read_manifest(shards)["tokenizer"]["pad_id"]
        accum = cfg.engine.grad_accum

        def loader():
            return build_loader(cfg.data, pad, cfg.run.seed, 0, 1)
        for n in steps:
            run = loader()
            it = iter(run)
            for _ in range(n * accum):
                next(it)
            saved = snapshot([run.state_dict()], run.dataset, accum)
            del it, run
            t0 = time.perf_counter()
            again = loader()
            again.restore(resume_plan(saved, again.dataset, accum, False, lambda msg: None))
            first = next(iter(again))
            stateful = time.perf_counter() - t0
            t0 = time.perf_counter()
            replay = next(itertools.islice(iter(loader()), n * accum, None))
            replayed = time.perf_counter() - t0
            assert first["input_ids"].equal(replay["input_ids"]), "restore and replay disagree"
            rows.append(dict(steps=n, micro_batches=n * accum, stateful_s=round(stateful, 3),
                             replay_s=round(replayed, 3), replay_vs_stateful=round(replayed / stateful, 1)))
    print(f"\nbench_resume on CPU ({os.cpu_count()} cores): seconds from building the loader to the first batch")
    report(rows, args.out / "bench_resume.csv")
    sim = [simulate(n) for n in ([400, 4000] if args.tiny else [int(x) for x in args.micro.split(",")])]
    print("\nsimulated long run (16 → 12 streams half-way): data entry size and restore time")
    report(sim, args.out / "bench_resume_long.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
