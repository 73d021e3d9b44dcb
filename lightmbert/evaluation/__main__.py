"""python -m lightmbert.evaluation retrieval|transfer --model [NAME=]DIR [--model ...] --pairs heldout.jsonl

Cross-lingual evaluation of any Hugging Face encoder directory:

  retrieval   top-1 English↔X translation retrieval on held-out pairs (both directions,
              per language and averaged); `--truncate N` adds "the first model cut to its
              bottom N layers" (the student before distillation).
  transfer    zero-shot topic transfer: an English-fit classifier on frozen sentence
              embeddings, tested on every language; reports the transfer gap.

Models can be given as `NAME=DIR` (the name labels the table). Prints a table and, with
--out, writes JSON/CSV/Markdown. Progress: a bar on a terminal, a log line every 10% otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .encoders import default_device, load_encoder, truncated
from .retrieval import format_table, load_pairs, retrieval, write_tables
from .transfer import load_topic_items, transfer


def _models(args):
    models = [m.split("=", 1) if "=" in m else (Path(m).name, m) for m in args.model]
    dev = default_device()
    for name, path in models:
        yield (name, *load_encoder(path, dev))
    if args.truncate:
        name, path = models[0]
        yield (f"{name}[:{args.truncate}]", *truncated(path, args.truncate, dev))


def _retrieval(args) -> int:
    pairs = load_pairs(args.pairs, args.languages, args.max_per_language)
    if not pairs:
        print(f"evaluation: error: no pairs in {args.pairs}", file=sys.stderr)
        return 2
    results = {name: retrieval(model, tok, pairs, args.prefix, args.batch_size, progress=True,
                               desc=f"retrieval {name}")
               for name, model, tok in _models(args)}
    print(format_table(results))
    if args.out:
        write_tables(results, args.out)
    return 0


def _transfer(args) -> int:
    items = load_topic_items(args.pairs, args.languages)
    results = {name: transfer(model, tok, items, args.prefix, args.batch_size, progress=True,
                              desc=f"transfer {name}")
               for name, model, tok in _models(args)}
    langs = [k for k in next(iter(results.values())) if k not in ("classes",)]
    print(f"{'':<12}" + "".join(f"{n:>14}" for n in results))
    for k in langs:
        print(f"{k:<12}" + "".join(f"{r[k]:>14.3f}" for r in results.values()))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "transfer.json").write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.evaluation", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="task", required=True)
    for task, help_ in (("retrieval", "English↔X top-1 translation retrieval"),
                        ("transfer", "zero-shot topic transfer from English")):
        p = sub.add_parser(task, help=help_)
        p.add_argument("--model", action="append", required=True, help="DIR or NAME=DIR (repeatable)")
        p.add_argument("--truncate", type=int, default=0,
                       help="also evaluate the first model cut to its bottom N layers (the student "
                            "before distillation)")
        p.add_argument("--pairs", required=True, help="heldout.jsonl")
        p.add_argument("--languages", nargs="*", default=None)
        p.add_argument("--prefix", default="", help='input prefix, e.g. "query: " for E5 models')
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--out", type=Path, default=None)
        if task == "retrieval":
            p.add_argument("--max-per-language", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        with torch.no_grad():
            return _transfer(args) if args.task == "transfer" else _retrieval(args)
    except (OSError, ValueError) as e:
        print(f"lightmbert.evaluation: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
