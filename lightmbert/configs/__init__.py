"""Typed YAML configs shared by data_prep and trainer (and the YAML files themselves).

    from lightmbert.configs import load, PrepConfig
    cfg = load(PrepConfig, "configs/data/demo.yaml", ["--packing.seq_len=256"])
"""
from .loader import (ConfigError, describe, dump, from_dict, load, parse_cli, parse_overrides,
                     print_help, to_dict)
from .schema import (AttentionRelationsConfig, DataConfig, DistillConfig, EngineConfig, EvalConfig,
                     EvalSetConfig, InputConfig, LossConfig, OptimConfig, OutputConfig, PackingConfig,
                     PrepConfig, RunConfig, StudentConfig, TeacherConfig, TokenizerConfig, check_language_key)

__all__ = ["ConfigError", "load", "parse_cli", "from_dict", "to_dict", "dump", "parse_overrides",
           "describe", "print_help", "PrepConfig", "InputConfig", "TokenizerConfig",
           "PackingConfig", "OutputConfig", "check_language_key", "DistillConfig", "RunConfig",
           "TeacherConfig", "StudentConfig", "LossConfig", "DataConfig", "OptimConfig",
           "EngineConfig", "EvalConfig", "EvalSetConfig", "AttentionRelationsConfig"]
