"""The real main as 2 processes (gloo CPU collectives on 127.0.0.1) equals a 1-process run."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fixres_jax import checkpoint

REPO = pathlib.Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main_command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'fixres_jax.main', '--config=tests/tiny_config.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          '--config.data.num_shards=2', "--config.stages=('train',)", *extra]


def environment(devices_per_process):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  return env


def final_train_loss(workdir):
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['loss'] for r in records if r['stage'] == 'train' and 'loss' in r][-1]


def test_two_processes_match_one(tmp_path, synthetic_data_dir):
  one = tmp_path / 'one'
  subprocess.run(main_command(one, synthetic_data_dir), cwd=REPO, env=environment(2),
                 check=True, timeout=600, capture_output=True)

  two = tmp_path / 'two'
  address = f'127.0.0.1:{free_port()}'
  processes = [subprocess.Popen(
      main_command(two, synthetic_data_dir, f'--coordinator_address={address}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, env=environment(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
  outputs = [p.communicate(timeout=600)[0].decode() for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'JAX process 1/2' in outputs[1]

  np.testing.assert_allclose(final_train_loss(two), final_train_loss(one), rtol=1e-4)
  a = checkpoint.load_variables(one / 'checkpoints' / 'train')
  b = checkpoint.load_variables(two / 'checkpoints' / 'train')
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
