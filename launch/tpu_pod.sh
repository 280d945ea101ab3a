#!/usr/bin/env bash
# Creates a Cloud TPU VM pod slice, installs fixres_jax on every worker and runs it there.
# jax.distributed is initialised automatically on TPU VMs; datasets and the workdir live on GCS.
#
# Usage: launch/tpu_pod.sh CONFIG WORKDIR [--dry-run] [--config.FIELD=VALUE ...]
#   env: TPU_NAME (default fixres), ZONE (default us-central2-b), ACCELERATOR (default v4-32),
#        RUNTIME (default tpu-ubuntu2204-base), TFDS_DATA_DIR (default gs://BUCKET/tensorflow_datasets)
#   e.g. TFDS_DATA_DIR=gs://my-bucket/tfds launch/tpu_pod.sh configs/r50_128.py gs://my-bucket/runs/r50_128
#
# Re-running resumes from the last checkpoint in WORKDIR (a preempted slice must be recreated).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

TPU_NAME="${TPU_NAME:-fixres}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-gs://BUCKET/tensorflow_datasets}"
ssh=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all)

if [ "$DRY_RUN" -eq 1 ] || ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi
run gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all . "$TPU_NAME":fixres_jax
run "${ssh[@]}" --command="cd fixres_jax && pip install -r requirements.txt 'jax[tpu]==0.10.2'"
run "${ssh[@]}" --command="cd fixres_jax && TFDS_DATA_DIR=$TFDS_DATA_DIR python -m fixres_jax.main --config=$CONFIG --workdir=$WORKDIR ${EXTRA[*]}"
