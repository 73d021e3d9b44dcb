"""python -m lightmbert.trainer.export RUN_DIR|CHECKPOINT_DIR OUT

The student as a Hugging Face model directory (`save_pretrained` + the tokenizer the shards
were made with) that `AutoModel.from_pretrained` loads. From a live engine (end of training;
ZeRO-3 parameters are gathered first) or from a checkpoint (any ZeRO stage, consolidated with
DeepSpeed's zero_to_fp32).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn


def _log(msg: str, t0: float | None = None) -> None:
    """A plain stage line (export is a few long steps, not a loop: no bar, terminal or not)."""
    took = f" ({time.perf_counter() - t0:.1f} s)" if t0 is not None else ""
    print(f"[export] {msg}{took}", file=sys.stderr, flush=True)


def _save(student_state: dict, config_dir: Path | None, model: nn.Module | None, tokenizer: str,
          out: Path) -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    from lightmbert.data_prep.tokenizer import load_tokenizer
    if model is None:
        cfg = AutoConfig.from_pretrained(config_dir)
        arch = (cfg.architectures or ["BertModel"])[0]
        cls = AutoModelForMaskedLM if "MaskedLM" in arch else AutoModel
        model = cls.from_config(cfg)
        missing, unexpected = model.load_state_dict(student_state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit the student: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    t0 = time.perf_counter()
    n = sum(v.numel() for v in student_state.values())
    _log(f"writing {out} ({n / 1e6:.1f}M parameters, {len(student_state)} tensors)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=student_state, safe_serialization=False)
    tok = load_tokenizer(tokenizer)
    if hasattr(tok, "save_pretrained"):
        tok.save_pretrained(tmp)
    else:  # a saved directory read with `tokenizers` alone: copy its files
        for f in Path(tokenizer).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "sentencepiece")):
                shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _log(f"wrote {out}", t0)


def export_live(engine, student: nn.Module, tokenizer: str, out: Path, rank: int, zero_stage: int) -> None:
    """Called on every rank at the end of training; rank 0 writes."""
    import torch.distributed as dist
    if zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(student.parameters()), modifier_rank=None):
            state = {k: v.detach().float().cpu().clone() for k, v in student.state_dict().items()}
    else:
        state = {k: v.detach().float().cpu().clone() for k, v in student.state_dict().items()}
    if rank == 0:
        _save(state, None, student, tokenizer, out)
    dist.barrier()


def export_checkpoint(path: Path, out: Path) -> Path:
    """RUN_DIR (its latest checkpoint) or one checkpoint folder → HF directory."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    path = Path(path)
    if (path / "checkpoints").is_dir():
        run_dir, ckpt_root = path, path / "checkpoints"
        tag = (ckpt_root / "latest").read_text().strip()
    else:
        ckpt_root, tag = path.parent, path.name
        run_dir = ckpt_root.parent
    info = json.loads((run_dir / "run_info.json").read_text())
    t0 = time.perf_counter()
    _log(f"consolidating ZeRO checkpoint {ckpt_root / tag}")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)
    _log(f"consolidated {len(state)} tensors", t0)
    student = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    _save(student, run_dir / "student_config", None, info["tokenizer"], Path(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.trainer.export", description=__doc__.split("\n\n")[1])
    ap.add_argument("source", type=Path, help="a run folder (its latest checkpoint) or a checkpoint folder")
    ap.add_argument("out", type=Path, help="output HF model directory")
    args = ap.parse_args(argv)
    try:
        with torch.no_grad():
            out = export_checkpoint(args.source, args.out)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        print(f"lightmbert.trainer.export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
