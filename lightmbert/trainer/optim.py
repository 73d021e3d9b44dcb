"""The student's optimizer and learning-rate schedule (the frozen teacher never gets either).

Only parameters that require gradients are optimised (frozen embeddings are not even in a
group); weight decay skips biases and LayerNorm weights (every tensor with < 2 dims).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from lightmbert.configs import OptimConfig


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer | None:
    """torch AdamW, or None: DeepSpeed then builds its own Adam from the ds_config."""
    if cfg.optimizer == "torch_adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return None


def lr_factor(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then linear/cosine decay to min_lr_ratio at total_steps (or constant)."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 1 - frac if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
    return factor


def scheduler_factory(cfg: OptimConfig, total_steps: int):
    """What deepspeed.initialize(lr_scheduler=...) calls with the optimizer it wraps; DeepSpeed
    steps the LambdaLR once per optimizer step and checkpoints it."""
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
