#!/usr/bin/env bash
# sbatch slurm/prep.sh CONFIG.yaml [--section.key=value ...]
#
# data_prep as a job array on CPU nodes: task i of N tokenises every N-th work unit (files,
# chunks of big files) into OUT/.work; array task 0 also submits the final step, which runs
# after the whole array succeeded, writes the shards + manifest with the normal command
# (byte-identical to a single `python -m lightmbert.data_prep.shard` run) and verifies every shard's
# hash and the counts (`python -m lightmbert.data_prep.inspect OUT --verify`). Resubmitting after a
# failure skips finished units.
#SBATCH --job-name=lightmbert-prep
#SBATCH --array=0-7               # EDIT: number of tasks (any N; output does not depend on it)
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16        # EDIT: cores per task (= data_prep workers)
#SBATCH --time=04:00:00           # EDIT
#SBATCH --output=%x-%A_%a.out
##SBATCH --partition=cpu         # EDIT: partition / account
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm/prep.sh CONFIG.yaml [--section.key=value ...]}
shift
REPO=${LIGHTMBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}          # EDIT if you submit from elsewhere
PYTHON=${LIGHTMBERT_PYTHON:-$REPO/.venv/bin/python}         # EDIT: the environment's python
cd "$REPO"
WORKERS=${SLURM_CPUS_PER_TASK:-0}

if [[ "${LIGHTMBERT_PREP_FINAL:-0}" == 1 ]]; then
  echo "[prep] final step: writing shards and the manifest"
  "$PYTHON" -m lightmbert.data_prep.shard --config "$CONFIG" "$@" --workers="$WORKERS"
  OUT=$("$PYTHON" -c 'import sys; from lightmbert.configs import PrepConfig, parse_cli
print(parse_cli(PrepConfig, sys.argv[1:], "prep").output.dir)' --config "$CONFIG" "$@")
  exec "$PYTHON" -m lightmbert.data_prep.inspect "$OUT" --verify
fi

TASK=${SLURM_ARRAY_TASK_ID:?run this with sbatch (it is a job array)}
COUNT=${SLURM_ARRAY_TASK_COUNT:?}
if [[ $TASK == "${SLURM_ARRAY_TASK_MIN:-0}" ]]; then
  # the final step depends on every task of this array having succeeded; its log goes
  # beside this task's
  LOGDIR=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/.*StdOut=\([^ ]*\).*/\1/p' | head -n 1)")
  sbatch --dependency="afterok:${SLURM_ARRAY_JOB_ID}" --array=0 --job-name=lightmbert-prep-final \
         --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --output="${LOGDIR:-.}/%x-%A_%a.out" \
         --export=ALL,LIGHTMBERT_PREP_FINAL=1 "$REPO/slurm/prep.sh" "$CONFIG" "$@"
fi
INDEX=$((TASK - ${SLURM_ARRAY_TASK_MIN:-0}))
echo "[prep] task $INDEX of $COUNT"
exec "$PYTHON" -m lightmbert.data_prep.shard --config "$CONFIG" "$@" --workers="$WORKERS" \
     --task_index="$INDEX" --num_tasks="$COUNT"
