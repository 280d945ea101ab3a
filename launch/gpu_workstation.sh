#!/usr/bin/env bash
# Runs fixres_jax on every GPU of this machine, as one process.
#
# Usage: launch/gpu_workstation.sh CONFIG WORKDIR [--dry-run] [--config.FIELD=VALUE ...]
#        launch/gpu_workstation.sh --install
#   e.g. launch/gpu_workstation.sh configs/r50_128.py /data/runs/r50_128 --config.train.batch_size=256
#
# Needs jax with CUDA: `launch/gpu_workstation.sh --install` runs the GPU line of
# fixres_jax/install.txt (README "Install"). TFDS_DATA_DIR should point at the prepared datasets.
# TensorFlow never sees the GPUs. With config.deterministic (the default) main sets
# XLA_FLAGS=--xla_gpu_deterministic_ops=true itself, so a resumed run is bit-identical.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
if [ "${1:-}" = --install ]; then
  line="$(install_line gpu)"
  echo "+ $line"
  exec bash -c "$line"
fi
parse_args "$@"

run env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 TF_CPP_MIN_LOG_LEVEL=2 \
  python -m fixres_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}"
