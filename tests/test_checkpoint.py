"""Checkpoints restore across device counts; variables load from any stage directory; a
damaged newest step is set aside and the newest readable one restored."""

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
