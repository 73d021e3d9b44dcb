"""python -m lightmbert.benchmarks.bench_loader [--shards DIR] [--packed DIR] [--seconds 5] [--tiny] [--out runs/bench]

Can the loader keep up with a GPU? One H100 at our MFU goal consumes ~7,000 sequences of 128
tokens per second; a loader process should deliver several times that. Measured, per loader
process, over the same shards:
  tarfile       plain `tarfile` iteration over the shards' members (bytes only, no decoding):
                the baseline the issue set (goal: our reader ≥ 0.8× of it)
  reader        lightmbert.data_prep.tarreader: whole-shard validation (structure + sample count) and
                `.npy` decoding, i.e. what training gets
  stream        lightmbert.trainer.data.MixedStream in this process: reading, windowed shuffle, language
                mixing, padding into micro-batches (group_by_length 0 and 32)
  dataloader    the same stream through torch's DataLoader with 1, 2 and 4 worker processes
Samples/s and real (non-padding) tokens/s, for one-segment shards (the demo's: `--shards`,
default runs/demo/shards) and packed shards (`--packed`; made from the demo text if absent).
`--tiny`: synthetic shards, a smoke test of the script. Prints a table, writes CSV.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .report import report


def shard_files(root: Path, limit: int) -> list[Path]:
    return sorted(root.glob("*/*.tar"))[:limit]


def bench_tarfile(files: list[Path]) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for f in files:
        with tarfile.open(f, "r|") as tar:
            for m in tar:
                if m.isfile():
                    tar.extractfile(m).read()
                    n += 1
    return n // 2, time.perf_counter() - t0  # two members (input_ids.npy, lang.txt) per sample


def bench_reader(files: list[Path]) -> tuple[int, int, float]:
    from lightmbert.data_prep.tarreader import load_shard, npy_array
    t0, n, tok = time.perf_counter(), 0, 0
    for f in files:
        for _, fields in load_shard(str(f)):
            tok += len(npy_array(fields["input_ids.npy"], str(f)))
            n += 1
    return n, tok, time.perf_counter() - t0


def bench_stream(root: Path, group: int, workers: int, seconds: float, batch: int = 32) -> tuple[int, int, float]:
    from lightmbert.configs import DataConfig
    from lightmbert.data_prep.manifest import read_manifest
    from lightmbert.trainer.data import build_loader
    cfg = DataConfig(shards=str(root), micro_batch_size=batch, num_workers=workers, shuffle_buffer=1000,
                     group_by_length=group)
    loader = build_loader(cfg, read_manifest(root)["tokenizer"]["pad_id"], 1234, 0, 1)
    it = iter(loader)
    for _ in range(max(2, 2 * workers)):  # start-up (workers forking, first shards) excluded
        next(it)
    n = tok = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += b["input_ids"].shape[0]
        tok += int(b["attention_mask"].sum())
    return n, tok, time.perf_counter() - t0


def make_shards(tmp: Path, mode: str, tiny: bool) -> Path:
    from lightmbert.configs import PrepConfig, load
    from lightmbert.configs.loader import expand_env
    from lightmbert.data_prep.shard import run
    demo = Path(expand_env("${LIGHTMBERT_CACHE:-~/.cache/lightmbert}/demo"))
    if not tiny and (demo / "text" / "en.txt").exists():
        text, tok = demo / "text", demo / "teacher"
        extra = ["--input.include=[en, de, ru, zh, ar, hi, sw, fr]"]
    else:
        from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text
        tok = make_tokenizer(tmp / "tok")
        text = tmp / "text"
        for i, lang in enumerate(WORDS):
            write_text(text / f"{lang}.txt", random_documents(lang, 300 if tiny else 3000, seed=i))
        extra = []
    out = tmp / f"shards-{mode}"
    run(load(PrepConfig, None, [f"--input.directory={text}", f"--tokenizer.name_or_path={tok}",
                                f"--output.dir={out}", f"--packing.mode={mode}", "--packing.seq_len=128",
                                "--output.shard_samples=2000", *extra]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=Path, default=Path("runs/demo/shards"), help="one-segment shards")
    ap.add_argument("--packed", type=Path, default=None, help="packed shards (made if absent)")
    ap.add_argument("--max-shards", type=int, default=40, help="shards read by tarfile/reader")
    ap.add_argument("--seconds", type=float, default=5.0, help="time per stream/dataloader measurement")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sets = {"one-segment": args.shards if args.shards.is_dir() and not args.tiny else make_shards(tmp, "segment", args.tiny),
                "packed": args.packed if args.packed and args.packed.is_dir() else make_shards(tmp, "pack", args.tiny)}
        secs = 0.5 if args.tiny else args.seconds
        for name, root in sets.items():
            files = shard_files(root, args.max_shards)
            bench_reader(files[:1])  # imports and first-open costs out of the numbers
            bench_tarfile(files[:1])
            n, dt = bench_tarfile(files)
            base = n / dt
            rows.append(dict(shards=name, loader="tarfile (bytes only)", workers=0, samples_s=round(base),
                             tokens_s="", vs_tarfile=1.0))
            n, tok, dt = bench_reader(files)
            rows.append(dict(shards=name, loader="reader (validated, decoded)", workers=0, samples_s=round(n / dt),
                             tokens_s=round(tok / dt), vs_tarfile=round(n / dt / base, 2)))
            for group in (0, 32):
                n, tok, dt = bench_stream(root, group, 0, secs)
                rows.append(dict(shards=name, loader=f"stream (group_by_length {group})", workers=0,
                                 samples_s=round(n / dt), tokens_s=round(tok / dt), vs_tarfile=round(n / dt / base, 2)))
            for w in ([1] if args.tiny else [int(x) for x in args.workers.split(",")]):
                n, tok, dt = bench_stream(root, 32, w, secs)
                rows.append(dict(shards=name, loader="dataloader (group_by_length 32)", workers=w,
                                 samples_s=round(n / dt), tokens_s=round(tok / dt), vs_tarfile=round(n / dt / base, 2)))
    print(f"\nbench_loader on CPU ({os.cpu_count()} cores); samples/s per loader process unless workers > 0")
    report(rows, args.out / "bench_loader.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
