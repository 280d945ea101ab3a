#!/usr/bin/env bash
# Creates a Cloud TPU VM pod slice (or reuses a READY one), installs fixres_jax in a Python 3.11
# venv on every worker and starts it there, detached: the run goes on when ssh drops.
# jax.distributed is initialised automatically on TPU VMs; datasets and the workdir live on GCS.
#
# Usage: launch/tpu_pod.sh CONFIG WORKDIR [--dry-run] [--config.FIELD=VALUE ...]
#   env: TPU_NAME (default fixres), ZONE (default us-central2-b), ACCELERATOR (default v4-32),
#        RUNTIME (default tpu-ubuntu2204-base), TFDS_DATA_DIR (default gs://BUCKET/tensorflow_datasets),
#        SPOT=1 (spot capacity), QUEUED=1 (a queued resource: waits for capacity instead of
#        failing), WAIT_S (default 3600, how long to wait for the slice to be READY)
#   e.g. TFDS_DATA_DIR=gs://my-bucket/tfds launch/tpu_pod.sh configs/r50_128.py gs://my-bucket/runs/r50_128
#
# A slice found PREEMPTED or TERMINATED is deleted and created again. Re-running the same
# command resumes from the last checkpoint in WORKDIR. Each worker logs to ~/fixres_jax/run.log
# (copied to WORKDIR/logs/ when the run ends); follow worker 0 with
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=0 --command='tail -f fixres_jax/run.log'
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
WAIT_S="${WAIT_S:-3600}"
tpu=(gcloud compute tpus tpu-vm)
ssh=("${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all)
spot=()
if [ "${SPOT:-0}" = 1 ]; then
  spot=(--spot)
fi

slice_state() {
  "${tpu[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)' 2>/dev/null || true
}

create_slice() {
  if [ "${QUEUED:-0}" = 1 ]; then
    run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
      --zone="$ZONE" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot[@]}"
  else
    run "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" "${spot[@]}"
  fi
}

delete_slice() {
  if [ "${QUEUED:-0}" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" --zone="$ZONE" --force --quiet
  else
    run "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet
  fi
}

wait_until_ready() {
  local waited=0
  until [ "$(slice_state)" = READY ]; do
    if [ "$waited" -ge "$WAIT_S" ]; then
      echo "error: $TPU_NAME is not READY after ${WAIT_S}s (state: $(slice_state))." >&2
      exit 1
    fi
    sleep 10
    waited=$((waited + 10))
  done
}

state=""  # --dry-run prints the commands of a fresh start
if [ "$DRY_RUN" -eq 0 ]; then
  state="$(slice_state)"
fi
case "$state" in
  READY) echo "Reusing the READY slice $TPU_NAME." >&2 ;;
  PREEMPTED|TERMINATED)
    echo "$TPU_NAME is $state: deleting and creating it again." >&2
    delete_slice
    create_slice ;;
  "") create_slice ;;
  *) echo "$TPU_NAME is $state: waiting for READY." >&2 ;;
esac
if [ "$DRY_RUN" -eq 0 ]; then
  wait_until_ready
fi

# The main command, every argument quoted for the worker's shell. setsid + nohup: no SIGHUP
# when ssh drops; all three fds redirected, so that ssh returns at once (`cd` apart: in
# `cd && cmd &` a backgrounded subshell would keep ssh's output open).
args=$(printf ' %q' --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")
start="cd ~/fixres_jax || exit 1; TFDS_DATA_DIR=$(printf %q "$TFDS_DATA_DIR") setsid nohup \
bash launch/tpu_worker.sh $(printf %q "$WORKDIR") ~/fixres_venv/bin/python3 -m fixres_jax.main$args \
> run.log 2>&1 < /dev/null &"

run "${tpu[@]}" scp --recurse --zone="$ZONE" --worker=all . "$TPU_NAME":fixres_jax
run "${ssh[@]}" --command="cd ~/fixres_jax && $(install_line tpu)"
run "${ssh[@]}" --command="$start"
echo "Started on every worker of $TPU_NAME; logs: ~/fixres_jax/run.log on each worker." >&2
