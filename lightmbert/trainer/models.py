"""Teacher loading and the LightMBERT student.

The student is built from the teacher's own config class with fewer layers; its embeddings
are copied (and frozen by default) and its layers copied from a selection of the teacher's.
Only BERT-style encoders (`<model>.embeddings`, `<model>.encoder.layer[i]`) are supported:
BertModel, XLM-RoBERTa, multilingual-E5, their *ForMaskedLM wrappers, ...
"""
from __future__ import annotations

import copy
import os

import torch
from torch import nn

from lightmbert.configs import StudentConfig, TeacherConfig
from lightmbert.evaluation.encoders import load_kwargs


class ModelError(ValueError):
    """A teacher/student combination that cannot work (raised before any training)."""


def encoder_of(model: nn.Module) -> nn.Module:
    """The bare encoder (BertModel-like) inside a model or a *ForMaskedLM wrapper."""
    base = getattr(model, "base_model", model)
    if not (hasattr(base, "embeddings") and hasattr(base, "encoder") and hasattr(base.encoder, "layer")):
        raise ModelError(f"{type(model).__name__}: not a BERT-style encoder (needs .embeddings and "
                         f".encoder.layer)")
    return base


def load_teacher(cfg: TeacherConfig, with_mlm_head: bool, device: torch.device, dtype: torch.dtype,
                 seed: int) -> nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, BertConfig

    cls = AutoModelForMaskedLM if with_mlm_head else AutoModel
    if cfg.random_init:
        torch.manual_seed(seed)
        hf_cfg = BertConfig(**cfg.random_init)
        model = cls.from_config(hf_cfg, attn_implementation="sdpa")
    else:
        try:
            hf_cfg = AutoConfig.from_pretrained(cfg.name_or_path)
            extra = {} if with_mlm_head else {"add_pooling_layer": False}  # the pooler is unused
            hub = load_kwargs(cfg.hub_kernels)
            try:
                model = cls.from_pretrained(cfg.name_or_path, attn_implementation="sdpa", **extra, **hub)
            except TypeError:  # an encoder class without a pooler option
                model = cls.from_pretrained(cfg.name_or_path, attn_implementation="sdpa", **hub)
        except (OSError, ValueError) as e:
            raise ModelError(f"teacher.name_or_path={cfg.name_or_path!r}: cannot load "
                             f"({type(e).__name__}: {e})") from None
    encoder_of(model)
    model.to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen: never in an optimizer, never a gradient
    return model


def select_layers(cfg: StudentConfig, n_teacher: int) -> list[int]:
    k = cfg.num_layers
    if k > n_teacher:
        raise ModelError(f"student.num_layers={k} > the teacher's {n_teacher} layers")
    if cfg.layer_selection == "bottom":
        return list(range(k))
    if cfg.layer_selection == "uniform":
        return [round(i * (n_teacher - 1) / max(k - 1, 1)) for i in range(k)] if k > 1 else [n_teacher - 1]
    bad = [i for i in cfg.layers if not 0 <= i < n_teacher]
    if bad:
        raise ModelError(f"student.layers: {bad} out of range for a {n_teacher}-layer teacher")
    return list(cfg.layers)


def build_student(teacher: nn.Module, cfg: StudentConfig, seed: int) -> tuple[nn.Module, list[int]]:
    """A fresh fp32 student of the teacher's class; returns (student, copied teacher layers)."""
    t_cfg = teacher.config
    s_cfg = copy.deepcopy(t_cfg)
    s_cfg.num_hidden_layers = cfg.num_layers
    if cfg.hidden_size is not None and cfg.hidden_size != t_cfg.hidden_size:
        if cfg.hidden_size % t_cfg.num_attention_heads:
            raise ModelError(f"student.hidden_size={cfg.hidden_size} is not divisible by the "
                             f"teacher's {t_cfg.num_attention_heads} heads (the attention loss "
                             f"pairs heads one to one)")
        s_cfg.hidden_size = cfg.hidden_size
        s_cfg.intermediate_size = 4 * cfg.hidden_size
        if cfg.init == "teacher":
            raise ModelError("student.hidden_size differs from the teacher's: set student.init: random")
    if cfg.dropout is not None:
        s_cfg.hidden_dropout_prob = s_cfg.attention_probs_dropout_prob = cfg.dropout
    layers = select_layers(cfg, t_cfg.num_hidden_layers)
    torch.manual_seed(seed)
    # no pooler when the teacher has none (it would be random and unused in the export)
    extra = {"add_pooling_layer": False} if getattr(teacher, "pooler", True) is None else {}
    student = type(teacher)._from_config(s_cfg, attn_implementation="sdpa", **extra).float()
    if cfg.init_from:  # a second stage: continue from an exported student
        from transformers import AutoModel, AutoModelForMaskedLM
        loader = AutoModelForMaskedLM if hasattr(student, "cls") or hasattr(student, "lm_head") else AutoModel
        try:
            prev = loader.from_pretrained(cfg.init_from, **load_kwargs())
        except (OSError, ValueError) as e:
            raise ModelError(f"student.init_from={cfg.init_from!r}: cannot load ({e})") from None
        missing, unexpected = student.load_state_dict(_fp32(prev.state_dict()), strict=False)
        if unexpected or [k for k in missing if "pooler" not in k and "position_ids" not in k]:
            raise ModelError(f"student.init_from={cfg.init_from!r} does not fit this student "
                             f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    elif cfg.init == "teacher":
        t_enc, s_enc = encoder_of(teacher), encoder_of(student)
        s_enc.embeddings.load_state_dict(_fp32(t_enc.embeddings.state_dict()))
        for i, j in enumerate(layers):
            s_enc.encoder.layer[i].load_state_dict(_fp32(t_enc.encoder.layer[j].state_dict()))
        if hasattr(teacher, "cls") or hasattr(teacher, "lm_head"):  # an MLM head: copy it too
            head = "cls" if hasattr(teacher, "cls") else "lm_head"
            getattr(student, head).load_state_dict(_fp32(getattr(teacher, head).state_dict()))
    if cfg.freeze_embeddings:
        for p in encoder_of(student).embeddings.parameters():
            p.requires_grad_(False)
    for layer in encoder_of(student).encoder.layer[:cfg.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)
    student.train()
    return student, layers


def full_numel(p: torch.Tensor) -> int:
    """A parameter's full size, also when ZeRO-3 holds only this rank's partition of it."""
    return int(getattr(p, "ds_numel", p.numel()))


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside the embedding layer: the N of the 2·N / 6·N FLOPs-per-token counts."""
    emb = sum(full_numel(p) for p in encoder_of(model).embeddings.parameters())
    return sum(full_numel(p) for p in model.parameters()) - emb


def flops_per_token(teacher: nn.Module, student: nn.Module) -> tuple[float, float]:
    """(training FLOPs per token, device peak FLOP/s) for MFU on GPU: 2·N per token for the
    teacher's forward + 6·N for the student's forward and backward (embeddings excluded)."""
    peak = float(os.environ.get("LIGHTMBERT_PEAK_TFLOPS", 989)) * 1e12  # H100 SXM dense bf16
    return 2 * non_embedding_params(teacher) + 6 * non_embedding_params(student), peak


def _fp32(sd: dict) -> dict:
    return {k: v.detach().float().clone() for k, v in sd.items()}
