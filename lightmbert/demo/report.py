"""python -m lightmbert.demo.report --teacher DIR --student DIR --pairs [NAME=]heldout.jsonl[@langs] ... --out DIR

The demo's evaluation: the teacher, the student BEFORE distillation (the teacher truncated
to the student's bottom layers) and the student AFTER, on the same held-out pairs —
cross-lingual retrieval per language on each held-out set (`--pairs` repeated, e.g. the demo's
in-domain pairs and the out-of-domain LibreOffice help; the first set also gets zero-shot topic
transfer) — written as report.json, retrieval.{json,csv,md,png} (the first set),
retrieval_<name>.{json,csv,md,png} (the others), transfer.json, and printed. Goal per set: the
student keeps ≥ 97% of the teacher's mean and ≥ 93% on every language.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lightmbert.evaluation import (default_device, format_table, load_encoder, load_pairs, load_topic_items, parse_set,
                                   retrieval, share, transfer, worst_share, write_tables)

XNLI_OTHER = "ar bg de el es fr hi ru sw th tr ur vi zh".split()
GOAL_MEAN, GOAL_WORST = 0.97, 0.93  # of the teacher's retrieval: the mean, and every language


def plot(results: dict[str, dict], path: Path, title: str = "held-out pairs") -> None:
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
    ax.set_title(f"Cross-lingual retrieval on {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def judge(ret: dict[str, dict], names: list[str]) -> dict:
    """One set's summary: means, the student's share of the teacher's (mean and worst language)."""
    teacher, after = ret[names[0]], ret[names[2]]
    mean = share(after["mean"]["mean"], teacher["mean"]["mean"])
    lang, worst = worst_share(after, teacher)
    return {"retrieval_mean": {n: ret[n]["mean"]["mean"] for n in names}, "after_over_teacher": mean,
            "worst_language": {"language": lang, "after_over_teacher": worst},
            "goal_met": mean >= GOAL_MEAN and worst >= GOAL_WORST,
            "pairs_per_language": {k: v["pairs"] for k, v in after.items() if k != "mean"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.demo.report", description=__doc__.split("\n\n")[1])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True, help="the exported student (HF directory)")
    ap.add_argument("--pairs", required=True, action="append",
                    help="a held-out set: NAME=PATH[@lang,lang] or PATH (repeatable; the first also gets topic transfer)")
    ap.add_argument("--languages", nargs="*", default=XNLI_OTHER, help="for sets given without @languages")
    ap.add_argument("--max-per-language", type=int, default=300)
    ap.add_argument("--prefix", default="query: ")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    n_layers = json.loads((Path(args.student) / "config.json").read_text())["num_hidden_layers"]
    sets = {}
    for spec in args.pairs:
        name, path, langs = parse_set(spec, args.languages)
        if name in sets:
            ap.error(f"--pairs: two sets named {name!r}")
        sets[name] = (path, load_pairs(path, langs, args.max_per_language))
    first = next(iter(sets))
    items = load_topic_items(sets[first][0], args.languages)
    dev = default_device()
    before, after = f"before ({n_layers} layers)", f"after ({n_layers} layers)"
    ret: dict[str, dict] = {name: {} for name in sets}
    tra, secs = {}, {}
    # one pass of the teacher serves the teacher (last layer) and the student before
    # distillation (the teacher's bottom n_layers: hidden_states[n_layers])
    t0 = time.time()
    model, tok = load_encoder(args.teacher, dev)
    last = model.config.num_hidden_layers
    both = (last, n_layers)
    for name, (_, pairs) in sets.items():
        r = retrieval(model, tok, pairs, args.prefix, layers=both, progress=True, desc=f"{name}: retrieval teacher + before")
        ret[name]["teacher"], ret[name][before] = r[last], r[n_layers]
    t = transfer(model, tok, items, args.prefix, layers=both, progress=True, desc="transfer teacher + before")
    tra["teacher"], tra[before] = t[last], t[n_layers]
    secs["teacher + before"] = round(time.time() - t0, 1)
    del model
    t0 = time.time()
    model, tok = load_encoder(args.student, dev)
    for name, (_, pairs) in sets.items():
        ret[name][after] = retrieval(model, tok, pairs, args.prefix, progress=True, desc=f"{name}: retrieval after")
    tra[after] = transfer(model, tok, items, args.prefix, progress=True, desc="transfer after")
    secs[after] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    names = ["teacher", before, after]
    summary = {}
    for name in sets:
        title = "retrieval" if name == first else f"retrieval_{name}"
        write_tables(ret[name], args.out, title)
        plot(ret[name], args.out / f"{title}.png", f"held-out pairs: {name}")
        summary[name] = judge(ret[name], names)
    (args.out / "transfer.json").write_text(json.dumps(tra, indent=1))
    report = {**{k: summary[first][k] for k in ("retrieval_mean", "after_over_teacher", "pairs_per_language")},
              "goal_97pct_met": summary[first]["after_over_teacher"] >= GOAL_MEAN,
              "sets": {name: {"pairs": sets[name][0], **summary[name]} for name in sets},
              "transfer": {n: {"en": tra[n]["en"], "others": tra[n]["mean_other"], "gap": tra[n]["gap"]}
                           for n in names},
              "eval_seconds": secs}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    for name in sets:
        sm = summary[name]
        print(f"\n== {name} ({sets[name][0]})\n{format_table(ret[name])}")
        print(f"after / teacher = {sm['after_over_teacher']:.3f}, worst language "
              f"{sm['worst_language']['language']} {sm['worst_language']['after_over_teacher']:.3f} "
              f"(goal ≥ {GOAL_MEAN} mean, ≥ {GOAL_WORST} every language: {'met' if sm['goal_met'] else 'missed'})")
    for n in names:
        t = report["transfer"][n]
        print(f"topic transfer ({first}) {n:<22} en {t['en']:.3f}  others {t['others']:.3f}  gap {t['gap']:+.3f}")
    print(f"wrote {args.out}/report.json, retrieval*.{{json,csv,md,png}}, transfer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
