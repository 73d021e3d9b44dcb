"""A long run's faults in a row, simulated at the planner/checkpointer level (no processes):
≥ 300 seeded random events — train, checkpoint, preempted save (a partial tag left), kill -9
and resume from the newest complete tag, resize to 1–256 streams and 1–4 workers with other
micro-batch sizes and grouping, requeue — over languages with 0, 1, a few and many samples,
ragged shards and windows larger than shards. The real MixedStream / StatefulLoader /
resume_plan / Checkpointer run; only the shard reads and DeepSpeed's files are faked.

Invariants after every event: no (language, epoch, sample) used twice in its epoch (padding
repeats aside) and every finished epoch complete (less what a bounded leftover cut, counted);
realised language shares within ±2% of the target at every stream count; the checkpoint's
data entry bounded by a constant × streams × languages (streams: the larger of this job's
and the one it resumed from); a complete checkpoint always exists
once one was written; shard reads per job bounded by (shards + streams) per epoch touched.

The seed is printed; LIGHTMBERT_CHAOS_SEED=<seed> replays a run, LIGHTMBERT_CHAOS_EVENTS
sets its length."""
from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from lightmbert.configs import DataConfig

SEED = int(os.environ.get("LIGHTMBERT_CHAOS_SEED", random.randrange(1 << 30)))
EVENTS = int(os.environ.get("LIGHTMBERT_CHAOS_EVENTS", 320))
SIZES = {"zero": [], "one": [1], "few": [3, 4], "many": [400, 5, 3, 250, 1000, 2, 600, 1]}
ENTRY_BYTES = 700   # the data entry's bound: ENTRY_BYTES × (streams + 32) × languages


def manifest() -> dict:
    langs = {}
    for lang, sizes in SIZES.items():
        langs[lang] = {"tokens": 10 * sum(sizes), "shards": [
            {"path": f"{lang}-{k}.tar", "samples": n, "sha256": f"{lang}{k}"} for k, n in enumerate(sizes)]}
    return {"languages": langs, "tokenizer": {"pad_id": 0, "cls_id": 1, "sep_id": 2, "vocab_size": 50}}


class Preempted(Exception):
    pass


class FakeEngine:
    """DeepSpeed's side of a save: one optimizer file per rank, then the client state; a
    preempted save stops after `fail_after` files."""

    def __init__(self, world: int, fail_after: int | None = None):
        self.world, self.fail_after = world, fail_after

    def save_checkpoint(self, root, tag, client_state, save_latest):
        d = os.path.join(root, tag)
        os.makedirs(d, exist_ok=True)
        for r in range(self.world):
            if self.fail_after is not None and r >= self.fail_after:
                raise Preempted(tag)
            open(os.path.join(d, f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"), "w").close()
        with open(os.path.join(d, "client.json"), "w") as f:
            json.dump(client_state, f)


class Job:
    """One launch: `world` ranks × `workers` streams each, resumed from a data entry or fresh."""

    def __init__(self, sim: "Sim", world: int, workers: int, batch: int, group: int, saved: dict | None):
        from lightmbert.trainer.data import InProcessLoader, MixedStream, StatefulLoader, mix_weights
        from lightmbert.trainer.data_state import resume_plan
        self.world, self.workers, self.streams = world, workers, world * workers
        shape = (saved or {}).get("shape")
        self.streams_before = shape["world"] * shape["workers"] if shape else self.streams
        cfg = DataConfig(shards="/chaos", micro_batch_size=batch, num_workers=workers,
                         shuffle_buffer=sim.window, group_by_length=group)
        m = sim.manifest
        self.weights = mix_weights(cfg, m)
        self.loaders, self.iters, self.cut = [], [], {}
        for rank in range(world):
            ds = MixedStream(cfg, m, self.weights, 0, 7, rank, world)
            ds.read = sim.read
            loader = StatefulLoader(InProcessLoader(ds), ds)
            plan = resume_plan(saved, ds, 1, False, sim.logs.append)
            if rank == 0 and plan:
                self.cut = plan.get("cut", {})
            loader.restore(plan)
            self.loaders.append(loader)
            self.iters.append(iter(loader))

    def step(self) -> list:
        return [row for it in self.iters for row in next(it)["rows"]]

    def entry(self) -> dict:
        from lightmbert.trainer.data_state import snapshot
        return snapshot([ld.state_dict() for ld in self.loaders], self.loaders[0].dataset, 1)


class Sim:
    def __init__(self, seed: int, run_dir):
        from lightmbert.trainer.data import mix_weights
        self.rng, self.dir = random.Random(seed), run_dir
        self.manifest = manifest()
        self.window = self.rng.choice([2, 7, 64, 700, 5000])   # smaller and larger than shards
        self.keep = self.rng.choice([1, 2])
        self.logs: list[str] = []
        self.reads = 0
        self.trace: list[list] = []          # committed steps: rows [language, epoch, sample id, wrapped]
        self.cuts: list = []                 # (trace length at the resume, language, epoch, positions cut)
        self.cut: dict = defaultdict(lambda: defaultdict(int))   # language → epoch → positions cut
        self.shares: dict[int, Counter] = defaultdict(Counter)   # streams → rows per language
        self.step = 0
        self.saved_any = False
        self.job: Job | None = None
        self.events: Counter = Counter()
        self.target = mix_weights(DataConfig(shards="/chaos"), self.manifest)
        self.n = {lang: sum(s) for lang, s in SIZES.items()}

    def read(self, shard):
        self.reads += 1
        return [np.arange(1 + (k * 7 + shard.samples) % 11, dtype=np.int32) for k in range(shard.samples)]

    def shape(self) -> tuple[int, int, int, int]:
        workers = self.rng.randint(1, 4)
        streams = self.rng.choice([1, 2, 3, 5, 8, 16, 64, 256])
        return max(1, streams // workers), workers, self.rng.randint(1, 6), self.rng.randint(1, 3)

    def launch(self, shape=None) -> None:
        from lightmbert.trainer.checkpoint import Checkpointer
        shape = shape or self.shape()
        ck = self.ck = Checkpointer(self.dir, self.keep, 0, world=shape[0])   # one per job, as in the trainer
        tag = ck.resume_tag()            # sets partial tags aside
        saved = None
        if tag is not None:
            client = json.loads((ck.dir / tag / "client.json").read_text())
            saved, self.step = client["data"], client["step"]
            del self.trace[client["trace_len"]:]   # what the killed job did after it is lost
        elif self.saved_any:
            raise AssertionError("a complete checkpoint was written but none is found")
        else:
            self.trace, self.step = [], 0
        self.reads_at_launch = self.reads
        self.job = Job(self, *shape, saved)
        self.job_rows: list = []
        # a resume from the same checkpoint again replaces what the killed job's resume cut
        self.cuts = [c for c in self.cuts if c[0] < len(self.trace)]
        self.cuts += [(len(self.trace), lang, int(e), k) for lang, epochs in self.job.cut.items()
                      for e, k in epochs.items()]
        self.cut = defaultdict(lambda: defaultdict(int))
        for _, lang, e, k in self.cuts:
            self.cut[lang][e] += k

    def save(self, preempt: bool) -> None:
        engine = FakeEngine(self.job.world, self.rng.randrange(self.job.world) if preempt else None)
        ck = self.ck
        client = {"step": self.step, "data": self.job.entry(), "trace_len": len(self.trace)}
        size = len(json.dumps(client["data"]))
        bound = ENTRY_BYTES * (max(self.job.streams, self.job.streams_before) + 32) * len(self.target)
        assert size <= bound, f"seed {SEED}: data entry {size} bytes > {bound} ({self.job.streams} streams)"
        try:
            ck.save(engine, self.step, client)
            self.saved_any = True
        except Preempted:
            self.job = None   # the job is gone, its partial tag stays

    def event(self) -> None:
        kind = self.rng.choices(["train", "checkpoint", "preempted save", "kill -9", "resize", "requeue"],
                                [8, 2, 1, 1, 1, 1])[0]
        self.events[kind] += 1
        if self.job is None:
            self.launch()
        if kind == "train":
            for _ in range(self.rng.randint(1, 4)):
                rows = self.job.step()
                self.step += 1
                self.trace.append(rows)
                self.job_rows += rows
                self.shares[self.job.streams].update(r[0] for r in rows)
        elif kind == "checkpoint":
            self.save(preempt=False)
        elif kind == "preempted save":
            self.save(preempt=True)
            self.launch()
        elif kind == "kill -9":
            self.check_reads()
            self.launch()
        elif kind == "resize":       # preempted with a checkpoint, requeued on another shape
            self.save(preempt=False)
            self.check_reads()
            self.launch()
        else:                        # a requeue: same shape or not, the save may be cut short
            self.save(preempt=self.rng.random() < 0.3)
            if self.job is not None:
                self.check_reads()
            self.launch(self.shape() if self.rng.random() < 0.5 else None)

    # ------------------------------------------------------------------ invariants
    def check_epochs(self) -> None:
        """Committed rows: no sample twice in an epoch; every finished epoch complete."""
        langs = sorted(self.job.weights)
        uses: dict = defaultdict(Counter)
        for rows in self.trace:
            for li, e, sid, wrapped in rows:
                if not wrapped:
                    uses[(langs[li], e)][sid] += 1
        for (lang, e), c in uses.items():
            twice = [s for s, k in c.items() if k > 1]
            assert not twice, f"seed {SEED}: {lang} epoch {e}: samples {twice[:5]} used twice"
        state = self.job.entry()["streams"]
        for li, lang in enumerate(langs):
            in_progress = []
            for st in state.values():
                cur = st["cursors"].get(lang) or {"pending": [], "next_epoch": 0}
                in_progress.append(cur["pending"][0][0] if cur["pending"] else cur["next_epoch"])
                in_progress += [e for g in st["pool"] for ref_li, e, _, _ in g["s"] if ref_li == li]
            for e in range(min(in_progress)):
                missing = self.n[lang] - len(uses[(lang, e)])
                assert missing <= self.cut[lang].get(e, 0), \
                    f"seed {SEED}: {lang} epoch {e} finished with {missing} samples never used " \
                    f"(cut: {self.cut[lang].get(e, 0)})"

    def check_shares(self) -> None:
        langs = sorted(self.job.weights)
        for streams, counts in self.shares.items():
            total = sum(counts.values())
            if total < 3000:
                continue
            for li, lang in enumerate(langs):
                got = counts[li] / total
                assert abs(got - self.target[lang]) <= 0.02, \
                    f"seed {SEED}: {streams} streams: {lang} share {got:.3f}, target {self.target[lang]:.3f}"

    def check_reads(self) -> None:
        """Reads of one job ≤ Σ languages (shards + streams + 1) × (epochs it touched + 1)."""
        if self.job is None:
            return
        langs = sorted(self.job.weights)
        bound = 0
        for li, lang in enumerate(langs):
            epochs = {e for r in self.job_rows if r[0] == li for e in [r[1]]}
            span = (max(epochs) - min(epochs) + 1) if epochs else 0
            bound += (len(SIZES[lang]) + self.job.streams + 1) * (span + 1)
        got = self.reads - self.reads_at_launch
        assert got <= bound, f"seed {SEED}: {got} shard reads in one job, bound {bound}"

    def check_checkpoints(self) -> None:
        from lightmbert.trainer.checkpoint import Checkpointer
        if self.saved_any:
            tag = Checkpointer(self.dir, self.keep, 0, world=1).latest()
            assert tag and (self.dir / "checkpoints" / tag / "complete").is_file(), f"seed {SEED}: {tag}"


def run(sim: Sim, events: int) -> None:
    sim.launch()
    for _ in range(events):
        sim.event()
        if sim.job is not None:
            sim.check_epochs()
        sim.check_shares()
        sim.check_checkpoints()


def test_chaos(tmp_path, capsys):
    import time
    t0 = time.time()
    sim = Sim(SEED, tmp_path)
    try:
        run(sim, EVENTS)
    except BaseException as e:  # every failure names the seed that replays it
        raise AssertionError(f"chaos seed {SEED} (LIGHTMBERT_CHAOS_SEED={SEED} replays it), event "
                             f"{sum(sim.events.values())}: {type(e).__name__}: {e}") from e
    with capsys.disabled():
        print(f"\n[chaos] seed {SEED} (LIGHTMBERT_CHAOS_SEED), window {sim.window}, keep {sim.keep}: "
              f"{dict(sim.events)}; {sim.step} steps; {dict(sim.shares and {s: sum(c.values()) for s, c in sim.shares.items()})} "
              f"rows per stream count; cut {sum(sum(v.values()) for v in sim.cut.values())} positions; "
              f"{time.time() - t0:.1f} s")
    assert sum(sim.events.values()) >= 300
    # the bounded leftover cuts (counted) only after resizes that follow each other with almost no
    # progress — this simulation does that every few events (seen: up to 11% of the positions
    # used); a guard against gross loss, not a target
    cut, used = sum(sum(v.values()) for v in sim.cut.values()), sum(len(rows) for rows in sim.trace)
    assert cut <= 0.25 * used, f"seed {SEED}: {cut} positions cut for {used} used"
    assert sim.events["resize"] and sim.events["preempted save"] and sim.events["kill -9"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_fixed_seeds(tmp_path, seed):
    """Fixed seeds beside the random one (CI then always covers these histories)."""
    run(Sim(seed, tmp_path), 120)
