"""python -m lightmbert.data_prep.inspect OUT [--alpha 0.7] [--verify]

Per-language table of a data_prep output: tokens, samples, shards, the token share p_i and
the sampling probability q_i ∝ p_i^α that the trainer's language mixer will use.
"""
from __future__ import annotations

import argparse
import sys

from . import PrepError
from .manifest import read_manifest, verify
from .sampling import smoothed_probabilities


def table(manifest: dict, alpha: float) -> list[dict]:
    langs = manifest["languages"]
    probs = smoothed_probabilities({k: v["tokens"] for k, v in langs.items()}, alpha)
    rows = [{"language": k, "tokens": v["tokens"], "samples": v["samples"],
             "shards": len(v["shards"]), "p": probs[k][0], "q": probs[k][1]}
            for k, v in langs.items()]
    return sorted(rows, key=lambda r: -r["tokens"])


def format_table(rows: list[dict], alpha: float) -> str:
    head = f"{'language':<10}{'tokens':>14}{'samples':>12}{'shards':>8}{'p_i':>9}{f'q_i (α={alpha:g})':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['language']:<10}{r['tokens']:>14,}{r['samples']:>12,}{r['shards']:>8}"
                     f"{r['p']:>9.4f}{r['q']:>14.4f}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<10}{sum(r['tokens'] for r in rows):>14,}"
                 f"{sum(r['samples'] for r in rows):>12,}{sum(r['shards'] for r in rows):>8}"
                 f"{1.0:>9.4f}{1.0:>14.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.data_prep.inspect", description=__doc__.split("\n\n")[1])
    ap.add_argument("out", help="a data_prep output folder (holding manifest.json)")
    ap.add_argument("--alpha", type=float, default=0.7, help="smoothing exponent (default 0.7)")
    ap.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    args = ap.parse_args(argv)
    try:
        m = verify(args.out) if args.verify else read_manifest(args.out)
        rows = table(m, args.alpha)
    except (PrepError, ValueError) as e:
        print(f"lightmbert.data_prep.inspect: error: {e}", file=sys.stderr)
        return 2
    tok = m["tokenizer"]
    print(f"{args.out}: tokenizer {tok['name']} (vocab {tok['vocab_size']}), seq_len {m['seq_len']}, "
          f"packing {m['packing']['mode']}")
    print(format_table(rows, args.alpha))
    counts = {k: v for k, v in m["totals"]["counts"].items() if v}
    print("counts: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    par = m.get("parallel")
    if par:
        trs = par["translations"]
        print(f"translation pairs: {par['items']:,} items, {sum(trs.values()):,} translations into "
              f"{len(trs)} languages, {par['tokens']:,} tokens, {len(par['shards'])} shards "
              f"(from {par['source']}); " + ", ".join(f"{k}={v:,}" for k, v in par["counts"].items() if v))
    if args.verify:
        print("verified: every shard present, hashes and counts match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
