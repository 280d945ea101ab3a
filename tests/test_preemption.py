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
from fixres_jax import evaluate
from fixres_jax import main
from fixres_jax import preemption
from fixres_jax import stage
from fixres_jax import workdir as workdir_lib


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  batch_stats: dict


def counting_step(state, batch):
  del batch
  return state.replace(step=state.step + 1, params={'w': state.params['w'] + 1.0}), {
      'loss': jnp.float32(1.0)}


def terminating_step(at_step: int):
  """A train step that receives SIGTERM (a real signal, to this process) during `at_step`."""
  def step_fn(state, batch):
    if int(state.step) + 1 == at_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return counting_step(state, batch)
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
                    stage.stage_cadence(config.train, config.checkpoint))
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is given back
  assert manager.all_steps() == sorted({5, 10} & set(range(at_step + 1)) | {at_step})
  restored = checkpoint.restore_state(manager, state)
  np.testing.assert_array_equal(restored.params['w'], np.full(3, float(at_step)))
  manager.close()


@pytest.fixture
def main_handlers():
  """The handlers main installs for the whole run; given back, and the record cleared, after."""
  previous = signal.getsignal(signal.SIGTERM)
  assert preemption.install_handlers()
  yield
  preemption.uninstall_handlers()
  preemption.STOP.clear()
  assert signal.getsignal(signal.SIGTERM) is previous


def test_the_first_signal_decides_the_exit_code():
  request = preemption.StopRequest()
  assert not request.is_set()
  request.record(signal.SIGINT)
  request.record(signal.SIGTERM)
  assert request.is_set() and request.exit_code() == 130
  request.clear()
  request.record(signal.SIGTERM)
  assert request.exit_code() == 143


@pytest.mark.parametrize('sig, code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_recorded_and_stops_at_the_next_check(main_handlers, sig, code):
  preemption.check_stop('nothing')  # no request yet
  os.kill(os.getpid(), sig)  # handled here, between two bytecodes: no exception
  assert preemption.stop_requested()
  with pytest.raises(preemption.Stopped, match=f'signal {int(sig)} before the sweep') as e:
    preemption.check_stop('the sweep')
  assert e.value.exit_code == code


def test_a_second_ctrl_c_stops_at_once(main_handlers):
  os.kill(os.getpid(), signal.SIGINT)
  with pytest.raises(KeyboardInterrupt):
    os.kill(os.getpid(), signal.SIGINT)


def test_main_handlers_outlive_a_stage_and_its_request(tmp_path, main_handlers):
  """A stage's guard neither gives back main's handlers nor forgets a request: the run ends."""
  guard = preemption.PreemptionGuard()
  os.kill(os.getpid(), signal.SIGTERM)
  assert guard.should_stop(1)
  guard.close()
  assert signal.getsignal(signal.SIGTERM) is preemption._record_signal
  assert preemption.STOP.is_set()


def run_tiny_loop(tmp_path, step_fn, evaluate_fn=None, eval_every=0, total_steps=20):
  """stage.run_steps on a 3-number state, checkpointing every 5 steps."""
  config = config_lib.get_base_config()
  config.checkpoint.every_steps = 5
  config.train.log_every_steps = 100
  state = State(step=jnp.int32(0), params={'w': jnp.zeros(3)}, batch_stats={})
  manager = checkpoint.create_manager(tmp_path / 'checkpoints')
  try:
    stage.run_steps('train', tmp_path, state, step_fn, iter(lambda: {}, None), total_steps, 8,
                    lambda step: 0.1, manager,
                    stage.stage_cadence(config.train, config.checkpoint),
                    eval_every=eval_every, evaluate_fn=evaluate_fn)
  finally:
    manager.close()


def test_a_stop_before_a_stage_loop_runs_no_step(tmp_path, main_handlers):
  os.kill(os.getpid(), signal.SIGTERM)
  with pytest.raises(preemption.Stopped, match='before the train steps'):
    run_tiny_loop(tmp_path, pytest.fail)


@pytest.mark.parametrize('eval_every, eval_at', [(3, 3), (0, 20)])  # periodic, final
def test_a_stop_during_an_evaluation_checkpoints_its_step(tmp_path, main_handlers,
                                                          eval_every, eval_at):
  def evaluate_fn(state):  # the signal comes during an evaluation; the next pass sees it
    del state
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate.evaluate(None, {}, iter(pytest.fail, None), None)
  with pytest.raises(preemption.Preempted, match=f'at step {eval_at}'):
    run_tiny_loop(tmp_path, counting_step, evaluate_fn, eval_every, total_steps=20)
  manager = checkpoint.create_manager(tmp_path / 'checkpoints')
  assert manager.latest_step() == eval_at
  manager.close()


def test_a_stop_keeps_every_later_stage_from_starting(monkeypatch, main_handlers, tmp_path):
  """SIGTERM during the train stage's last work: main exits 143, and fine-tuning never starts."""
  config = config_lib.get_base_config()
  config.stages = ('train', 'finetune', 'sweep')
  def train_then_signal(*args):
    del args
    os.kill(os.getpid(), signal.SIGTERM)
    return {}
  monkeypatch.setattr(main.recipe.train, 'train_and_evaluate', train_then_signal)
  monkeypatch.setattr(main.recipe, 'train_data', lambda config, dataset: None)
  monkeypatch.setattr(main.recipe.analysis, 'resolve_test_res', pytest.fail)
  monkeypatch.setattr(main.recipe, 'run', lambda config, workdir: main.recipe.run_stages(
      config, workdir, None, None))
  with pytest.raises(SystemExit) as exited:
    main.run_or_exit(config, str(tmp_path))
  assert exited.value.code == 143


def test_a_stop_during_the_last_stage_still_exits_with_its_code(monkeypatch, main_handlers):
  monkeypatch.setattr(main.recipe, 'run',
                      lambda config, workdir: os.kill(os.getpid(), signal.SIGINT))
  with pytest.raises(SystemExit) as exited:
    main.run_or_exit(config_lib.get_base_config(), 'unused')
  assert exited.value.code == 130


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
