"""python -m trainer.xnli --model STUDENT_DIR [--teacher FINETUNED_TEACHER_DIR] [--data-dir DIR] --out OUT

The XNLI protocol for real users: fine-tune the (distilled) student on English NLI, then
evaluate zero-shot on all 15 XNLI languages. With --teacher (a teacher already fine-tuned on
English XNLI), the student is task-distilled: loss = (1 − kd_weight)·CE(labels) +
kd_weight·T²·KL(softmax(teacher/T) ‖ softmax(student/T)).

Data: the Hugging Face dataset `xnli` (`all_languages` test split; needs the `datasets`
package and hub access), or --data-dir with `train.jsonl` (English: premise, hypothesis,
label) and `test.jsonl` (premise, hypothesis, label, language) — the format the tests use.
Labels: 0 entailment, 1 neutral, 2 contradiction.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

XNLI_LANGUAGES = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()


def load_data(data_dir: str | None, max_train: int = 0) -> tuple[list[dict], list[dict]]:
    if data_dir:
        read = lambda n: [json.loads(line) for line in open(Path(data_dir) / n, encoding="utf-8")]  # noqa: E731
        train, test = read("train.jsonl"), read("test.jsonl")
    else:
        try:
            from datasets import load_dataset
        except ImportError:
            raise SystemExit("trainer.xnli: pip install datasets (or pass --data-dir)") from None
        tr = load_dataset("xnli", "en", split="train")
        train = [{"premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"]} for r in tr]
        te = load_dataset("xnli", "all_languages", split="test")
        test = []
        for r in te:
            hyp = dict(zip(r["hypothesis"]["language"], r["hypothesis"]["translation"]))
            for lang, prem in r["premise"].items():
                test.append({"premise": prem, "hypothesis": hyp[lang], "label": r["label"], "language": lang})
    if max_train:
        train = random.Random(0).sample(train, min(max_train, len(train)))
    return train, test


def _batches(rows, tok, batch_size, shuffle, seed=0, max_length=128):
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for a in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[a:a + batch_size]]
        enc = tok([r["premise"] for r in chunk], [r["hypothesis"] for r in chunk], padding=True,
                  truncation=True, max_length=max_length, return_tensors="pt")
        yield enc, torch.tensor([r["label"] for r in chunk])


def finetune(model_dir: str, train: list[dict], epochs: int = 2, lr: float = 2e-5, batch_size: int = 32,
             teacher_dir: str | None = None, kd_weight: float = 0.5, temperature: float = 2.0,
             seed: int = 0) -> tuple[torch.nn.Module, object, list[float]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval() if teacher_dir else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for epoch in range(epochs):
        for enc, y in _batches(train, tok, batch_size, shuffle=True, seed=seed + epoch):
            logits = model(**enc).logits
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(**enc).logits
                kd = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(t / temperature, -1),
                              log_target=True, reduction="batchmean") * temperature ** 2
                loss = (1 - kd_weight) * loss + kd_weight * kd
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    return model.eval(), tok, losses


@torch.no_grad()
def evaluate(model, tok, test: list[dict], batch_size: int = 64) -> dict[str, float]:
    by_lang: dict[str, list[dict]] = {}
    for r in test:
        by_lang.setdefault(r["language"], []).append(r)
    res = {}
    for lang, rows in sorted(by_lang.items()):
        correct = 0
        for enc, y in _batches(rows, tok, batch_size, shuffle=False):
            correct += int(model(**enc).logits.argmax(-1).eq(y).sum())
        res[lang] = correct / len(rows)
    others = [v for k, v in res.items() if k != "en"]
    res["mean"] = sum(res.values()) / len(res)
    if "en" in res and others:
        res["transfer_gap"] = res["en"] - sum(others) / len(others)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.xnli", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="student (or any encoder) HF directory")
    ap.add_argument("--teacher", default=None, help="a teacher fine-tuned on English XNLI (task distillation)")
    ap.add_argument("--data-dir", default=None, help="train.jsonl + test.jsonl instead of the hub dataset")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train", type=int, default=0, help="subsample the English training set")
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    train, test = load_data(args.data_dir, args.max_train)
    model, tok, losses = finetune(args.model, train, args.epochs, args.lr, args.batch_size, args.teacher,
                                  args.kd_weight, args.temperature)
    res = evaluate(model, tok, test)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xnli.json").write_text(json.dumps({"accuracy": res, "train_loss": losses}, indent=1))
    model.save_pretrained(args.out / "model")
    tok.save_pretrained(args.out / "model")
    for k, v in res.items():
        print(f"{k:<14}{v:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
