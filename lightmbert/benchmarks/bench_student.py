"""python -m lightmbert.benchmarks.bench_student --teacher DIR --student DIR --trimmed DIR --pairs [NAME=]PAIRS[@langs] ...
                                     [--trimmed-onnx DIR] [--max-pairs 100] [--threads 2] [--prefix "query: "] [--out DIR] [--tiny]

The table users decide by: what a deployable student costs and keeps. For the teacher and
the student in PyTorch and ONNX Runtime fp32 (the same runtime for both separates what
distillation buys from what the runtime buys), the trimmed student (lightmbert.deploy.trim) in ONNX fp32
and int8 (lightmbert.deploy.onnx_export): parameters, size on disk, peak RSS after loading, CPU latency
p50/p95 at batch 1 × 24 tokens, throughput at batch 32 × 128, and held-out retrieval (mean
top-1 over languages and both directions) on each held-out set (`--pairs` repeated: e.g. the
demo's in-domain pairs and the out-of-domain LibreOffice help; `retrieval` is the first set's,
`retrieval_<name>` the others'; the teacher's and the student's ONNX fp32 rows are a runtime
parity check, scored on the first set only — on the demo's sets they equal PyTorch's to 4
decimals, and the second set added ≈ 1.3 min to `make demo` before held-out texts were de-duplicated). Each row runs in a fresh process (peak RSS: Python
+ that runtime + the model, after one forward pass), all on the same number of threads. Writes bench_student.csv, .md and .png (retrieval vs size and
vs latency) into --out. `--tiny`: tiny random models on the synthetic corpus (a smoke test).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import report


def _weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()
               if f.suffix in (".safetensors", ".bin", ".onnx") or f.name.endswith(".onnx.data"))


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across fork + exec from
    the parent that launched it)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(path: Path, pairs_file: str, shapes: list[tuple[int, int]]):
    """Per (batch, length) in `shapes`: [batch, length] ids of real held-out text (sentences run
    together, cut to length) and its mask; the text is tokenised once, with the `tokenizers`
    library alone (no torch in an ONNX row's process yet)."""
    import numpy as np
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    need = max((b + 1) * n for b, n in shapes)
    ids: list[int] = []
    for line in Path(pairs_file).read_text(encoding="utf-8").splitlines():
        if len(ids) > need:
            break
        if line.strip():
            r = json.loads(line)
            for t in (r["en"], *r["translations"].values()):
                ids += tok.encode(t, add_special_tokens=False).ids
    out = []
    for batch, length in shapes:
        rows = [ids[(i * length) % max(1, len(ids) - length):][:length] for i in range(batch)]
        rows = [r + [r[-1]] * (length - len(r)) for r in rows]
        out.append((np.array(rows, dtype=np.int64), np.ones((batch, length), dtype=np.int64)))
    return out


def measure(kind: str, path: Path, pairs_specs: list[str], languages: list[str], max_pairs: int, prefix: str,
            threads: int, inputs_file: str) -> dict:
    """One row, in this (fresh) process. Peak RSS is the whole process after loading and one
    forward pass: Python + the runtime (torch + transformers, or onnxruntime + tokenizers) + the
    model — what a deployment of that runtime costs."""
    import numpy as np
    q, big = _inputs(path, inputs_file, [(1, 24), (32, 128)])  # no torch imported yet in an ONNX row
    if kind == "torch":
        import torch
        from transformers import AutoModel
        torch.set_num_threads(threads)
        try:
            model = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
        except TypeError:
            model = AutoModel.from_pretrained(path).eval()
        params = sum(p.numel() for p in model.parameters())
        size = _weights_bytes(path)

        def run(ids, mask):
            with torch.no_grad():
                model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    else:
        import onnx
        import onnxruntime as ort
        file = path / ("model.int8.onnx" if kind == "onnx-int8" else "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        size = file.stat().st_size

        def run(ids, mask):
            session.run(None, {"input_ids": ids, "attention_mask": mask})
    run(*q)
    rss = _peak_rss_mb()
    if kind != "torch":  # counted after the RSS: onnx.load holds the whole model in Python
        params = sum(int(np.prod(t.dims)) for t in onnx.load(str(file)).graph.initializer)
    lat = []
    for k in range(120):
        t0 = time.perf_counter()
        run(*q)
        if k >= 20:
            lat.append((time.perf_counter() - t0) * 1e3)
    lat.sort()
    run(*big)
    t0, reps = time.perf_counter(), 3
    for _ in range(reps):
        run(*big)
    throughput = reps * 32 / (time.perf_counter() - t0)
    from lightmbert.evaluation.retrieval import load_pairs, parse_set, retrieval_of
    if kind == "torch":
        from lightmbert.evaluation.encoders import encode, load_encoder
        model, tok = load_encoder(str(path))

        def embed(texts):
            return encode(model, tok, texts, prefix)
    else:
        from lightmbert.deploy.onnx_export import OnnxEncoder
        enc = OnnxEncoder(path, int8=kind == "onnx-int8", threads=threads)

        def embed(texts):
            return enc.encode(texts, prefix)
    per_set = {}
    for spec in pairs_specs:
        name, file, langs = parse_set(spec, languages)
        res = retrieval_of(embed, load_pairs(file, langs, max_per_language=max_pairs))
        per_set[name] = {k: round(v["mean"], 4) for k, v in res.items()}
    return {"params_m": round(params / 1e6, 1), "disk_mb": round(size / 1e6, 1), "rss_mb": round(rss),
            "p50_ms": round(lat[len(lat) // 2], 2), "p95_ms": round(lat[int(len(lat) * 0.95)], 2),
            "seq_s_32x128": round(throughput, 1), "per_set": per_set}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "disk_mb", "size on disk (MB, log)"), (axes[1], "p50_ms", "latency p50, 1 × 24 tokens (ms, log)")):
        for r in rows:
            ax.scatter(r[key], r["retrieval"], s=40)
            ax.annotate(f"{r['model']} ({r['runtime']})", (r[key], r["retrieval"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out retrieval (mean top-1)")
        ax.grid(alpha=0.3)
    fig.suptitle("quality vs size and latency (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], threads: int, sets: dict[str, str]) -> str:
    names = list(sets)
    cols = ["retrieval" if i == 0 else f"retrieval_{n}" for i, n in enumerate(names)]
    head = ("| model | runtime | params (M) | disk (MB) | peak RSS (MB) | p50 / p95 ms (1 × 24) | seq/s (32 × 128) | "
            + " | ".join(f"retrieval ({n}) | worst language ({n})" for n in names)
            + " |\n|---|---|---|---|---|---|---|" + "---|---|" * len(cols) + "\n")
    body = "".join(f"| {r['model']} | {r['runtime']} | {r['params_m']} | {r['disk_mb']} | {r['rss_mb']} | "
                   f"{r['p50_ms']} / {r['p95_ms']} | {r['seq_s_32x128']} | "
                   + " | ".join(f"{r[c]:.3f} | {r[f'worst_{n}']}" if c in r else "— | —" for c, n in zip(cols, names))
                   + " |\n" for r in rows)
    return head + body + ("\nRetrieval (mean top-1, both directions; worst language: the smallest share of the "
                          "teacher's, PyTorch fp32): " + "; ".join(f"{k}: {v}" for k, v in sets.items())
                          + ("; —: an ONNX fp32 parity row, scored on the first set only" if len(names) > 1 else "")
                          + f". CPU, {threads} thread(s), one run; each row in a fresh process; peak RSS of that process "
                          f"after loading and one forward pass (Python + its runtime + the model).\n")


def tiny_inputs(tmp: Path) -> tuple[Path, Path, Path, Path]:
    """A tiny teacher/student pair on the synthetic corpus, the student trimmed to en+de+ru."""
    import torch
    from transformers import BertConfig, BertModel

    from lightmbert.configs import PrepConfig, load
    from lightmbert.data_prep.shard import run
    from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text
    from lightmbert.deploy.trim import trim
    for name, layers in (("teacher", 4), ("student", 2)):
        make_tokenizer(tmp / name)
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=400, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=128), add_pooling_layer=False).save_pretrained(tmp / name)
    for i, lang in enumerate(WORDS):
        write_text(tmp / "text" / f"{lang}.txt", random_documents(lang, 40, seed=i))
    run(load(PrepConfig, None, [f"--input.directory={tmp}/text", f"--tokenizer.name_or_path={tmp}/student",
                                f"--output.dir={tmp}/shards", "--workers=1", "--packing.seq_len=32"]))
    trim(tmp / "student", tmp / "trimmed", str(tmp / "shards"), ["en", "de", "ru"])
    pairs = tmp / "pairs.jsonl"
    docs = {lang: random_documents(lang, 12, seed=99, max_segments=1, max_words=8) for lang in WORDS}
    pairs.write_text("".join(json.dumps({"en": " ".join(docs["en"][k]), "translations": {
        lang: " ".join(docs[lang][k]) for lang in ("de", "ru")}}) + "\n" for k in range(12)))
    return tmp / "teacher", tmp / "student", tmp / "trimmed", pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--student", type=Path)
    ap.add_argument("--trimmed", type=Path, help="lightmbert.deploy.trim's output for the student")
    ap.add_argument("--trimmed-onnx", type=Path, help="lightmbert.deploy.onnx_export --int8 of --trimmed (else exported here)")
    ap.add_argument("--pairs", action="append", help="a held-out set: NAME=PATH[@lang,lang] or PATH (repeatable)")
    ap.add_argument("--languages", default="", help="comma-separated held-out languages to score for sets "
                    "given without @languages (default: the languages the student was trimmed for, from its trim.json)")
    ap.add_argument("--max-pairs", type=int, default=100, help="per language")
    ap.add_argument("--prefix", default="", help='e.g. "query: " for E5 models')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)  # --measure: the text the speed is measured on
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.pairs, args.languages.split(","),
                                 args.max_pairs, args.prefix, args.threads, args.inputs)))
        return 0
    from lightmbert.deploy.onnx_export import export
    from lightmbert.evaluation.retrieval import parse_set, share, worst_share
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if args.tiny:
            args.teacher, args.student, args.trimmed, pairs = tiny_inputs(work)
            args.pairs = [f"heldout={pairs}", f"other={pairs}@ru"]  # two sets, as the demo scores
        missing = [k for k in ("teacher", "student", "trimmed", "pairs") if not getattr(args, k)]
        if missing:
            ap.error(f"missing: {', '.join('--' + k for k in missing)}")
        # scored on the languages the trimmed student is for (elsewhere trimming costs by design)
        languages = args.languages or ",".join(json.loads((args.trimmed / "trim.json").read_text())["languages"])
        onnx = {"trimmed": args.trimmed_onnx} if args.trimmed_onnx else {}
        for name, src in (("teacher", args.teacher), ("student", args.student), ("trimmed", args.trimmed)):
            if name in onnx:
                continue
            print(f"[bench_student] exporting {name} ({src}) to ONNX", flush=True)
            onnx[name] = work / f"{name}-onnx"
            export(src, onnx[name], int8=name == "trimmed")
        plan = [("teacher", "torch", args.teacher), ("teacher", "onnx", onnx["teacher"]),
                ("student", "torch", args.student), ("student", "onnx", onnx["student"]),
                ("student-trimmed", "onnx", onnx["trimmed"]), ("student-trimmed-int8", "onnx-int8", onnx["trimmed"])]
        rows, per_lang = [], {}
        for model, kind, path in plan:
            parity = kind == "onnx" and model in ("teacher", "student")  # same weights as a PyTorch row
            cmd = [sys.executable, "-m", "lightmbert.benchmarks.bench_student", "--measure", kind, str(path),
                   *(a for spec in args.pairs[:1 if parity else None] for a in ("--pairs", spec)),
                   "--languages", languages,
                   "--inputs", parse_set(args.pairs[0])[1],
                   "--max-pairs", str(args.max_pairs), "--prefix", args.prefix, "--threads", str(args.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                return 1
            got = json.loads(p.stdout.strip().splitlines()[-1])
            per_set = got.pop("per_set")
            per_lang[model, kind] = per_set
            row = {"model": model, "runtime": {"torch": "PyTorch fp32", "onnx": "ONNX Runtime fp32",
                                               "onnx-int8": "ONNX Runtime int8"}[kind], **got,
                   **{("retrieval" if i == 0 else f"retrieval_{name}"): res["mean"]
                      for i, (name, res) in enumerate(per_set.items())}}
            print(f"[bench_student] {model} / {row['runtime']}: {row}", flush=True)
            rows.append(row)
    teacher = rows[1]  # the teacher in ONNX Runtime fp32: the same runtime as the int8 student
    small = rows[-1]
    print(f"\nbench_student: trimmed int8 student vs the teacher in ONNX Runtime: "
          f"{teacher['disk_mb'] / small['disk_mb']:.1f}× smaller on disk, "
          f"{small['seq_s_32x128'] / teacher['seq_s_32x128']:.1f}× the throughput at 32 × 128")
    sets = {}
    for i, spec in enumerate(args.pairs):
        name, file, langs = parse_set(spec, languages.split(","))
        sets[name] = f"{file} ({', '.join(k for k in per_lang['teacher', 'torch'][name] if k != 'mean')})"
        col = "retrieval" if i == 0 else f"retrieval_{name}"
        t = per_lang["teacher", "torch"][name]
        for row, (model, kind, _) in zip(rows, plan):
            # the language with the smallest share of the teacher's retrieval (PyTorch fp32)
            r = per_lang[model, kind].get(name)
            if r is None:  # a parity row, scored on the first set only
                row[f"worst_{name}"] = "—"
                continue
            lang, worst = worst_share({k: {"mean": v} for k, v in r.items()}, {k: {"mean": v} for k, v in t.items()})
            row[f"worst_{name}"] = f"{lang} {worst:.3f}"
            if model in ("student", "student-trimmed-int8") and kind != "onnx":
                print(f"  {name}: {model} {r['mean']:.4f} = {share(r['mean'], t['mean']):.1%} of the teacher "
                      f"(worst {lang} {worst:.1%})")
        print(f"  {name}: trimmed int8 − student fp32 = {rows[-1][col] - rows[2][col]:+.4f}, "
              f"trimmed fp32 − student fp32 = {rows[4][col] - rows[2][col]:+.4f}")
    (args.out / "bench_student.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_student.json").write_text(json.dumps(
        {f"{m} / {k}": v for (m, k), v in per_lang.items()}, indent=1))
    report(rows, args.out / "bench_student.csv")
    (args.out / "bench_student.md").write_text(markdown(rows, args.threads, sets))
    plot(rows, args.out / "bench_student.png")
    print(f"wrote {args.out / 'bench_student.md'}, {args.out / 'bench_student.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
