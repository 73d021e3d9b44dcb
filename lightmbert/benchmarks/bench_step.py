"""python -m lightmbert.benchmarks.bench_step [--steps 20] [--size small|mbert] [--seq 128] [--out runs/bench]

Tokens/s of the full distillation step (trainer.Distiller.train_step: data loader, teacher
forward, Q/K capture, kernels losses, DeepSpeed backward + step, metrics bookkeeping) against
a bare PyTorch loop doing the same math in one process (same models, same batches held in
memory, torch AdamW, the torch reference losses). CPU goal: our overhead ≤ 1.2×.
On a GPU (--size mbert --seq 512): an mBERT-size random teacher (12×768, vocab 119,547) →
6-layer student, bf16 under DeepSpeed (DS_ACCELERATOR from the machine: cuda when torch sees
a GPU, cpu otherwise; an explicit DS_ACCELERATOR wins), and MFU: teacher forward 2·N + student
forward/backward 6·N FLOPs per token (embeddings excluded) plus the attention products, 4·L·d
per token and layer forward (QKᵀ and PV at sequence length L), ×3 for the student's forward and
backward; peak: the device's dense bf16 (benchmarks/device.py; LIGHTMBERT_PEAK_TFLOPS overrides).
After --warmup steps every timed step prints its tokens, time, tokens/s and MFU (into the log
as it runs); the CSV row is written when our steps are done and again with the bare loop's
number (a run stopped in between keeps the first). Prints a table and writes CSV.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .device import peak_bf16_tflops
from .report import report

SIZES = {  # teacher BertConfig, student layers
    "small": (dict(vocab_size=512, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                   intermediate_size=1024, max_position_embeddings=512), 3),
    "mbert": (dict(vocab_size=119547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512), 6),
}


def make_shards(tmp: Path, seq: int) -> Path:
    from lightmbert.configs import PrepConfig, load
    from lightmbert.data_prep.shard import run
    from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text
    tok = make_tokenizer(tmp / "tok")
    for i, lang in enumerate(WORDS):
        write_text(tmp / "text" / f"{lang}.txt", random_documents(lang, 1500, seed=i, max_segments=12))
    run(load(PrepConfig, None, [f"--input.directory={tmp}/text", f"--tokenizer.name_or_path={tok}",
                                f"--output.dir={tmp}/shards", "--workers=1", f"--packing.seq_len={seq}"]))
    return tmp / "shards"


def step_flops_per_token(teacher, student, teacher_cfg: dict, s_layers: int, seq: int) -> float:
    """Training FLOPs per token: 2·N teacher forward + 6·N student forward/backward (N without
    embeddings) + the attention products (QKᵀ, PV: 4·L·d per token and layer forward)."""
    from lightmbert.trainer.models import non_embedding_params
    d, t_layers = teacher_cfg["hidden_size"], teacher_cfg["num_hidden_layers"]
    attn = 4 * seq * d
    return (2 * non_embedding_params(teacher) + 6 * non_embedding_params(student)
            + attn * t_layers + 3 * attn * s_layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="the student's DeepSpeed precision (auto: bf16 on GPU, fp32 on CPU; bf16 on CPU "
                         "smoke-tests the bf16 engine path where no GPU is)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args(argv)
    import torch
    # DeepSpeed must train where the batch and teacher are: a cpu accelerator on a GPU machine
    # moves the student to the CPU next to a cuda:0 teacher
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

    from lightmbert import kernels
    from lightmbert.configs import DistillConfig, load
    from lightmbert.trainer.distiller import Distiller
    from lightmbert.trainer.models import build_student, encoder_of, load_teacher

    cuda = torch.cuda.is_available()
    if cuda and os.environ["DS_ACCELERATOR"] != "cuda":
        print(f"bench_step: DS_ACCELERATOR={os.environ['DS_ACCELERATOR']} on a CUDA machine: DeepSpeed will "
              f"put the student elsewhere than the batch", file=sys.stderr)
    teacher_cfg, s_layers = SIZES[args.size]
    with tempfile.TemporaryDirectory() as d:
        shards = make_shards(Path(d), args.seq)
        prec = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
        cfg = load(DistillConfig, None, [
            f"--run.output_dir={d}/run", f"--run.max_steps={args.steps + args.warmup}",
            "--run.export=false", "--run.progress_bar=false", f"--run.log_interval={10**6}",
            f"--teacher.random_init={teacher_cfg}", f"--student.num_layers={s_layers}", "--student.dropout=0.0",
            f"--data.shards={shards}", f"--data.micro_batch_size={args.batch}", "--data.num_workers=1",
            "--engine.zero_stage=0", f"--engine.precision={prec}", "--optim.warmup_steps=1"])
        dist_ = Distiller(cfg)
        device = torch.cuda.get_device_name() if cuda else \
            f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        peak = (peak_bf16_tflops(device) or 0.0) * 1e12 if cuda else 0.0
        flops_tok = step_flops_per_token(dist_.teacher, dist_.module.student, teacher_cfg, s_layers, args.seq)
        it = iter(dist_.loader)
        batches = []
        for _ in range(args.warmup):
            dist_.train_step(it)
        if cuda:
            torch.cuda.synchronize()
        t0, tokens, step_s = time.perf_counter(), 0, []
        for i in range(args.steps):
            t = time.perf_counter()
            out = dist_.train_step(it)
            if cuda:
                torch.cuda.synchronize()
            step_s.append(time.perf_counter() - t)
            tokens += out["tokens"]
            rate = out["tokens"] / step_s[-1]
            print(f"step {i + 1}/{args.steps}: {out['tokens']} tokens, {step_s[-1] * 1e3:.0f} ms, "
                  f"{rate:,.0f} tok/s" + (f", MFU {rate * flops_tok / peak:.3f}" if peak else ""), flush=True)
        ours = tokens / (time.perf_counter() - t0)
        row = {"device": device, "size": args.size, "seq": args.seq, "batch": args.batch, "steps": args.steps,
               "precision": prec, "ours_tok_s": round(ours), "step_ms_p50": round(1e3 * statistics.median(step_s), 1),
               "bare_tok_s": "", "overhead": "", "mflop_tok": round(flops_tok / 1e6, 1),
               "mfu": round(ours * flops_tok / peak, 3) if peak else ""}
        report([row], args.out / "bench_step.csv")  # now, in case the bare loop does not finish
        for _ in range(args.warmup + args.steps):  # the same kind of batches, held in memory
            batches.append(next(it))
        dist_.close()

        # the bare loop: same models and math, no DeepSpeed, no loader, no hooks framework
        dev = torch.device("cuda" if cuda else "cpu")
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        teacher = load_teacher(cfg.teacher, False, dev, dtype, cfg.run.seed)
        student, _ = build_student(teacher, cfg.student, cfg.run.seed)
        student.to(dev)
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
        n_t = teacher_cfg["num_hidden_layers"]
        pairs = [(i, i * n_t // s_layers) for i in range(1, s_layers + 1)]  # the uniform map
        heads = teacher.config.num_attention_heads
        qk: dict = {}

        def hook(key):  # plain forward hooks: Q/K as the layer computes them, no recompute
            def fn(_m, _i, out):
                B, L, _ = out.shape
                qk[key] = out.view(B, L, heads, -1).transpose(1, 2)
            return fn
        for name, model, layers in (("t", teacher, [t for _, t in pairs]), ("s", student, [s for s, _ in pairs])):
            for i in layers:
                att = encoder_of(model).encoder.layer[i - 1].attention.self
                att.query.register_forward_hook(hook((name, i, "q")))
                att.key.register_forward_hook(hook((name, i, "k")))

        def step(batch):
            ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
            with torch.no_grad():
                t = teacher(ids, attention_mask=mask, output_hidden_states=True).hidden_states
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                s = student(ids, attention_mask=mask, output_hidden_states=True).hidden_states
                hidden = sum(kernels.hidden_mse(s[si], t[ti], mask) for si, ti in pairs) / len(pairs)
                att = sum(kernels.attention_score_mse(qk["s", si, "q"], qk["s", si, "k"], qk["t", ti, "q"],
                                                      qk["t", ti, "k"], mask) for si, ti in pairs) / len(pairs)
                loss = hidden + att
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return int(mask.sum())

        for b in batches[:args.warmup]:
            step(b)
        t0, tokens = time.perf_counter(), 0
        for b in batches[args.warmup:]:
            tokens += step(b)
        if cuda:
            torch.cuda.synchronize()
        bare = tokens / (time.perf_counter() - t0)
    row.update(bare_tok_s=round(bare), overhead=round(bare / ours, 3))
    print(f"\nbench_step on {device}" + ("" if peak else " (no MFU: unknown peak; LIGHTMBERT_PEAK_TFLOPS sets one)"
                                          if cuda else ""))
    report([row], args.out / "bench_step.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
