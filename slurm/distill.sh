#!/usr/bin/env bash
# sbatch slurm/distill.sh CONFIG.yaml [--section.key=value ...]
#
# LightMBERT distillation on a Slurm cluster: one task per node, each running torchrun with
# c10d rendezvous for that node's GPUs (from the allocation). Preemption-safe: on USR1 (sent
# by Slurm `grace` seconds before the time limit, see --signal) or SIGTERM (partition
# preemption), the trainer checkpoints at the next step and exits with 75; this script then
# requeues the job, and the requeued run resumes from that checkpoint automatically.
# The trainer's own exit code comes from $LIGHTMBERT_EXIT_FILE, which its rank 0 writes
# (torchrun turns any worker's non-zero exit into 1). Requeued only when the trainer reported
# 75 ("checkpointed, requeue me"), or when a signal or a preemption killed it before it could
# report anything (it resumes from the previous checkpoint) — at most LIGHTMBERT_MAX_REQUEUES
# times (default 50). Never after 0 (done), 2 (bad config or data), 3 (non-finite losses),
# 4 (quality stop), nor a failure without a signal: a real error must not requeue forever.
#
# Lines marked EDIT are site-specific. Monitor: squeue -u $USER; tail -f lightmbert-<jobid>.out;
# tensorboard --logdir <run.output_dir>/tensorboard. Cancel: scancel <jobid>.
#SBATCH --job-name=lightmbert
#SBATCH --nodes=2                 # EDIT: nodes
#SBATCH --ntasks-per-node=1       # one launcher (torchrun) per node: keep
#SBATCH --gpus-per-node=8         # EDIT: GPUs per node (delete the line on CPU-only nodes)
#SBATCH --cpus-per-task=64        # EDIT: CPU cores per node (data workers, tokenizer)
#SBATCH --time=24:00:00           # EDIT: wall time per attempt (requeues continue the run)
#SBATCH --signal=B:USR1@300       # USR1 to this script 300 s before the time limit
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu         # EDIT: partition / account / qos
set -uo pipefail

CONFIG=${1:?usage: sbatch slurm/distill.sh CONFIG.yaml [--section.key=value ...]}
shift
REPO=${LIGHTMBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}          # EDIT if you submit from elsewhere
PYTHON=${LIGHTMBERT_PYTHON:-$REPO/.venv/bin/python}         # EDIT: the environment's python
cd "$REPO"

# Rendezvous on the first node, at the address Slurm itself uses for it; the port is derived
# from the job id so concurrent jobs on shared nodes do not collide.
FIRST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$FIRST" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
MASTER_ADDR=${MASTER_ADDR:-$FIRST}
MASTER_PORT=${LIGHTMBERT_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# Processes per node = GPUs on this node in the allocation (not hard-coded); CPU-only: 1
# (or LIGHTMBERT_NPROC_PER_NODE).
if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then NPROC=$SLURM_GPUS_ON_NODE
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then NPROC=$(awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES")
else NPROC=${LIGHTMBERT_NPROC_PER_NODE:-1}; fi
export MASTER_ADDR MASTER_PORT OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
echo "[slurm] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: $SLURM_NNODES nodes × $NPROC processes, rendezvous $MASTER_ADDR:$MASTER_PORT"

# The per-node command. \$SLURM_NODEID is escaped so that srun expands it in each task, not
# here (the classic bug: every node would be node 0).
LAUNCH=("$PYTHON" -m torch.distributed.run --nnodes "$SLURM_NNODES" --nproc_per_node "$NPROC"
        --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$SLURM_JOB_ID"
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout 600
        -m lightmbert.trainer.distill --config "$CONFIG" "$@")

# where rank 0 reports the trainer's exit code (on the shared filesystem: rank 0 may run on any node)
export LIGHTMBERT_EXIT_FILE=${LIGHTMBERT_EXIT_FILE:-$REPO/.lightmbert-exit-$SLURM_JOB_ID}
rm -f "$LIGHTMBERT_EXIT_FILE"

SIGNALED=0
forward() {  # bash runs traps between commands: srun runs in the background, we `wait`
  SIGNALED=1
  echo "[slurm] $1 received: asking the trainer to checkpoint"
  kill -s "$1" "$SRUN_PID" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

srun --kill-on-bad-exit=1 --export=ALL --ntasks-per-node=1 bash -c \
  "echo \"[slurm] node \$SLURM_NODEID (\$(hostname)) starting\"; exec \"\$@\"" _ "${LAUNCH[@]}" &
SRUN_PID=$!
while true; do  # `wait` returns early when a trapped signal arrives: wait again
  wait "$SRUN_PID"; CODE=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

PREEMPTED=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o 'PreemptTime=[^ ]*' | grep -v None)
TRAINER=$(head -c 16 "$LIGHTMBERT_EXIT_FILE" 2>/dev/null | tr -dc 0-9)
rm -f "$LIGHTMBERT_EXIT_FILE"
RESTARTS=${SLURM_RESTART_COUNT:-0}
MAX_REQUEUES=${LIGHTMBERT_MAX_REQUEUES:-50}
REQUEUE=0
if [[ $TRAINER == 75 ]]; then
  WHY="the trainer checkpointed after a signal (exit 75)"; REQUEUE=1
elif [[ -z $TRAINER ]] && (( CODE != 0 )) && [[ $SIGNALED == 1 || -n "$PREEMPTED" ]]; then
  WHY="killed by a signal before a checkpoint (exit $CODE); the next run resumes from the last one"; REQUEUE=1
fi
[[ -n $TRAINER ]] && CODE=$TRAINER
if (( REQUEUE )) && (( RESTARTS >= MAX_REQUEUES )); then
  echo "[slurm] $WHY, but the job was already requeued $RESTARTS times (LIGHTMBERT_MAX_REQUEUES=$MAX_REQUEUES): not requeueing"
  exit "$CODE"
fi
if (( REQUEUE )); then
  echo "[slurm] $WHY: requeueing job $SLURM_JOB_ID (restart $((RESTARTS + 1)))"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "[slurm] finished with exit code $CODE (not requeued: 0 done, 2 bad config/data, 3 non-finite losses, 4 quality stop)"
exit "$CODE"
