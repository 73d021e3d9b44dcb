"""What a run leaves in its folder besides checkpoints and TensorBoard: the resolved config
(`config.yaml`, rerunnable), the generated `ds_config.json`, `run_info.json` (git revision,
world size, layer map, ...), the student's HF config (what `lightmbert.trainer.export` rebuilds it from),
and with `run.trace` a per-rank `trace_rank<r>.jsonl` (exact loss, batch hash and the [language, epoch, sample id, wrapped]
of every sample row, per step)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lightmbert.configs import DistillConfig, dump


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunRecords:
    def __init__(self, run_dir: Path, rank: int, trace: bool):
        self.run_dir, self.rank, self.trace_on = run_dir, rank, trace

    def write_start(self, cfg: DistillConfig, ds_config: dict, info: dict, student_config,
                    command: str) -> None:
        """Rank 0, once per (re)start: the files that say what this run is."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank != 0:
            return
        dump(cfg, self.run_dir / "config.yaml", header=command or "python -m lightmbert.trainer.distill")
        (self.run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=1))
        (self.run_dir / "run_info.json").write_text(json.dumps(
            {"git_revision": git_revision(), **info, "command": command}, indent=1))
        student_config.save_pretrained(self.run_dir / "student_config")

    def trace(self, step: int, loss: float, batch_sha256: str, rows: list) -> None:
        if self.trace_on:
            with open(self.run_dir / f"trace_rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": repr(loss), "batch_sha256": batch_sha256,
                                    "rows": rows}) + "\n")
