"""python -m lightmbert.demo.sweep --sweep configs/sweep/demo.yaml [--only a,b] [--out runs/sweep]

Quality sweep for the demo: one short distillation per variant (a named list of config
overrides on top of the sweep's base config), then held-out cross-lingual retrieval of each
exported student against the teacher and the undistilled truncation, on the same pairs.
The loss is not the judge (lightmbert/benchmarks/README.md, Findings): the retrieval is. Prints a table and
writes CSV + JSON. Run by hand; on a GPU a variant of the CPU demo's size takes ~1 minute.

Sweep file (YAML):
  base: configs/distill/demo_cpu.yaml   # the distill config every variant starts from
  nproc: 1                              # processes per run (torchrun --standalone)
  common: ["--data.micro_batch_size=32"]
  pairs: ${LIGHTMBERT_CACHE:-~/.cache/lightmbert}/demo/heldout.jsonl   # one held-out set, or:
  sets:                                 # several, each judged on its own (columns <name>, <name>_worst)
    in_domain: {pairs: .../heldout.jsonl}                                  # languages: the sweep's
    out_of_domain: {pairs: .../heldout_ood.jsonl, languages: [de, hi, zh]}
  variants: {name: ["--loss.pooled_weight=1", ...], ...}
Per set: the mean top-1 retrieval, its share of the teacher's, and the worst language's share
of the teacher's (`<set>_worst`, e.g. "hi 0.912"). The first set also fills the `retrieval`
column the earlier sweeps reported.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from lightmbert.benchmarks.report import report, write_csv


def load_sweep(path: Path) -> dict:
    import yaml

    from lightmbert.configs.loader import expand_env
    from .report import XNLI_OTHER
    spec = yaml.safe_load(path.read_text())
    for key in ("base", "variants"):
        if key not in spec:
            raise SystemExit(f"{path}: missing key {key!r}")
    spec.setdefault("nproc", 1)
    spec.setdefault("common", [])
    spec.setdefault("prefix", "query: ")
    spec.setdefault("max_per_language", 300)
    spec.setdefault("languages", XNLI_OTHER)
    spec["pairs"] = expand_env(spec.get("pairs", "${LIGHTMBERT_CACHE:-~/.cache/lightmbert}/demo/heldout.jsonl"))
    sets = spec.get("sets") or {"heldout": {"pairs": spec["pairs"]}}
    for name, s in sets.items():
        if not isinstance(s, dict) or "pairs" not in s:
            raise SystemExit(f"{path}: sets.{name}: needs a `pairs` file")
        s["pairs"] = expand_env(s["pairs"])
        s.setdefault("languages", spec["languages"])
    spec["sets"] = sets
    return spec


def judge(res: dict, teacher: dict) -> tuple[float, float, str]:
    """(mean, mean / teacher's mean, "lang share") of the language with the lowest share of
    the teacher's retrieval."""
    from lightmbert.evaluation import share, worst_share
    acc = res["mean"]["mean"]
    lang, worst = worst_share(res, teacher)
    return acc, share(acc, teacher["mean"]["mean"]), f"{lang} {worst:.3f}"


def first_last_loss(run_dir: Path) -> tuple[float, float]:
    rows = [json.loads(x) for x in (run_dir / "trace_rank0.jsonl").read_text().splitlines()]
    return float(rows[0]["loss"]), float(rows[-1]["loss"])


def live_curve(run_dir: Path) -> str:
    """The run's live retrieval (eval/retrieval/mean in TensorBoard) as `step:value ...`, when
    the variant turned live evaluation on: one 600-step run then also gives the 300-step number."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    if "eval/retrieval/mean" not in ev.Tags()["scalars"]:
        return ""
    return " ".join(f"{e.step}:{e.value:.4f}" for e in ev.Scalars("eval/retrieval/mean"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", type=Path, required=True)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--keep", action="store_true", help="keep each run's checkpoints")
    args = ap.parse_args(argv)
    spec = load_sweep(args.sweep)
    names = [n for n in spec["variants"] if not args.only or n in args.only.split(",")]
    import shutil

    import torch

    from lightmbert.evaluation import default_device, load_encoder, load_pairs, retrieval

    dev = default_device()
    sets = {name: load_pairs(s["pairs"], s["languages"], spec["max_per_language"])
            for name, s in spec["sets"].items()}
    from lightmbert.configs import DistillConfig, load
    base_cfg = load(DistillConfig, spec["base"], [f"--{o.lstrip('-')}" for o in spec["common"]
                                                  if o.lstrip("-").startswith(("teacher.", "student."))])
    teacher_dir = base_cfg.teacher.name_or_path
    n_layers = base_cfg.student.num_layers
    model, tok = load_encoder(teacher_dir, dev)  # one pass: the teacher and its truncation
    last = model.config.num_hidden_layers
    teacher, ref, before = {}, {}, {}
    for name, pairs in sets.items():
        res = retrieval(model, tok, pairs, spec["prefix"], layers=(last, n_layers), progress=True,
                        desc=f"{name}: retrieval teacher + before")
        teacher[name] = res[last]
        ref[name] = {"teacher": res[last]["mean"]["mean"], "before": res[n_layers]["mean"]["mean"]}
        before[name] = {k: v["mean"] for k, v in res[n_layers].items() if k != "mean"}
        print(f"{name}: teacher {ref[name]['teacher']:.4f}  before {ref[name]['before']:.4f}", flush=True)
    del model
    first = next(iter(sets))
    rows, per_lang = [], {}
    for name in names:
        run_dir = args.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={spec['nproc']}", "-m", "lightmbert.trainer.distill", "--config", spec["base"],
               f"--run.output_dir={run_dir}", "--run.trace=true", "--run.progress_bar=false",
               *spec["common"], *spec["variants"][name]]
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        secs = time.time() - t0
        row = dict(variant=name, rc=proc.returncode, train_s=round(secs), retrieval="", over_teacher="",
                   below_before="")
        if proc.returncode != 0:
            print(proc.stdout[-3000:])
            rows.append(row)
            continue
        l0, l1 = first_last_loss(run_dir)
        model, tok = load_encoder(str(run_dir / "student"), dev)
        per_lang[name], below, summary = {}, [], []
        for set_name, pairs in sets.items():
            res = retrieval(model, tok, pairs, spec["prefix"], progress=True, desc=f"{set_name}: retrieval {name}")
            per_lang[name][set_name] = {k: v["mean"] for k, v in res.items()}
            acc, share, worst = judge(res, teacher[set_name])
            if set_name == first:
                row.update(retrieval=round(acc, 4), over_teacher=round(share, 4))
            if len(sets) > 1:
                row.update({set_name: round(acc, 4), f"{set_name}_over_teacher": round(share, 4),
                            f"{set_name}_worst": worst})
            # languages where the student retrieves worse than the truncation it started from
            below += [f"{k}" if len(sets) == 1 else f"{set_name}:{k}"
                      for k, v in before[set_name].items() if res[k]["mean"] < v]
            summary.append(f"{set_name} {acc:.4f} ({share:.3f} of teacher, worst {worst})")
        del model
        row.update(below_before=" ".join(below) or "-", loss_first=round(l0, 4), loss_last=round(l1, 4),
                   live=live_curve(run_dir))
        rows.append(row)
        print(f"{name}: {'; '.join(summary)}, loss {l0:.4f} → {l1:.4f}, {secs:.0f} s", flush=True)
        if not args.keep:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, args.out / "sweep.csv")  # a sweep stopped early keeps its finished rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(
        {"reference": ref[first], "references": ref, "before_per_language": before,
         "variants": {n: spec["variants"][n] for n in names}, "per_language": per_lang,
         "common": spec["common"], "base": spec["base"]}, indent=1))
    print(f"\nsweep {args.sweep} on {dev}: " + "; ".join(
        f"{k}: teacher {v['teacher']:.4f}, before {v['before']:.4f}" for k, v in ref.items()))
    report(rows, args.out / "sweep.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
