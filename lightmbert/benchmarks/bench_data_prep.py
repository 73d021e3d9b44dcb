"""python -m lightmbert.benchmarks.bench_data_prep [--mb-per-lang 2] [--procs 1 2] [--out runs/bench]

Throughput of the whole data_prep stage (read → normalise → tokenise → pack → .npz →
tar shards + hashes + manifest) against the bare tokenizer on the same text with the same
number of processes (read lines → encode_batch_fast, nothing kept). Text: the demo corpus
(real multilingual text, teacher's XLM-R tokenizer) when built, else a synthetic fixture.
Prints a table and writes CSV. Goal: stage ≥ 85% of the bare tokenizer; near-linear scaling.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .report import report

LANGS = ["en", "de", "ru", "zh", "ar", "hi", "es", "el"]


def _bare_worker(args) -> int:
    tok_json, files = args
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(tok_json)
    n = 0
    for f in files:
        batch = []
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    batch.append(line)
                if len(batch) >= 2048:
                    n += sum(len(e.ids) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
                    batch = []
        if batch:
            n += sum(len(e.ids) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
    return n


def bare_tokenizer(tok_json: str, files: list[Path], procs: int) -> tuple[float, int]:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    shares = [files[i::procs] for i in range(procs)]
    t0 = time.perf_counter()
    if procs == 1:
        n = _bare_worker((tok_json, shares[0]))
    else:
        with mp.get_context("fork").Pool(procs) as pool:
            n = sum(pool.map(_bare_worker, [(tok_json, s) for s in shares]))
    return time.perf_counter() - t0, n


def whole_stage(text: Path, tokenizer: str, procs: int, out: Path) -> tuple[float, int]:
    from lightmbert.configs import PrepConfig, load
    from lightmbert.data_prep.shard import run
    shutil.rmtree(out, ignore_errors=True)
    cfg = load(PrepConfig, None, [f"--input.directory={text}", f"--tokenizer.name_or_path={tokenizer}",
                                  f"--output.dir={out}", f"--workers={procs}", "--input.chunk_mb=1",
                                  "--packing.seq_len=128", "--output.shard_samples=5000"])
    t0 = time.perf_counter()
    m = run(cfg)
    return time.perf_counter() - t0, m["totals"]["counts"]["content_tokens"]


def prepare_text(tmp: Path, mb: float) -> tuple[Path, str, str]:
    from lightmbert.configs.loader import expand_env
    demo = Path(expand_env("${LIGHTMBERT_CACHE:-~/.cache/lightmbert}/demo"))  # made by `make demo-assets`
    text = tmp / "text"
    text.mkdir()
    limit = int(mb * (1 << 20))
    if (demo / "text" / "en.txt").exists() and (demo / "teacher").is_dir():
        for lang in LANGS:
            data = (demo / "text" / f"{lang}.txt").read_bytes()[:limit]
            (text / f"{lang}.txt").write_bytes(data[: data.rfind(b"\n") + 1])
        return text, str(demo / "teacher"), "demo corpus, multilingual-e5-small tokenizer"
    from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text
    for i, lang in enumerate(WORDS):
        docs, size = [], 0
        while size < limit:
            docs += random_documents(lang, 500, seed=i * 1000 + len(docs))
            size = sum(len(s) for d in docs for s in d)
        write_text(text / f"{lang}.txt", docs)
    return text, str(make_tokenizer(tmp / "tok")), "synthetic fixture, tiny WordPiece tokenizer"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb-per-lang", type=float, default=2.0)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args(argv)
    from lightmbert.data_prep.tokenizer import backend_json, load_tokenizer
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        text, tokenizer, what = prepare_text(tmp, args.mb_per_lang)
        tok_json = backend_json(load_tokenizer(tokenizer))
        files = sorted(text.glob("*.txt"))
        mbytes = sum(f.stat().st_size for f in files) / 1e6
        rows = []
        for procs in args.procs:
            tb, nb = bare_tokenizer(tok_json, files, procs)
            ts, ns = whole_stage(text, tokenizer, procs, tmp / f"out{procs}")
            assert nb == ns, f"token counts differ: bare {nb}, stage {ns}"
            rows.append({"procs": procs, "text_mb": round(mbytes, 1), "tokens": ns,
                         "bare_s": round(tb, 2), "stage_s": round(ts, 2),
                         "bare_tok_s": round(nb / tb), "stage_tok_s": round(ns / ts),
                         "stage_vs_bare": round(tb / ts, 3)})
    base = rows[0]["stage_tok_s"]
    for r in rows:
        r["scaling_vs_1proc"] = round(r["stage_tok_s"] / base, 2)
    print(f"\nbench_data_prep: {what}; {mbytes:.1f} MB of text, {os.cpu_count()} CPUs")
    report(rows, args.out / "bench_data_prep.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
