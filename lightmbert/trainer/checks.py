"""Fail-fast checks that need no process group: a run with bad data or an impossible
combination stops here, with a message naming the key and value, before any collective
(where one failing rank would leave the others hanging)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from lightmbert.configs import DistillConfig

from .models import ModelError, encoder_of


def check_config(cfg: DistillConfig) -> None:
    for key in ("logit_weight", "mlm_weight"):
        if getattr(cfg.loss, key) > 0 and cfg.engine.zero_stage == 3:
            raise ModelError(f"loss.{key} with engine.zero_stage=3 is not supported: the MLM decoder "
                             f"weight (tied to the embeddings) is partitioned and used outside its "
                             f"module's forward; use engine.zero_stage 0–2 (the student is small: "
                             f"ZeRO-2 already partitions its optimizer state and gradients)")


def check_tokenizer(manifest: dict, teacher: nn.Module, teacher_path: str | None) -> None:
    """The shards must have been made with the teacher's own tokenizer."""
    tok = manifest["tokenizer"]
    vocab = encoder_of(teacher).config.vocab_size
    if tok["vocab_size"] > vocab:
        raise ModelError(f"data.shards tokenizer {tok['name']!r} has {tok['vocab_size']} ids but "
                         f"the teacher's embeddings only {vocab}: shards and teacher do not match")
    if teacher_path and Path(teacher_path).is_dir() and (Path(teacher_path) / "tokenizer.json").is_file():
        from lightmbert.data_prep.tokenizer import describe_tokenizer, load_tokenizer
        mine = describe_tokenizer(load_tokenizer(teacher_path), teacher_path)
        if mine.sha256 != tok["sha256"]:
            raise ModelError(f"data.shards were tokenised with {tok['name']!r}, which differs from "
                             f"the teacher's own tokenizer in {teacher_path} (sha256 {mine.sha256[:12]} "
                             f"vs {tok['sha256'][:12]}): re-shard with the teacher's tokenizer")


def mask_id(manifest: dict) -> int:
    """The [MASK]/<mask> id of the shards' tokenizer (BERT masking for the MLM loss)."""
    from lightmbert.data_prep.tokenizer import load_tokenizer
    name = manifest["tokenizer"]["name"]
    mid = getattr(load_tokenizer(name), "mask_token_id", None)
    if mid is None:
        raise ModelError(f"loss.mlm_weight > 0 but tokenizer {name!r} has no mask token")
    return int(mid)
