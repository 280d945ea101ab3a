"""tf.data service on 127.0.0.1: a dispatcher and two workers in another process make the
training batches, the same ones in the same order; evaluation stays local and exact."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from fixres_jax import checkpoint
from fixres_jax.data import pipeline
from fixres_jax.data import service
from fixres_jax import recipe
from transforms import train_at

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope='module')
def dispatcher():
  """`python -m fixres_jax.data.service` with two workers; yields the dispatcher address."""
  port, *worker_ports = service.free_local_ports(3)
  workers = ','.join(f'127.0.0.1:{p}' for p in worker_ports)
  process = subprocess.Popen(
      [sys.executable, '-m', 'fixres_jax.data.service', f'--port={port}',
       f'--workers={workers}'], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  line = ''
  start = time.time()
  while 'server(s) running' not in line:
    line = process.stdout.readline()
    assert line or process.poll() is None, 'the service command exited'
    assert time.time() - start < 120, 'the service did not start'
  assert '3 server(s)' in line  # the dispatcher and both workers
  yield f'127.0.0.1:{port}'
  process.terminate()
  process.wait(timeout=30)


@pytest.mark.parametrize('repeat', [pipeline.NO_REPETITION, pipeline.Repetition(3, 2.0, 4)],
                         ids=['plain', 'repeated_augmentation'])
def test_service_batches_equal_local_ones_and_resume(dispatcher, tiny_dataset, repeat):
  steps = pipeline.steps_per_epoch(tiny_dataset, 'train', 32, 2, repeat)
  # Two data shards per process: both go through the service.
  read = pipeline.ReadOptions(shuffle_buffer=64, num_shards=2)
  kwargs = dict(split='train', global_batch=32, seed=5, transform=train_at(32), repeat=repeat)
  for start in (0, steps - 2):  # from scratch, and resumed across an epoch boundary
    local = pipeline.train_batches(tiny_dataset, start_step=start, read=read, **kwargs)
    remote = pipeline.train_batches(
        tiny_dataset, start_step=start,
        read=dataclasses.replace(read, service=dispatcher), **kwargs)
    for _ in range(steps + 2):
      expected, got = next(local), next(remote)
      assert set(got) == {'image', 'label'}
      np.testing.assert_array_equal(got['label'], expected['label'])
      np.testing.assert_array_equal(got['image'], expected['image'])


def test_training_through_the_service_equals_local_training(dispatcher, tiny_config,
                                                            tmp_path):
  tiny_config.stages = ('train', 'sweep')
  local_dir, remote_dir = tmp_path / 'local', tmp_path / 'remote'
  recipe.run(tiny_config, str(local_dir))
  tiny_config.data.service = dispatcher
  recipe.run(tiny_config, str(remote_dir))
  local = checkpoint.load_variables(local_dir / 'checkpoints' / 'train')
  remote = checkpoint.load_variables(remote_dir / 'checkpoints' / 'train')
  for a, b in zip(*(jax_leaves(v) for v in (local, remote))):
    np.testing.assert_array_equal(a, b)
  # Evaluation reads the validation split locally: the same records, every image once.
  records = [json.loads((d / 'sweep.json').read_text()) for d in (local_dir, remote_dir)]
  assert records[0] == records[1]
  assert all(r['num_images'] == 100 for r in records[1])


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_batches_are_put_back_in_step_order_and_lost_ones_named():
  arrivals = [{'step': s, 'x': s} for s in (4, 3, 6, 5)]
  assert [b['x'] for b in service.in_step_order(iter(arrivals), 3, 4)] == [3, 4, 5, 6]
  ordered = service.in_step_order(iter([{'step': 3, 'x': 0}, {'step': 5, 'x': 1}]), 3, 3)
  assert next(ordered) == {'x': 0}
  with pytest.raises(RuntimeError, match='a worker was lost'):
    next(ordered)
