"""Top-1 English↔X translation retrieval on held-out pairs, and its tables.

Mean-pooled last hidden state (the E5 teachers' own pooling; `prefix="query: "` their input
format), cosine similarity, accuracy in both directions (en→x, x→en) and their mean, per
language and averaged. Every model sees the same pairs in the same order.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from lightmbert.data_prep.progress import Progress

from .encoders import embedder


def load_pairs(path: str | Path, languages: list[str] | None = None, max_per_language: int = 0,
               min_per_language: int = 1) -> dict[str, list[tuple[str, str]]]:
    """language → [(English, translation)] from a heldout.jsonl (the demo's format:
    {"en": ..., "translations": {lang: text}}), in file order (deterministic)."""
    by_lang: dict[str, list[tuple[str, str]]] = {}
    with open(Path(path).expanduser(), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                en, trs = row["en"], row["translations"].items()
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{n}: not a {{\"en\", \"translations\"}} row "
                                 f"({type(e).__name__}: {e})") from None
            for lang, text in trs:
                if languages and lang not in languages:
                    continue
                by_lang.setdefault(lang, []).append((en, text))
    if max_per_language:
        by_lang = {k: v[:max_per_language] for k, v in by_lang.items()}
    return {k: v for k, v in sorted(by_lang.items()) if len(v) >= min_per_language}


def parse_set(spec: str, default_languages: list[str] | None = None) -> tuple[str, str, list[str] | None]:
    """A held-out set on a command line: `NAME=PATH[@lang,lang,...]` or a bare `PATH` (named
    after the file) → (name, path, languages or `default_languages`)."""
    name, eq, rest = spec.partition("=")
    if not eq:
        name, rest = Path(spec.split("@")[0]).stem, spec
    path, at, langs = rest.partition("@")
    if not name or not path:
        raise ValueError(f"{spec!r}: expected NAME=PATH[@lang,lang,...] or PATH")
    languages = [x for x in langs.split(",") if x] if at else default_languages
    return name, path, languages


def share(x: float, of: float) -> float:
    """x as a share of the reference `of`. Where the reference scores 0 (a tiny or random teacher
    can), a score of 0 keeps all of it (1.0) and anything above it more (inf) — never 0, which
    would name a language the student matches as its worst."""
    return x / of if of > 0 else (1.0 if x <= 0 else math.inf)


def worst_share(res: dict, teacher: dict) -> tuple[str, float]:
    """(language, share) of the language whose retrieval is the smallest share of the teacher's."""
    shares = {k: share(v["mean"], teacher[k]["mean"]) for k, v in res.items() if k != "mean"}
    lang = min(shares, key=shares.get)
    return lang, shares[lang]


def top1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows i of a whose most similar row of b is row i."""
    return (a @ b.T).argmax(1).eq(torch.arange(len(a))).float().mean().item()


def scores(en: torch.Tensor, x: torch.Tensor, n_pairs: int) -> dict:
    """{en2x, x2en, mean, pairs} of one language from its two [n, d] embedding matrices."""
    a, b = top1(en, x), top1(x, en)
    return {"en2x": a, "x2en": b, "mean": (a + b) / 2, "pairs": n_pairs}


def add_mean(res: dict) -> dict:
    """Add the "mean" row (the average over languages) to a language → scores dict."""
    res["mean"] = {k: sum(r[k] for r in res.values()) / max(len(res), 1) for k in ("en2x", "x2en", "mean")}
    return res


def retrieval(model, tokenizer, pairs: dict[str, list[tuple[str, str]]], prefix: str = "",
              batch_size: int = 64, progress: bool = False, layers: tuple[int, ...] | None = None,
              desc: str = "retrieval") -> dict:
    """language → {en2x, x2en, mean} top-1 accuracy; plus "mean" over languages. With `layers`:
    {layer: that dict} for each layer's mean-pooled hidden state, from one pass. `progress`:
    a bar on a terminal, a log line every 10% otherwise."""
    bar = Progress(len(distinct_texts(pairs)), desc, "texts") if progress else None
    embed = embedder(model, tokenizer, prefix, batch_size, bar, layers)
    try:
        out = retrieval_of(embed, pairs, keys=layers or (None,))
    finally:
        if bar is not None:
            bar.close()
    return out if layers is not None else out[None]


def distinct_texts(pairs: dict[str, list[tuple[str, str]]]) -> dict[str, int]:
    """Every text of `pairs` once (English sides, then translations, first seen first) → its
    row. The English side of an item recurs in each of its languages: ~40% of the demo's texts."""
    texts: dict[str, int] = {}
    for side in (0, 1):
        for items in pairs.values():
            for p in items:
                texts.setdefault(p[side], len(texts))
    return texts


def retrieval_of(embed, pairs: dict[str, list[tuple[str, str]]], keys: tuple | None = None) -> dict:
    """`retrieval` for any encoder: `embed(texts)` gives L2-normalised [N, d] vectors (or, with
    `keys`, {key: [N, d]}; the result is then {key: scores}). One call encodes each distinct
    text once (an encoder sorts them by length: one pool, less padding)."""
    texts = distinct_texts(pairs)
    vecs = embed(list(texts))
    if keys is None:
        vecs = {None: vecs}
    out: dict = {k: {} for k in (keys or (None,))}
    for lang, items in pairs.items():
        en, x = torch.tensor([texts[e] for e, _ in items]), torch.tensor([texts[t] for _, t in items])
        for k, res in out.items():
            res[lang] = scores(vecs[k][en], vecs[k][x], len(items))
    for res in out.values():
        add_mean(res)
    return out if keys is not None else out[None]


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
