#!/usr/bin/env bash
# Refreshes requirements.lock, the exact versions that README and .ci/run install, from the
# human-readable requirements.txt, requirements-torch.txt and requirements-test.txt, for Python
# 3.11 on linux x86_64 (pyproject.toml's lists are the same entries: tests/test_lock.py).
# Versions already in the lock are kept (uv prefers them); pass --upgrade to move everything
# to the newest allowed versions, or --upgrade-package NAME for one package.
#
#   bash tools/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q uv==0.13.9
python -m uv pip compile requirements.txt requirements-torch.txt requirements-test.txt \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command 'bash tools/lock.sh' --output-file requirements.lock "$@"
