"""python -m lightmbert.demo.report --teacher DIR --student DIR --pairs heldout.jsonl --out DIR

The demo's evaluation: the teacher, the student BEFORE distillation (the teacher truncated
to the student's bottom layers) and the student AFTER, on the same held-out pairs —
cross-lingual retrieval per language and zero-shot topic transfer — written as
report.json / retrieval.{csv,md} / transfer.json / retrieval.png, and printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lightmbert.evaluation import (default_device, format_table, load_encoder, load_pairs, load_topic_items, retrieval,
                        transfer, write_tables)

XNLI_OTHER = "ar bg de el es fr hi ru sw th tr ur vi zh".split()


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    langs = [k for k in next(iter(results.values())) if k != "mean"] + ["mean"]
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(8, len(langs) * 0.7), 4))
    for i, (name, res) in enumerate(results.items()):
        ax.bar([j + i * width for j in range(len(langs))], [res[k]["mean"] for k in langs], width, label=name)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(langs))], langs)
    ax.set_ylabel("top-1 retrieval (en↔x, both directions)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left")
    ax.set_title("Cross-lingual retrieval on held-out pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.demo.report", description=__doc__.split("\n\n")[1])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True, help="the exported student (HF directory)")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--languages", nargs="*", default=XNLI_OTHER)
    ap.add_argument("--max-per-language", type=int, default=300)
    ap.add_argument("--prefix", default="query: ")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    n_layers = json.loads((Path(args.student) / "config.json").read_text())["num_hidden_layers"]
    pairs = load_pairs(args.pairs, args.languages, args.max_per_language)
    items = load_topic_items(args.pairs, args.languages)
    dev = default_device()
    before, after = f"before ({n_layers} layers)", f"after ({n_layers} layers)"
    ret, tra, secs = {}, {}, {}
    # one pass of the teacher serves the teacher (last layer) and the student before
    # distillation (the teacher's bottom n_layers: hidden_states[n_layers])
    t0 = time.time()
    model, tok = load_encoder(args.teacher, dev)
    last = model.config.num_hidden_layers
    both = (last, n_layers)
    r = retrieval(model, tok, pairs, args.prefix, layers=both, progress=True, desc="retrieval teacher + before")
    t = transfer(model, tok, items, args.prefix, layers=both, progress=True, desc="transfer teacher + before")
    ret["teacher"], ret[before], tra["teacher"], tra[before] = r[last], r[n_layers], t[last], t[n_layers]
    secs["teacher + before"] = round(time.time() - t0, 1)
    del model
    t0 = time.time()
    model, tok = load_encoder(args.student, dev)
    ret[after] = retrieval(model, tok, pairs, args.prefix, progress=True, desc="retrieval after")
    tra[after] = transfer(model, tok, items, args.prefix, progress=True, desc="transfer after")
    secs[after] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_tables(ret, args.out)
    (args.out / "transfer.json").write_text(json.dumps(tra, indent=1))
    names = list(ret)
    t_mean, a_mean = ret[names[0]]["mean"]["mean"], ret[names[2]]["mean"]["mean"]
    report = {"retrieval_mean": {n: ret[n]["mean"]["mean"] for n in names},
              "after_over_teacher": a_mean / max(t_mean, 1e-9),
              "goal_97pct_met": a_mean >= 0.97 * t_mean,
              "transfer": {n: {"en": tra[n]["en"], "others": tra[n]["mean_other"], "gap": tra[n]["gap"]}
                           for n in names},
              "eval_seconds": secs, "pairs_per_language": {k: len(v) for k, v in pairs.items()}}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    plot(ret, args.out / "retrieval.png")
    print(format_table(ret))
    print(f"\nafter / teacher = {report['after_over_teacher']:.3f} (goal ≥ 0.97: "
          f"{'met' if report['goal_97pct_met'] else 'missed'})")
    for n in names:
        t = report["transfer"][n]
        print(f"topic transfer {n:<22} en {t['en']:.3f}  others {t['others']:.3f}  gap {t['gap']:+.3f}")
    print(f"wrote {args.out}/report.json, retrieval.{{json,csv,md,png}}, transfer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
