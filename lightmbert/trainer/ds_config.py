"""The DeepSpeed config, generated from our typed config (never hand-written)."""
from __future__ import annotations

from lightmbert.configs import DataConfig, EngineConfig, OptimConfig


def resolve_precision(precision: str, cuda: bool) -> str:
    if precision == "auto":
        return "bf16" if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("engine.precision=fp16 needs a GPU (DeepSpeed on CPU supports bf16/fp32)")
    return precision


def build_ds_config(engine: EngineConfig, optim: OptimConfig, data: DataConfig, world: int,
                    precision: str) -> dict:
    zero: dict = {"stage": engine.zero_stage}
    if engine.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if engine.zero_stage == 3 and engine.param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = engine.param_persistence_threshold
    if engine.offload_optimizer:
        if engine.zero_stage == 0:
            raise ValueError("engine.offload_optimizer needs engine.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    cfg = {
        "train_micro_batch_size_per_gpu": data.micro_batch_size,
        "gradient_accumulation_steps": engine.grad_accum,
        "train_batch_size": data.micro_batch_size * engine.grad_accum * world,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 1 << 30,   # our metrics module logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        # our torch AdamW under ZeRO (DeepSpeed only vouches for its own optimizers)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    if optim.optimizer == "deepspeed_adam":
        cfg["optimizer"] = {"type": "AdamW", "params": {
            "lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps,
            "weight_decay": optim.weight_decay}}
    return cfg
