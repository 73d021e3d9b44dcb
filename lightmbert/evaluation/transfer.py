"""Zero-shot topic transfer: a logistic-regression classifier on frozen sentence embeddings
is fit on English held-out items labelled by their source (the document structure of the
demo corpus: game / wiki UI / desktop help), then tested on the English test split and on
the translations of the same test items in every other language (XNLI's protocol, offline).
Reports English accuracy, each language's, and the transfer gap (English − mean of others).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lightmbert.data_prep.progress import Progress

from .encoders import embedder


def load_topic_items(path: str | Path, languages: list[str] | None = None) -> list[dict]:
    """Held-out items with a topic label = the first part of their domain (wesnoth / mediawiki /
    gnome) and a deterministic train/test split (70/30 by a hash of the English text)."""
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
             layers: tuple[int, ...] | None = None, progress: bool = False, desc: str = "transfer") -> dict:
    """{"en": acc, <lang>: acc, ..., "mean_other": acc, "gap": en − mean_other, "classes": [...]}
    (with `layers`: {layer: that dict}, one classifier per layer, from one pass)."""
    labels = sorted({it["label"] for it in items})
    lid = {k: i for i, k in enumerate(labels)}
    train = [it for it in items if it["split"] == "train"]
    test = [it for it in items if it["split"] == "test"]
    langs = sorted({k for it in test for k in it["translations"]})
    total = len(train) + len(test) + sum(len(it["translations"]) for it in test)
    bar = Progress(total, desc, "texts") if progress else None
    embed = embedder(model, tokenizer, prefix, batch_size, bar, layers)
    try:
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
        for lang in langs:
            sub = [it for it in test if lang in it["translations"]]
            score(lang, [it["translations"][lang] for it in sub], [lid[it["label"]] for it in sub])
    finally:
        if bar is not None:
            bar.close()
    for res in out.values():
        res["mean_other"] = sum(res[k] for k in langs) / max(len(langs), 1)
        res["gap"] = res["en"] - res["mean_other"]
    return out if layers is not None else out[None]
