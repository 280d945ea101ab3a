#!/usr/bin/env bash
# Runs fixres_jax on every GPU of this machine, as one process.
#
# Usage: launch/gpu_workstation.sh CONFIG WORKDIR [--dry-run] [--config.FIELD=VALUE ...]
#   e.g. launch/gpu_workstation.sh configs/r50_128.py /data/runs/r50_128 --config.train.batch_size=256
#
# Needs jax with CUDA (pip install -U "jax[cuda12]") and the requirements.txt packages;
# TFDS_DATA_DIR should point at the prepared datasets. TensorFlow never sees the GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

run env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 TF_CPP_MIN_LOG_LEVEL=2 \
  python -m fixres_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}"
