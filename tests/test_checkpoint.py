"""Checkpoints restore across device counts; variables load from any stage directory; a
damaged newest step is set aside and the newest readable one restored."""

import time

import flax
import jax
import numpy as np
import optax
import pytest

from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import stage
from fixres_jax import train


def create_state():
  model = models.create_model('resnet', 4, stage_sizes=(1,), num_filters=4)
  variables = train.init_variables(model, 16, seed=0)
  return stage.create_train_state(model, variables, optax.sgd(0.1, momentum=0.9))


def mesh_of(num_devices):
  return jax.make_mesh((num_devices,), ('data',), devices=jax.devices()[:num_devices])


def assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restores_on_another_number_of_devices(tmp_path):
  for saved_on, restored_on in ((8, 1), (1, 8)):
    directory = tmp_path / f'{saved_on}_to_{restored_on}'
    state = create_state()
    state = state.replace(step=state.step + 7)
    manager = checkpoint.create_manager(directory)
    checkpoint.save_state(manager, 7, parallel.replicate(state, mesh_of(saved_on)))
    manager.wait_until_finished()
    manager.close()

    target = parallel.replicate(create_state(), mesh_of(restored_on))
    manager = checkpoint.create_manager(directory)
    restored = checkpoint.restore_latest(manager, target)
    assert int(restored.step) == 7
    assert restored.params['fc']['kernel'].sharding.mesh.size == restored_on
    assert_same(restored.params, state.params)
    assert_same(restored.opt_state, state.opt_state)
    assert_same(checkpoint.load_variables(directory),
                {'params': state.params, 'batch_stats': state.batch_stats})


def test_variables_directory_round_trip(tmp_path):
  state = create_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  checkpoint.save_variables(tmp_path / 'converted', variables)
  assert_same(checkpoint.load_variables(tmp_path / 'converted'), variables)


def test_restore_latest_without_checkpoint_keeps_the_state(tmp_path):
  state = create_state()
  assert checkpoint.restore_latest(checkpoint.create_manager(tmp_path), state) is state


@flax.struct.dataclass
class TinyState:  # a dataclass, as stage.TrainState is: restoring it needs the saved metadata
  step: jax.Array
  params: dict


def tiny_state(step, extra=False):
  """Step `step`'s state: random (incompressible) weights, so they lie in an array file."""
  params = {'w': np.random.default_rng(step).standard_normal(4096).astype(np.float32)}
  if extra:  # another model
    params['b'] = np.zeros(2, np.float32)
  return TinyState(step=np.asarray(step, np.int32), params=params)


def save_steps(directory, steps):
  """Saves tiny_state(step) at each of `steps`."""
  manager = checkpoint.create_manager(directory, async_save=False)
  for step in steps:
    checkpoint.save_state(manager, step, tiny_state(step))
  manager.close()


def truncate_largest_array_file(step_dir):
  data = [p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd']
  largest = max(data, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:10])


def delete_metadata(step_dir):
  (step_dir / 'default' / '_METADATA').unlink()


def garble_metadata(step_dir):
  (step_dir / 'default' / '_METADATA').write_text('{"tree_metadata": {garbage')


DAMAGE = [truncate_largest_array_file, delete_metadata, garble_metadata]

# When one array of a step fails to read, orbax drops its other reads' coroutines unawaited.
orbax_drops_reads = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


def restore_latest(directory, state=None):
  manager = checkpoint.create_manager(directory)
  try:
    return checkpoint.restore_latest(manager, tiny_state(0) if state is None else state), (
        manager.all_steps())
  finally:
    manager.close()


@orbax_drops_reads
@pytest.mark.parametrize('damage', DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_newest_step_is_set_aside_and_the_previous_one_restored(tmp_path, damage):
  save_steps(tmp_path, [1, 2])
  damage(tmp_path / '2')
  restored, steps_left = restore_latest(tmp_path)
  assert_same(restored, tiny_state(1))
  assert steps_left == [1]  # what the next save and the next run see
  assert not (tmp_path / '2').exists()
  assert (tmp_path / 'damaged' / '2' / 'default').is_dir()  # kept, not deleted
  assert 'Error' in (tmp_path / 'damaged' / '2.reason.txt').read_text()


def test_a_step_damaged_twice_is_kept_twice(tmp_path):
  save_steps(tmp_path, [1, 2])
  delete_metadata(tmp_path / '2')
  restore_latest(tmp_path)
  save_steps(tmp_path, [2])
  garble_metadata(tmp_path / '2')
  assert_same(restore_latest(tmp_path)[0], tiny_state(1))
  assert sorted(p.name for p in (tmp_path / 'damaged').iterdir()) == [
      '2', '2.2', '2.2.reason.txt', '2.reason.txt']


@orbax_drops_reads
def test_no_readable_step_is_one_error_naming_the_directory(tmp_path):
  save_steps(tmp_path, [1, 2])
  truncate_largest_array_file(tmp_path / '1')
  garble_metadata(tmp_path / '2')
  with pytest.raises(errors.CheckpointError, match=f'No checkpoint in {tmp_path} can be read'):
    restore_latest(tmp_path)
  assert (tmp_path / '1').exists() and (tmp_path / '2').exists()  # nothing moved


def test_a_readable_step_that_does_not_fit_is_an_error_not_damage(tmp_path):
  save_steps(tmp_path, [1, 2])
  with pytest.raises(ValueError) as raised:
    restore_latest(tmp_path, tiny_state(0, extra=True))
  assert not isinstance(raised.value, errors.CheckpointError)
  assert not (tmp_path / 'damaged').exists()


def test_load_variables_names_a_damaged_step(tmp_path):
  save_steps(tmp_path, [1, 2])
  delete_metadata(tmp_path / '2')
  with pytest.raises(errors.CheckpointError, match=f'Step 2 of {tmp_path} cannot be read'):
    checkpoint.load_variables(tmp_path)


def run_loop_saving_every_5(workdir, step_fn, total_steps=20):
  """stage.run_steps on create_state(), checkpointing every 5 steps into workdir/train."""
  state = parallel.replicate(create_state(), mesh_of(1))
  manager = checkpoint.create_manager(workdir / 'train', max_to_keep=2)
  try:
    stage.run_steps('train', workdir, state, step_fn, iter(lambda: {}, None), total_steps, 8,
                    lambda step: 0.1, manager, stage.Cadence(100, 5, max_to_keep=2))
  finally:
    manager.close()


def counting_step(state, batch):
  del batch
  return state.replace(step=state.step + 1), {'loss': jax.numpy.float32(1.0)}


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 1 MiB tmpfs (root only: skipped where mount is refused)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  mount_point = tmp_path / 'tmpfs'
  mount_point.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mount_point)],
                           capture_output=True, check=False).returncode == 0
  if not mounted:
    pytest.skip('cannot mount a tmpfs here (not root)')
  yield mount_point
  subprocess.run(['umount', '-l', str(mount_point)], check=True)


def test_a_disk_that_fills_up_mid_run_is_one_clear_error(small_tmpfs):
  """The disk fills after the step-5 checkpoint: the step-10 save fails; step 5 stays intact."""
  def step_then_fill(state, batch):
    if int(state.step) == 7:  # once step 5 is committed (saves are asynchronous), fill the rest
      deadline = time.monotonic() + 60
      while not (small_tmpfs / 'train' / '5').exists() and time.monotonic() < deadline:
        time.sleep(0.05)
      with open(small_tmpfs / 'filler', 'wb') as f:
        try:
          while True:
            f.write(b'\0' * 4096)
            f.flush()
        except OSError:
          pass
    return counting_step(state, batch)
  with pytest.raises(errors.OutOfSpaceError) as raised:
    run_loop_saving_every_5(small_tmpfs, step_then_fill)
  message = errors.message(raised.value)
  assert f'No space left in {small_tmpfs / "train"} while writing a checkpoint' in message
  assert 'KiB' in message and 'free there now' in message and 're-run' in message, message
  (small_tmpfs / 'filler').unlink()
  manager = checkpoint.create_manager(small_tmpfs / 'train')
  assert manager.all_steps() == [5]
  assert int(checkpoint.restore_latest(manager, parallel.replicate(create_state(), mesh_of(1))
                                       ).step) == 5
  manager.close()


def test_a_full_disk_is_recognised_however_it_is_wrapped(tmp_path, monkeypatch):
  """The same error where a writer (orbax, tensorstore) reports ENOSPC in its own words."""
  import errno  # pylint: disable=g-import-not-at-top
  def full_disk(manager, step, state, force=False):
    del manager, state, force
    if step == 10:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file: '
                       'No space left on device') from OSError(errno.ENOSPC, 'No space left')
    return True
  monkeypatch.setattr(checkpoint, 'save_state', full_disk)
  with pytest.raises(errors.OutOfSpaceError, match='No space left in .*train while writing'):
    run_loop_saving_every_5(tmp_path, counting_step)
  assert checkpoint.is_out_of_space(OSError(errno.ENOSPC, 'full'))
  assert not checkpoint.is_out_of_space(OSError(errno.EACCES, 'denied'))


@pytest.mark.parametrize('count, text', [(0, '0 B'), (1023, '1023 B'), (1536, '1.5 KiB'),
                                         (3 * 2**30, '3.0 GiB'), (2**62, '4096.0 PiB')])
def test_sizes_are_written_in_readable_units(count, text):
  assert checkpoint.format_bytes(count) == text


def test_the_start_check_counts_everything_a_run_writes(monkeypatch):
  from fixres_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fixres_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  config = config_lib.get_base_config()
  config.finetune.mode, config.finetune.augment = 'cached', 'flip'
  config.finetune.cache_in_memory_mb = 0  # the features go to WORKDIR/feature_cache
  config.sweep.resolutions = (128, 160)
  model = models.create_model('resnet50', 1000)
  parts = workdir_lib.estimate_run_bytes(config, model, num_train_examples=1000)
  assert parts['feature cache'] == 1000 * (2 * 2048 * 2 + 4)  # 2 views, 2048 bfloat16 features
  assert parts['compiled programs'] == 5 * workdir_lib.COMPILED_PROGRAM_BYTES
  # ResNet-50's variables, their momentum, (max_to_keep + 1) steps, two stages.
  assert 25e6 * 4 * 2 * 3 * 2 < parts['checkpoints'] < 26e6 * 4 * 2 * 3 * 2
  assert set(parts) == {'checkpoints', 'feature cache', 'compiled programs',
                        'metrics and outputs'}
  config.finetune.cache_dir = '/local/disk'  # elsewhere: not the workdir's space
  assert 'feature cache' not in workdir_lib.estimate_run_bytes(config, model, 1000)
