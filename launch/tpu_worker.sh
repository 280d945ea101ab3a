#!/usr/bin/env bash
# On each TPU worker, started by launch/tpu_pod.sh with its output in ~/fixres_jax/run.log:
# runs COMMAND, then copies run.log to WORKDIR/logs/HOSTNAME.log and exits with COMMAND's status.
#
# Usage: launch/tpu_worker.sh WORKDIR COMMAND [ARG ...]
workdir="$1"
shift
"$@"
status=$?
log="$workdir/logs/$(hostname).log"
case "$workdir" in
  gs://*) gcloud storage cp run.log "$log" ;;
  *) mkdir -p "$workdir/logs" && cp run.log "$log" ;;
esac
exit "$status"
