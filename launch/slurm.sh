#!/usr/bin/env bash
# Submits fixres_jax to SLURM: NODES nodes, one process per GPU; jax.distributed reads SLURM's
# environment (SLURM_NTASKS, SLURM_PROCID, the node list), so main needs no extra flags.
#
# Usage: launch/slurm.sh CONFIG WORKDIR [--dry-run] [--config.FIELD=VALUE ...]
#   env: NODES (default 2), GPUS_PER_NODE (default 8), PARTITION, TIME (default 48:00:00)
#   e.g. NODES=4 launch/slurm.sh configs/r50_224.py /shared/runs/r50_224
#
# WORKDIR must be on a filesystem every node sees (or gs://). Preempted jobs are requeued;
# the same command then resumes from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
TIME="${TIME:-48:00:00}"
partition=()
if [ -n "${PARTITION:-}" ]; then
  partition=(--partition="$PARTITION")
fi

run sbatch "${partition[@]}" --job-name=fixres_jax --nodes="$NODES" \
  --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-task=1 --cpus-per-task=8 \
  --time="$TIME" --requeue --signal=TERM@120 --output="fixres_jax-%j.log" \
  --wrap="srun python -m fixres_jax.main --config=$CONFIG --workdir=$WORKDIR ${EXTRA[*]}"
