"""python -m trainer.evaluate retrieval --model DIR [--model DIR2 ...] --pairs heldout.jsonl

Cross-lingual evaluation of any Hugging Face encoder directory:

  retrieval   top-1 English↔X translation retrieval on held-out pairs: mean-pooled last hidden
              state (the E5 teachers' own pooling; `--prefix "query: "` their input format),
              cosine similarity, accuracy in both directions (en→x, x→en) and their mean, per
              language and averaged. Every model sees the same pairs in the same order.

  transfer    zero-shot topic transfer: a logistic-regression classifier on frozen sentence
              embeddings is fit on English held-out items labelled by their source (the
              document structure of the demo corpus: game / wiki UI / desktop help), then
              tested on the English test split and on the translations of the same test
              items in every other language (XNLI's protocol, offline). Reports English
              accuracy, each language's, and the transfer gap (English − mean of the others).

Models can also be given as `NAME=DIR` (the name labels the table). Outputs a table and,
with --out, JSON/CSV/Markdown files.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch


def load_pairs(path: str | Path, languages: list[str] | None = None, max_per_language: int = 0,
               min_per_language: int = 1) -> dict[str, list[tuple[str, str]]]:
    """language → [(English, translation)] from a heldout.jsonl (demo_assets format:
    {"en": ..., "translations": {lang: text}}), in file order (deterministic)."""
    by_lang: dict[str, list[tuple[str, str]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for lang, text in row["translations"].items():
                if languages and lang not in languages:
                    continue
                by_lang.setdefault(lang, []).append((row["en"], text))
    if max_per_language:
        by_lang = {k: v[:max_per_language] for k, v in by_lang.items()}
    return {k: v for k, v in sorted(by_lang.items()) if len(v) >= min_per_language}


@torch.no_grad()
def encode(model, tokenizer, texts: list[str], prefix: str = "", batch_size: int = 64,
           max_length: int = 128, progress: bool = False, layers: tuple[int, ...] | None = None):
    """L2-normalised mean-pooled last hidden states, [N, d] float32. With `layers` (indices
    into hidden_states, 0 = embeddings): {layer: [N, d]} from one forward pass — the teacher
    and its truncation (the student before distillation) for the price of the teacher."""
    from .losses import mean_pool  # the pooling the sentence-level losses train
    out: dict[int | None, list] = {k: [] for k in (layers or (None,))}
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    it = range(0, len(texts), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="encode", unit="batch", leave=False)
    for a in it:
        idx = order[a:a + batch_size]
        batch = tokenizer([prefix + texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        res = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=layers is not None)
        for k in out:
            h = res.last_hidden_state if k is None else res.hidden_states[k]
            out[k].append((torch.nn.functional.normalize(mean_pool(h, batch["attention_mask"]), dim=-1), idx))
    embs = {}
    for k, parts in out.items():
        emb = torch.empty(len(texts), parts[0][0].shape[1]) if parts else torch.empty(0, 0)
        for e, idx in parts:
            emb[idx] = e.cpu()
        embs[k] = emb
    return embs if layers is not None else embs[None]


def top1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows i of a whose most similar row of b is row i."""
    return (a @ b.T).argmax(1).eq(torch.arange(len(a))).float().mean().item()


def _embedder(model, tokenizer, prefix, batch_size, progress, layers):
    """texts → {key: [N, d]}: key None (last layer) or one key per requested layer."""
    if layers is None:
        return lambda texts: {None: encode(model, tokenizer, texts, prefix, batch_size, progress=progress)}
    return lambda texts: encode(model, tokenizer, texts, prefix, batch_size, progress=progress, layers=layers)


def retrieval(model, tokenizer, pairs: dict[str, list[tuple[str, str]]], prefix: str = "",
              batch_size: int = 64, progress: bool = False, layers: tuple[int, ...] | None = None) -> dict:
    """language → {en2x, x2en, mean} top-1 accuracy; plus "mean" over languages. With `layers`:
    {layer: that dict} for each layer's mean-pooled hidden state, from one pass."""
    embed = _embedder(model, tokenizer, prefix, batch_size, progress, layers)
    out: dict = {k: {} for k in (layers or (None,))}
    for lang, items in pairs.items():
        en, x = embed([e for e, _ in items]), embed([t for _, t in items])
        for k, res in out.items():
            a, b = top1(en[k], x[k]), top1(x[k], en[k])
            res[lang] = {"en2x": a, "x2en": b, "mean": (a + b) / 2, "pairs": len(items)}
    for res in out.values():
        res["mean"] = {k: sum(r[k] for r in res.values()) / max(len(res), 1) for k in ("en2x", "x2en", "mean")}
    return out if layers is not None else out[None]


def load_topic_items(path: str | Path, languages: list[str] | None = None) -> list[dict]:
    """Held-out items with a topic label = the first part of their domain (wesnoth / mediawiki /
    gnome) and a deterministic train/test split (70/30 by a hash of the English text)."""
    import hashlib
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            h = int(hashlib.sha1(row["en"].encode()).hexdigest()[:8], 16) % 10
            tr = {k: v for k, v in row["translations"].items() if not languages or k in languages}
            items.append({"en": row["en"], "label": row["domain"].split("/")[0], "translations": tr,
                          "split": "train" if h < 7 else "test"})
    return items


def fit_logreg(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300, l2: float = 1e-3,
               seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression (full-batch LBFGS), deterministic."""
    torch.manual_seed(seed)
    clf = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(clf.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(clf(x), y) + l2 * clf.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return clf


def transfer(model, tokenizer, items: list[dict], prefix: str = "", batch_size: int = 64,
             layers: tuple[int, ...] | None = None) -> dict:
    """{"en": acc, <lang>: acc, ..., "mean_other": acc, "gap": en − mean_other, "classes": [...]}
    (with `layers`: {layer: that dict}, one classifier per layer, from one pass)."""
    embed = _embedder(model, tokenizer, prefix, batch_size, False, layers)
    labels = sorted({it["label"] for it in items})
    lid = {k: i for i, k in enumerate(labels)}
    train = [it for it in items if it["split"] == "train"]
    test = [it for it in items if it["split"] == "test"]
    x = embed([it["en"] for it in train])
    y = torch.tensor([lid[it["label"]] for it in train])
    clfs = {k: fit_logreg(v, y, len(labels)) for k, v in x.items()}
    out = {k: {"classes": labels} for k in clfs}

    def score(name, texts, ys):
        emb = embed(texts)
        with torch.no_grad():
            for k, clf in clfs.items():
                out[k][name] = clf(emb[k]).argmax(1).eq(torch.tensor(ys)).float().mean().item()
    score("en", [it["en"] for it in test], [lid[it["label"]] for it in test])
    langs = sorted({k for it in test for k in it["translations"]})
    for lang in langs:
        sub = [it for it in test if lang in it["translations"]]
        score(lang, [it["translations"][lang] for it in sub], [lid[it["label"]] for it in sub])
    for res in out.values():
        res["mean_other"] = sum(res[k] for k in langs) / max(len(langs), 1)
        res["gap"] = res["en"] - res["mean_other"]
    return out if layers is not None else out[None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_encoder(path: str, device: str = "cpu"):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_pretrained(path)
    return model.to(device).eval(), tok


def truncated(path: str, num_layers: int, device: str = "cpu"):
    """The 'student before distillation': the model's embeddings + its bottom layers."""
    model, tok = load_encoder(path, device)
    model.encoder.layer = model.encoder.layer[:num_layers]
    model.config.num_hidden_layers = num_layers
    return model, tok


def write_tables(results: dict[str, dict], out: Path, title: str = "retrieval") -> None:
    """results: model name → retrieval() output. Writes JSON, CSV and Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{title}.json").write_text(json.dumps(results, indent=1))
    names = list(results)
    langs = [k for k in next(iter(results.values())) if k != "mean"] + ["mean"]
    with open(out / f"{title}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["language", *names])
        for lang in langs:
            w.writerow([lang, *(f"{results[n][lang]['mean']:.4f}" for n in names)])
    lines = ["| language | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for lang in langs:
        cells = [f"{results[n][lang]['mean']:.3f}" for n in names]
        lines.append(f"| {'**mean**' if lang == 'mean' else lang} | " + " | ".join(cells) + " |")
    (out / f"{title}.md").write_text("\n".join(lines) + "\n")


def format_table(results: dict[str, dict]) -> str:
    names = list(results)
    langs = [k for k in next(iter(results.values())) if k != "mean"] + ["mean"]
    w = [max(10, len(n) + 2) for n in names]
    head = f"{'language':<10}" + "".join(f"{n:>{k}}" for n, k in zip(names, w))
    rows = [head, "-" * len(head)]
    for lang in langs:
        rows.append(f"{lang:<10}" + "".join(f"{results[n][lang]['mean']:>{k}.3f}" for n, k in zip(names, w)))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="task", required=True)
    r = sub.add_parser("retrieval", help="English↔X top-1 translation retrieval")
    r.add_argument("--model", action="append", required=True, help="DIR or NAME=DIR (repeatable)")
    r.add_argument("--truncate", type=int, default=0,
                   help="also evaluate the first model cut to its bottom N layers (the student before distillation)")
    r.add_argument("--pairs", required=True, help="heldout.jsonl")
    r.add_argument("--languages", nargs="*", default=None)
    r.add_argument("--max-per-language", type=int, default=0)
    r.add_argument("--prefix", default="", help='input prefix, e.g. "query: " for E5 models')
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--out", type=Path, default=None)
    t = sub.add_parser("transfer", help="zero-shot topic transfer from English")
    t.add_argument("--model", action="append", required=True, help="DIR or NAME=DIR (repeatable)")
    t.add_argument("--truncate", type=int, default=0)
    t.add_argument("--pairs", required=True, help="heldout.jsonl (with domains)")
    t.add_argument("--languages", nargs="*", default=None)
    t.add_argument("--prefix", default="")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.task == "transfer":
        return _main_transfer(args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pairs = load_pairs(args.pairs, args.languages, args.max_per_language)
    if not pairs:
        print(f"trainer.evaluate: error: no pairs in {args.pairs}", file=sys.stderr)
        return 2
    results = {name: retrieval(model, tok, pairs, args.prefix, args.batch_size, progress=sys.stderr.isatty())
               for name, model, tok in _models(args)}
    print(format_table(results))
    if args.out:
        write_tables(results, args.out)
    return 0


def _models(args):
    models = [m.split("=", 1) if "=" in m else (Path(m).name, m) for m in args.model]
    dev = default_device()
    for name, path in models:
        yield (name, *load_encoder(path, dev))
    if args.truncate:
        name, path = models[0]
        yield (f"{name}[:{args.truncate}]", *truncated(path, args.truncate, dev))


def _main_transfer(args) -> int:
    items = load_topic_items(args.pairs, args.languages)
    results = {name: transfer(model, tok, items, args.prefix, args.batch_size)
               for name, model, tok in _models(args)}
    langs = [k for k in next(iter(results.values())) if k not in ("classes",)]
    print(f"{'':<12}" + "".join(f"{n:>14}" for n in results))
    for k in langs:
        print(f"{k:<12}" + "".join(f"{r[k]:>14.3f}" for r in results.values()))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "transfer.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
