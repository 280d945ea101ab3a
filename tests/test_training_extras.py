"""Stochastic depth, the EMA of the weights and progressive resizing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import models
from fixres_jax import stage
from fixres_jax import train
from fixres_jax.models import resnet

NUM_CLASSES = 5
SIZE = 32


def tiny_model(**kwargs):
  return models.create_model('resnet', NUM_CLASSES, stage_sizes=(1, 1, 1), block='basic',
                             num_filters=8, **kwargs)


def random_batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(batch_size, SIZE, SIZE, 3)).astype(np.float32),
          'label': rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32)}


def test_drop_path_drops_whole_images_and_keeps_the_expectation():
  class Branch(nn.Module):
    drop_path: float = 0.25

    @nn.compact
    def __call__(self, y, train):
      return resnet.apply_drop_path(self, y, train)

  y = jnp.ones((4000, 2, 2, 3))
  out = Branch().apply({}, y, True, rngs={'dropout': jax.random.key(0)})
  per_image = np.asarray(out).reshape(4000, -1)
  assert np.all(per_image == per_image[:, :1])  # an image is dropped or kept whole
  kept = per_image[:, 0] != 0
  np.testing.assert_allclose(per_image[kept, 0], 1 / 0.75, rtol=1e-6)
  assert abs(kept.mean() - 0.75) < 0.03  # 3.5 std of a binomial over 4,000 images
  np.testing.assert_array_equal(Branch().apply({}, y, False), y)  # inference: identity


def test_drop_path_rates_follow_timms_linear_rule():
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, resnet.BasicBlock) and context.method_name == '__call__':
      rates.append(context.module.drop_path)
    return next_fun(*args, **kwargs)

  model = tiny_model(drop_path_rate=0.3)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  np.testing.assert_allclose(rates, [0.0, 0.15, 0.3])  # 0.3 * k / (3 - 1)


@pytest.fixture(scope='module')
def variables():
  """The tiny model's variables (stochastic depth adds none), initialised once."""
  return train.init_variables(tiny_model(), SIZE, seed=0)


def test_stochastic_depth_is_random_in_training_only(variables):
  model = tiny_model(drop_path_rate=0.5)
  images = random_batch(8)['image']
  apply = jax.jit(lambda key: model.apply(variables, images, train=True,
                                          mutable=['batch_stats'],
                                          rngs={'dropout': jax.random.key(key)})[0])
  np.testing.assert_array_equal(apply(1), apply(1))
  assert np.abs(apply(1) - apply(2)).max() > 1e-3
  plain = tiny_model()  # same variables: stochastic depth adds none
  run = lambda m, **kw: jax.jit(functools.partial(m.apply, **kw))(variables, images)
  np.testing.assert_array_equal(run(model), run(plain))  # inference is deterministic
  np.testing.assert_array_equal(  # and so is FixRes fine-tuning's mode
      run(model, finetune=True, mutable=['batch_stats'])[0],
      run(plain, finetune=True, mutable=['batch_stats'])[0])


def create_state(model, variables, ema):
  cfg = config_lib.get_base_config().train
  tx = train.create_optimizer(cfg, optax.constant_schedule(0.1), variables['params'])
  return stage.create_train_state(model, variables, tx, ema=ema)


def test_ema_follows_the_weights_and_bn_statistics_with_its_decay(variables):
  model = tiny_model(drop_path_rate=0.2)
  batch = random_batch(16)  # one device: test_steps.py checks the sharding of train_step
  plain_fn = jax.jit(train.train_step)
  ema_fn = jax.jit(functools.partial(train.train_step, ema_decay=0.9))
  state = create_state(model, variables, ema=True)
  plain = create_state(model, variables, ema=False)
  expected = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  for _ in range(3):
    state, _ = ema_fn(state, batch)
    plain, _ = plain_fn(plain, batch)
    current = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
    expected = jax.tree.map(lambda e, c: 0.9 * e + 0.1 * c, expected, current)
  assert plain.ema is None
  for a, b in zip(jax.tree.leaves(jax.device_get(state.ema)), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The EMA rides along: the raw weights are those of a run without it.
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert stage.trained_variables(state) is state.ema


def test_a_train_checkpoint_with_an_ema_hands_on_the_ema(tmp_path, variables):
  state = create_state(tiny_model(), variables, ema=True)
  state = state.replace(ema=jax.tree.map(lambda x: x + 1.0, state.ema))
  manager = checkpoint.create_manager(tmp_path / 'train', async_save=False)
  checkpoint.save_state(manager, 7, state)
  manager.close()
  loaded = checkpoint.load_variables(tmp_path / 'train')
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(jax.device_get(state.ema))):
    np.testing.assert_array_equal(a, b)
  # Resuming restores both the raw weights and the EMA.
  manager = checkpoint.create_manager(tmp_path / 'train')
  restored = checkpoint.restore_latest(manager, create_state(tiny_model(), variables, ema=True))
  manager.close()
  np.testing.assert_array_equal(restored.ema['params']['fc']['bias'],
                                state.ema['params']['fc']['bias'])
  np.testing.assert_array_equal(restored.params['fc']['bias'], state.params['fc']['bias'])


def test_ramp_image_sizes_is_ffcvs_schedule():
  # FFCV rn50 configs: 160 -> 192 between epochs 65 and 76, multiples of 32.
  assert config_lib.ramp_image_sizes(160, 192, 65, 76) == ((0, 160), (71, 192))
  assert config_lib.ramp_image_sizes(128, 224, 2, 8) == (
      (0, 128), (4, 160), (5, 192), (8, 224))  # np.round halves to even, as FFCV


@pytest.mark.parametrize('schedule,message', [
    (((1, 32),), 'start at 0'),
    (((0, 32), (2, 24), (1, 32)), 'start at 0 and increase'),
    (((0, 24), (1, 40)), 'ends at 40 px'),
    (((0, 24.5), (1, 32)), 'positive integers'),
])
def test_bad_image_size_schedules_are_named(schedule, message):
  config = config_lib.get_base_config()
  config.train.image_size = 32
  config.train.image_size_schedule = schedule
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(config, device_count=1)


def test_lamb_with_a_zero_classifier_is_refused_with_the_fix():
  config = config_lib.get_base_config()
  config.train.optimizer = 'lamb'
  config.model.zero_init_head = True
  with pytest.raises(errors.ConfigError, match='zero_init_head=False'):
    config_lib.validate(config, device_count=1)
  config.model.zero_init_head = False
  config_lib.validate(config, device_count=1)
