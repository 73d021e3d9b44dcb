"""python -m lightmbert.evaluation.xnli --model STUDENT_DIR [--teacher FINETUNED_TEACHER_DIR] [--data-dir DIR] --out OUT

The XNLI protocol for real users: fine-tune the (distilled) student on English NLI, then
evaluate zero-shot on all 15 XNLI languages. With --teacher (a teacher already fine-tuned on
English XNLI), the student is task-distilled: loss = (1 − kd_weight)·CE(labels) +
kd_weight·T²·KL(softmax(teacher/T) ‖ softmax(student/T)).

Data: the Hugging Face dataset `xnli` (`all_languages` test split; needs the `datasets`
package and hub access), or --data-dir with `train.jsonl` (English: premise, hypothesis,
label) and `test.jsonl` (premise, hypothesis, label, language) — the format the tests use.
Labels: 0 entailment, 1 neutral, 2 contradiction.

Runs on CUDA when present (bf16 autocast for the forward passes, fp32 master weights) and on
the CPU otherwise; the test rows of all 15 languages are evaluated as one length-sorted
stream (full batches, little padding) and scored per language afterwards. Progress: a bar on
a terminal, a log line every 10% otherwise.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import contextlib

import torch
import torch.nn.functional as F

from lightmbert.data_prep.progress import Progress

from .encoders import default_device, load_kwargs

XNLI_LANGUAGES = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()


def load_data(data_dir: str | None, max_train: int = 0) -> tuple[list[dict], list[dict]]:
    if data_dir:
        read = lambda n: [json.loads(line) for line in open(Path(data_dir) / n, encoding="utf-8")]  # noqa: E731
        train, test = read("train.jsonl"), read("test.jsonl")
    else:
        try:
            from datasets import load_dataset
        except ImportError:
            raise SystemExit("lightmbert.evaluation.xnli: pip install datasets (or pass --data-dir)") from None
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


def _batches(rows, tok, batch_size, shuffle, seed=0, max_length=128, device="cpu"):
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for a in range(0, len(order), batch_size):
        idx = order[a:a + batch_size]
        chunk = [rows[i] for i in idx]
        enc = tok([r["premise"] for r in chunk], [r["hypothesis"] for r in chunk], padding=True,
                  truncation=True, max_length=max_length, return_tensors="pt").to(device)
        yield idx, enc, torch.tensor([r["label"] for r in chunk], device=device)


def _autocast(device: str):
    """bf16 autocast on CUDA (what a GPU user wants for 393k pairs); exact fp32 on the CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def finetune(model_dir: str, train: list[dict], epochs: int = 2, lr: float = 2e-5, batch_size: int = 32,
             teacher_dir: str | None = None, kd_weight: float = 0.5, temperature: float = 2.0,
             seed: int = 0, device: str | None = None) -> tuple[torch.nn.Module, object, list[float]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    device = device or default_device()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, **load_kwargs()).to(device)
    teacher = None
    if teacher_dir:
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, **load_kwargs()).to(device).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    with Progress(epochs * -(-len(train) // batch_size), "xnli finetune", "batches") as bar:
        for epoch in range(epochs):
            for _, enc, y in _batches(train, tok, batch_size, shuffle=True, seed=seed + epoch, device=device):
                with _autocast(device):
                    logits = model(**enc).logits.float()
                    loss = F.cross_entropy(logits, y)
                    if teacher is not None:
                        with torch.no_grad():
                            t = teacher(**enc).logits.float()
                        kd = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(t / temperature, -1),
                                      log_target=True, reduction="batchmean") * temperature ** 2
                        loss = (1 - kd_weight) * loss + kd_weight * kd
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
                bar.update(1, loss=f"{losses[-1]:.4f}")
    return model.eval(), tok, losses


@torch.no_grad()
def evaluate(model, tok, test: list[dict], batch_size: int = 64) -> dict[str, float]:
    """Accuracy per language, "mean" and "transfer_gap" (English − mean of the others)."""
    device = str(next(model.parameters()).device)
    order = sorted(range(len(test)), key=lambda i: len(test[i]["premise"]) + len(test[i]["hypothesis"]))
    rows = [test[i] for i in order]
    correct = torch.zeros(len(rows), dtype=torch.bool)
    with Progress(len(rows), "xnli evaluate", "pairs") as bar:
        for idx, enc, y in _batches(rows, tok, batch_size, shuffle=False, device=device):
            with _autocast(device):
                pred = model(**enc).logits.argmax(-1)
            correct[idx] = pred.eq(y).cpu()
            bar.update(len(idx))
    by_lang: dict[str, list[bool]] = {}
    for r, ok in zip(rows, correct.tolist()):
        by_lang.setdefault(r["language"], []).append(ok)
    res = {lang: sum(v) / len(v) for lang, v in sorted(by_lang.items())}
    others = [v for k, v in res.items() if k != "en"]
    res["mean"] = sum(res.values()) / len(res)
    if "en" in res and others:
        res["transfer_gap"] = res["en"] - sum(others) / len(others)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.evaluation.xnli", description=__doc__.split("\n\n")[0])
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
