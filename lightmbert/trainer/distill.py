"""python -m lightmbert.trainer.distill --config configs/distill/<name>.yaml [--section.key=value ...]

Also under `torchrun --nproc_per_node N -m lightmbert.trainer.distill ...` and
`deepspeed --num_gpus N -m lightmbert.trainer.distill ...`. Re-running the same command resumes from the
run's latest checkpoint. Exit codes: 0 done, 2 bad config/data, 75 checkpointed after
SIGUSR1/SIGTERM (requeue and run again to resume), 3 aborted after run.max_bad_steps
consecutive non-finite losses, 4 checkpointed and stopped because the live held-out retrieval
stayed below its step-0 value (eval.stop_on_drop).
"""
from __future__ import annotations

import os
import sys

from lightmbert.configs import ConfigError, DistillConfig, parse_cli


def report_exit(code: int) -> int:
    """Rank 0 writes its exit code to $LIGHTMBERT_EXIT_FILE (when set): a launcher such as
    torchrun turns any worker's non-zero exit into its own 1, so slurm/distill.sh reads the
    trainer's own verdict (75: checkpointed, requeue me) from there."""
    path = os.environ.get("LIGHTMBERT_EXIT_FILE")
    if path and os.environ.get("RANK", "0") == "0":
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(f"{code}\n")
            os.replace(tmp, path)
        except OSError as e:
            print(f"lightmbert.trainer.distill: warning: cannot write {path}: {e}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    return report_exit(_main(argv))


def _main(argv: list[str] | None = None) -> int:
    argv = [a for a in (sys.argv[1:] if argv is None else argv)
            if not a.startswith("--local_rank")]  # the deepspeed launcher adds --local_rank=N
    try:
        cfg = parse_cli(DistillConfig, argv, "python -m lightmbert.trainer.distill", __doc__)
    except ConfigError as e:
        print(f"lightmbert.trainer.distill: error: {e}", file=sys.stderr)
        return 2
    if cfg is None:
        return 0
    from lightmbert.data_prep import PrepError
    from lightmbert.data_prep.tarreader import ShardError

    from .checkpoint import CheckpointError
    from .data import DataError
    from .distiller import Distiller, RunLocked, shutdown
    from .models import ModelError
    from .step import DataFailure
    distiller = None
    try:
        try:
            distiller = Distiller(cfg, command=" ".join(["python -m lightmbert.trainer.distill", *argv]))
        except (PrepError, DataError, ModelError, RunLocked, CheckpointError, ValueError) as e:
            print(f"lightmbert.trainer.distill: error: {e}", file=sys.stderr)
            return 2
        try:
            code = distiller.train()
            if code == 0:
                distiller.close()
            return code
        except FloatingPointError as e:
            print(f"lightmbert.trainer.distill: error: {e}", file=sys.stderr)
            return 3
        except DataFailure as e:  # a missing, truncated or garbled shard, found by some rank while training
            print(f"lightmbert.trainer.distill: error: {e}", file=sys.stderr)
            return 2
        except ShardError as e:
            print(f"lightmbert.trainer.distill: error: rank {distiller.rank}: {str(e).strip().splitlines()[-1]}",
                  file=sys.stderr)
            return 2
    finally:
        # every exit path: TensorBoard flushed and closed, the run lock released, the process
        # group destroyed (a failing rank's peers then see a closed connection at once)
        shutdown(distiller)


if __name__ == "__main__":
    sys.exit(main())
