"""evaluation: cross-lingual quality of any Hugging Face encoder directory.

    python -m lightmbert.evaluation retrieval --model teacher=DIR --model student=DIR2 --pairs heldout.jsonl
    python -m lightmbert.evaluation transfer  --model DIR --pairs heldout.jsonl
    python -m lightmbert.evaluation.xnli      --model STUDENT_DIR --out runs/xnli

retrieval (English↔X top-1 on held-out translation pairs), zero-shot topic transfer, and the
XNLI harness. Sentence vectors are the masked mean of the last hidden states
(`lightmbert.evaluation.pooling.mean_pool`), the same pooling the trainer's sentence-level losses train.
The trainer calls `retrieval` for live evaluation during a run; this package imports nothing
from `trainer/` (tested), only `lightmbert.data_prep.progress`.
"""
from .encoders import default_device, encode, load_encoder, truncated
from .pooling import mean_pool
from .retrieval import (format_table, load_pairs, parse_set, retrieval, share, top1, worst_share,
                        write_tables)
from .transfer import fit_logreg, load_topic_items, transfer

__all__ = ["default_device", "encode", "load_encoder", "truncated", "mean_pool", "format_table",
           "load_pairs", "parse_set", "retrieval", "share", "top1", "worst_share", "write_tables", "fit_logreg", "load_topic_items", "transfer"]
