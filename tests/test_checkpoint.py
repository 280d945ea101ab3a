"""Checkpoints restore across device counts; variables load from any stage directory."""

import jax
import numpy as np
import optax

from fixres_jax import checkpoint
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
