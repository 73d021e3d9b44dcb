"""python -m lightmbert.benchmarks.bench_trim --student DIR --shards SHARDS --heldout [NAME=]PAIRS[@langs] ...
                                  [--budgets 0,150000,180000] [--retrieval] [--max-pairs 100] [--out DIR]

What a trimmed vocabulary keeps, per budget (lightmbert.deploy.trim --budget; 0 = the pieces
seen in the shards only): pieces kept, the embedding table's size in fp32 and as the int8 ONNX export stores it (4-bit
blocks of 32 with an fp32 scale), and on
each held-out set the coverage (the share of the original tokenizer's pieces of the held-out
sentences that survive: text whose pieces all survive is segmented, and encoded, exactly as
by the untrimmed student) as the mean over languages and the worst language. `--retrieval`
also trims the student at each budget (fp32, PyTorch) and scores held-out retrieval on every
set, beside the untrimmed student's. Writes bench_trim.csv (and the coverage per language,
bench_trim.json); run by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .report import report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--heldout", action="append", required=True, help="[NAME=]PAIRS.jsonl[@lang,lang] (repeatable)")
    ap.add_argument("--languages", default="", help="trim for these languages (default: all in the shards)")
    ap.add_argument("--budgets", default="0,150000,180000,210000")
    ap.add_argument("--retrieval", action="store_true", help="also trim at each budget and score retrieval")
    ap.add_argument("--max-pairs", type=int, default=100)
    ap.add_argument("--prefix", default="query: ")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args(argv)

    import numpy as np

    from lightmbert.data_prep.manifest import read_manifest
    from lightmbert.data_prep.tokenizer import load_tokenizer
    from lightmbert.deploy.trim import _pieces, count_shard_ids, coverage, heldout_sentences, kept_ids, trim
    from lightmbert.evaluation import load_encoder, load_pairs, parse_set, retrieval, worst_share

    tj = json.loads((args.student / "tokenizer.json").read_text(encoding="utf-8"))
    languages = [x for x in args.languages.split(",") if x] or sorted(read_manifest(args.shards)["languages"])
    vocab = len(_pieces(tj))
    hidden = json.loads((args.student / "config.json").read_text())["hidden_size"]
    counts = count_shard_ids(args.shards, languages, vocab)
    backend = load_tokenizer(str(args.student)).backend_tokenizer
    sets = {}
    for spec in args.heldout:
        name, path, langs = parse_set(spec)
        # coverage on every language of the set (and its English side), trimmed for or not
        sents = heldout_sentences(Path(path), ["en", *(langs or load_pairs(path))])
        sets[name] = (path, sents, langs)
    full = None
    if args.retrieval:
        model, tok = load_encoder(str(args.student))
        full = {name: retrieval(model, tok, load_pairs(path, langs or languages, args.max_pairs), args.prefix)
                for name, (path, _, langs) in sets.items()}
        del model
    rows, per_language = [], {}
    for budget in [int(b) for b in args.budgets.split(",")]:
        keep = kept_ids(tj, counts, 1, budget)
        row = {"budget": budget or "shards only", "pieces": len(keep), "share_of_vocab": round(len(keep) / vocab, 3),
               "emb_fp32_mb": round(len(keep) * hidden * 4 / 1e6, 1),
               # as onnx_export --int8 stores them: 4-bit values in blocks of 32, an fp32 scale each
               "emb_int8_onnx_mb": round(len(keep) * hidden * (0.5 + 4 / 32) / 1e6, 1)}
        kept = set(keep)
        for name, (_, sents, _) in sets.items():
            cov = coverage(backend, kept, sents)
            per_language.setdefault(name, {})[str(budget)] = {k: round(v, 4) for k, v in sorted(cov.items())}
            worst = min(cov, key=cov.get)
            row[f"{name}_coverage"] = round(float(np.mean(list(cov.values()))), 4)
            row[f"{name}_worst"] = f"{worst} {cov[worst]:.3f}"
        if args.retrieval:
            with tempfile.TemporaryDirectory() as d:
                trim(args.student, Path(d) / "t", args.shards, languages, 1, budget=budget)
                model, tok = load_encoder(str(Path(d) / "t"))
                for name, (path, _, langs) in sets.items():
                    res = retrieval(model, tok, load_pairs(path, langs or languages, args.max_pairs), args.prefix)
                    lang, share = worst_share(res, full[name])
                    row[f"{name}_retrieval"] = round(res["mean"]["mean"], 4)
                    row[f"{name}_minus_untrimmed"] = round(res["mean"]["mean"] - full[name]["mean"]["mean"], 4)
                    row[f"{name}_worst_vs_untrimmed"] = f"{lang} {share:.3f}"
                del model
        print(f"[bench_trim] {row}", flush=True)
        rows.append(row)
    extra = {"student": str(args.student), "vocab": vocab}
    if full:
        extra.update({f"{name}_untrimmed": round(r["mean"]["mean"], 4) for name, r in full.items()})
    report(rows, args.out / "bench_trim.csv", extra)
    (args.out / "bench_trim.json").write_text(json.dumps({"coverage_per_language": per_language}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
