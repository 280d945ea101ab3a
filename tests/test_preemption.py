"""Preemption, cluster detection and the workdir lock, within this process."""

import errno
import fcntl
import os
import signal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixres_jax import checkpoint
from fixres_jax import cluster
from fixres_jax import config as config_lib
from fixres_jax import preemption
from fixres_jax import stage
from fixres_jax import workdir as workdir_lib


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  batch_stats: dict


def terminating_step(at_step: int):
  """A train step that receives SIGTERM (a real signal, to this process) during `at_step`."""
  def step_fn(state, batch):
    del batch
    if int(state.step) + 1 == at_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return state.replace(step=state.step + 1, params={'w': state.params['w'] + 1.0}), {
        'loss': jnp.float32(1.0)}
  return step_fn


@pytest.mark.parametrize('at_step', [10, 7])  # a checkpoint step, and one between two
def test_sigterm_saves_its_step_once_and_raises_preempted(tmp_path, at_step):
  config = config_lib.get_base_config()
  config.checkpoint.every_steps = 5
  config.train.log_every_steps = 100
  state = State(step=jnp.int32(0), params={'w': jnp.zeros(3)}, batch_stats={})
  manager = checkpoint.create_manager(tmp_path / 'checkpoints')
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Preempted, match=f'at step {at_step}'):
    stage.run_steps('train', tmp_path, state, terminating_step(at_step),
                    iter(lambda: {}, None), 100, 8, lambda step: 0.1, manager,
                    stage.stage_cadence(config, 'train'))
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is given back
  assert manager.all_steps() == sorted({5, 10} & set(range(at_step + 1)) | {at_step})
  restored = checkpoint.restore_state(manager, state)
  np.testing.assert_array_equal(restored.params['w'], np.full(3, float(at_step)))
  manager.close()


def test_no_cluster_and_no_flags_initialise_nothing(monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(jax.distributed, 'initialize', pytest.fail)
  cluster.initialize()


def slurm_variables(monkeypatch, num_tasks):
  for name, value in {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': str(num_tasks), 'SLURM_PROCID': '0',
                      'SLURM_LOCALID': '0', 'SLURM_STEP_NODELIST': 'node[01-02]'}.items():
    monkeypatch.setenv(name, value)


def test_jax_detects_slurm_and_a_single_task_needs_nothing(monkeypatch):
  slurm_variables(monkeypatch, 1)
  assert cluster.detect_cluster().__name__ == 'SlurmCluster'
  monkeypatch.setattr(jax.distributed, 'initialize', pytest.fail)
  cluster.initialize()


def test_a_detected_cluster_uses_jax_auto_detection_and_flags_win(monkeypatch):
  slurm_variables(monkeypatch, 2)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  cluster.initialize()
  cluster.initialize('10.0.0.1:1234', 4, 3)
  assert calls == [{}, {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                        'process_id': 3}]


def test_a_coordinator_without_a_cluster_needs_the_process_flags(monkeypatch):
  monkeypatch.delenv('JAX_NUM_PROCESSES', raising=False)
  monkeypatch.delenv('JAX_PROCESS_ID', raising=False)
  monkeypatch.setattr(cluster, 'detect_cluster', lambda: None)
  with pytest.raises(ValueError, match='--num_processes and --process_id'):
    cluster.initialize('10.0.0.1:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    cluster.initialize('10.0.0.1:1234')


@pytest.mark.parametrize('code', [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_lock_warns_and_continues_without_flock(tmp_path, monkeypatch, code):
  def no_flock(file, operation):
    del file, operation
    raise OSError(code, os.strerror(code))
  monkeypatch.setattr(fcntl, 'flock', no_flock)
  warnings = []
  monkeypatch.setattr(workdir_lib.logging, 'warning', lambda *a: warnings.append(a[0] % a[1:]))
  with workdir_lib.WorkdirLock(tmp_path) as lock:
    assert lock.file is None
  assert len(warnings) == 1 and 'does not support flock' in warnings[0]


def test_compilation_cache_defaults_to_the_workdir(tmp_path, monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  before = jax.config.jax_compilation_cache_dir
  try:
    workdir_lib.enable_compilation_cache(tmp_path)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'compilation_cache')
    jax.config.update('jax_compilation_cache_dir', before)
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/shared/cache')  # jax's own setting wins
    workdir_lib.enable_compilation_cache(tmp_path)
    assert jax.config.jax_compilation_cache_dir == before
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
