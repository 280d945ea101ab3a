#!/usr/bin/env bash
# Submits fixres_jax to SLURM: NODES nodes, one process per GPU. jax.distributed reads SLURM's
# environment (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID, the node list), so main needs no
# extra flags; each task sees all GPUs of its node and takes the one at SLURM_LOCALID.
#
# Usage: launch/slurm.sh CONFIG WORKDIR [--dry-run] [--config.FIELD=VALUE ...]
#   env: NODES (default 2), GPUS_PER_NODE (default 8; 0 for a CPU-only job),
#        TASKS_PER_NODE (default GPUS_PER_NODE, or 1 without GPUs), CPUS_PER_TASK (default 8),
#        PARTITION, TIME (default 48:00:00), SIGNAL_SECONDS (default 300),
#        LOG (default fixres_jax-%j.log, appended to across requeues)
#   e.g. NODES=4 launch/slurm.sh configs/r50_224.py /shared/runs/r50_224 \
#          "--config.stages=('finetune','sweep')"
#
# WORKDIR must be on a filesystem every node sees (or gs://). SIGNAL_SECONDS before the time
# limit, and on preemption or `scancel --signal=TERM`, every process gets SIGTERM, saves a
# checkpoint at one common step and exits 143; the job then requeues itself and resumes from
# that checkpoint. Any other exit ends the job.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
if [ "$GPUS_PER_NODE" -gt 0 ]; then
  TASKS_PER_NODE="${TASKS_PER_NODE:-$GPUS_PER_NODE}"
  gpus=(--gpus-per-node="$GPUS_PER_NODE")
else
  TASKS_PER_NODE="${TASKS_PER_NODE:-1}"
  gpus=()
fi
partition=()
if [ -n "${PARTITION:-}" ]; then
  partition=(--partition="$PARTITION")
fi

# The job script: one srun step of main on every task, then a self-requeue after preemption.
# Every argument reaches python word for word: the command line is built with `quote`.
main=(python -m fixres_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")
script="#!/usr/bin/env bash
srun $(quote "${main[@]}")
status=\$?
if [ \"\$status\" -eq 143 ]; then  # preempted with a checkpoint: run the rest later
  scontrol requeue \"\$SLURM_JOB_ID\"
fi
exit \"\$status\""

submit=(sbatch "${partition[@]}" --job-name=fixres_jax --nodes="$NODES"
  --ntasks-per-node="$TASKS_PER_NODE" "${gpus[@]}" --cpus-per-task="${CPUS_PER_TASK:-8}"
  --time="${TIME:-48:00:00}" --signal="TERM@${SIGNAL_SECONDS:-300}" --requeue
  --open-mode=append --output="${LOG:-fixres_jax-%j.log}")
printf '+ %s <<EOF\n%s\nEOF\n' "$(quote "${submit[@]}")" "$script"
if [ "$DRY_RUN" -eq 0 ]; then
  "${submit[@]}" <<<"$script"
fi
