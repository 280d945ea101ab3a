"""The jitted steps: train_step sharding, finetune_step freezing, exact masked eval."""

import functools
import os
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fixres_jax import config as config_lib
from fixres_jax import evaluate
from fixres_jax import finetune
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import parametric
from fixres_jax import stage
from fixres_jax import train

NUM_CLASSES = 5
SIZE = 32


def tiny_model():
  return models.create_model('resnet', NUM_CLASSES, stage_sizes=(1, 1), block='basic',
                             num_filters=8)


def random_batch(batch_size, seed=0, mask=None):
  rng = np.random.default_rng(seed)
  batch = {'image': rng.normal(size=(batch_size, SIZE, SIZE, 3)).astype(np.float32),
           'label': rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32)}
  if mask is not None:
    batch['mask'] = np.asarray(mask, np.float32)
  return batch


def create_state(model):
  variables = train.init_variables(model, SIZE, seed=0)
  cfg = config_lib.get_base_config().train
  tx = train.create_optimizer(cfg, optax.constant_schedule(0.1), variables['params'])
  return stage.create_train_state(model, variables, tx)


def run_train_steps(state, batch, mesh, steps=2):
  state = parallel.replicate(state, mesh)
  step_fn = jax.jit(train.train_step)
  global_batch = parallel.make_global_batch(batch, mesh)
  for _ in range(steps):
    state, metrics = step_fn(state, global_batch)
  return jax.device_get(state), jax.device_get(metrics)


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8, 'tests/conftest.py must give 8 fake CPU devices'
  state = create_state(tiny_model())
  batch = random_batch(16)
  one = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  eight = parallel.create_mesh()
  state1, metrics1 = run_train_steps(state, batch, one)
  state8, metrics8 = run_train_steps(state, batch, eight)
  np.testing.assert_allclose(metrics1['loss'], metrics8['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  # BN statistics are synchronised over the global batch, so they moved identically.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state.batch_stats, state8.batch_stats)
  assert max(jax.tree.leaves(moved)) > 0


def test_train_step_reduces_loss():
  state = parallel.replicate(create_state(tiny_model()), parallel.create_mesh())
  batch = parallel.make_global_batch(random_batch(16), parallel.create_mesh())
  step_fn = jax.jit(train.train_step)
  losses = []
  for _ in range(10):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0]


@pytest.mark.parametrize('train_bn_affine', [False, True])
def test_finetune_step_changes_only_head_and_last_bn_statistics(train_bn_affine):
  model = tiny_model()
  variables = train.init_variables(model, SIZE, seed=0)
  cfg = config_lib.get_base_config().finetune
  cfg.base_lr = 1.0
  names = models.finetuned_names(model, train_bn_affine)
  state = finetune.create_finetune_state(model, variables, cfg, optax.constant_schedule(0.5),
                                         names)
  mesh = parallel.create_mesh()
  step_fn = jax.jit(functools.partial(finetune.finetune_step, trainable=names,
                                      last_bn_path=model.last_bn_path))
  new_state, _ = step_fn(parallel.replicate(state, mesh),
                         parallel.make_global_batch(random_batch(16), mesh))
  new_state = jax.device_get(new_state)

  block, bn = model.last_bn_path
  changed_params = {k for k, v in traverse_util.flatten_dict(state.params, sep='/').items()
                    if not np.array_equal(v, traverse_util.flatten_dict(
                        new_state.params, sep='/')[k])}
  expected = {'fc/kernel', 'fc/bias'}
  if train_bn_affine:
    expected |= {f'{block}/{bn}/scale', f'{block}/{bn}/bias'}
  assert changed_params == expected
  old_stats = traverse_util.flatten_dict(state.batch_stats, sep='/')
  new_stats = traverse_util.flatten_dict(new_state.batch_stats, sep='/')
  changed_stats = {k for k in old_stats if not np.array_equal(old_stats[k], new_stats[k])}
  assert changed_stats == {f'{block}/{bn}/mean', f'{block}/{bn}/var'}


def test_finetune_last_bn_uses_batch_statistics():
  """In finetune mode the last BN normalises with the batch's statistics."""
  model = tiny_model()
  variables = train.init_variables(model, SIZE, seed=0)
  block, bn = model.last_bn_path
  # Absurd running statistics in the last BN change inference, not finetune-mode outputs.
  poisoned = jax.tree.map(lambda x: x, variables)
  poisoned['batch_stats'][block][bn] = {
      'mean': variables['batch_stats'][block][bn]['mean'] + 100.0,
      'var': variables['batch_stats'][block][bn]['var'] * 100.0}
  x = random_batch(8)['image']
  finetune_out = jax.jit(lambda v: model.apply(v, x, finetune=True, mutable=['batch_stats'])[0])
  np.testing.assert_allclose(finetune_out(variables), finetune_out(poisoned), rtol=1e-5,
                             atol=1e-5)
  inference_out = jax.jit(lambda v: model.apply(v, x))
  assert not np.allclose(inference_out(variables), inference_out(poisoned))


def test_eval_step_counts_only_masked_images():
  model = tiny_model()
  variables = train.init_variables(model, SIZE, seed=0)
  mask = [1.0] * 5 + [0.0] * 3
  step = jax.jit(functools.partial(evaluate.eval_step, model))
  sums = step(variables, random_batch(8, mask=mask))['plain']
  assert float(sums['count']) == 5.0
  full = step(variables, {k: v[:5] for k, v in random_batch(8, mask=mask).items()})['plain']
  for key in ('correct1', 'correct5', 'loss', 'zero_fraction', 'feature_sum', 'histogram'):
    np.testing.assert_allclose(sums[key], full[key], rtol=1e-5)


# Compares init_variables with the default compilation in a process of its own: the tests'
# XLA flags (xla_flags.py) turn LLVM's optimisation off for both.
SAME_INIT = """
import functools, jax, jax.numpy as jnp, numpy as np
from fixres_jax import models, train
model = models.create_model('resnet', 10, stage_sizes=(1, 1, 1, 1), block='basic',
                            num_filters=16)
default = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(3), jnp.zeros((1, 48, 48, 3)))
jax.tree.map(np.testing.assert_array_equal, train.init_variables(model, 48, seed=3),
             dict(default))
print('same values')
"""


@pytest.mark.slow  # two optimised compilations of the demo's network, in a subprocess
def test_the_fast_compiled_initialisation_draws_the_same_values():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, '-c', SAME_INIT], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0 and 'same values' in result.stdout, result.stderr[-3000:]


def test_models_that_differ_in_the_last_bn_and_head_share_one_forward_pass():
  model = tiny_model()
  mesh = parallel.create_mesh()
  trained = train.init_variables(model, SIZE, seed=0)
  # FixRes fine-tuning's result: new last-BN statistics and classifier, the rest an equal
  # copy (as a checkpoint restores it), not the same arrays.
  finetuned = jax.tree.map(np.array, trained)
  bn = models.contract.get_at(trained['batch_stats'], model.last_bn_path)
  finetuned['batch_stats'] = models.contract.set_at(
      finetuned['batch_stats'], model.last_bn_path,
      {'mean': bn['mean'] + 0.5, 'var': bn['var'] * 2})
  finetuned['params'][model.HEAD] = jax.tree.map(lambda w: w + 0.1,
                                                 trained['params'][model.HEAD])
  entries = {'trained': (parallel.replicate(trained, mesh), parametric.IDENTITY),
             'finetuned': (parallel.replicate(finetuned, mesh), None)}
  shared, own = evaluate.split_variables(entries)
  differing = {('batch_stats', *model.last_bn_path, 'mean'),
               ('batch_stats', *model.last_bn_path, 'var'),
               ('params', model.HEAD, 'kernel'), ('params', model.HEAD, 'bias')}
  assert [set(variables) for variables, _ in own] == [differing, differing]
  assert set(shared) | differing == set(traverse_util.flatten_dict(trained))

  step = evaluate.jit_eval_step(model)
  batches = [random_batch(8, seed=s, mask=[1.0] * 8) for s in range(2)]
  together = evaluate.evaluate(step, entries, batches, mesh)
  for name, entry in entries.items():
    alone = evaluate.evaluate(step, {name: entry}, batches, mesh)[name]
    jax.tree.map(np.testing.assert_array_equal, together[name], alone)
  # One program holds the trunk once: as many convolutions as one model has.
  def convolutions(entries):
    args = (*evaluate.split_variables(entries), parallel.make_global_batch(batches[0], mesh))
    return step.lower(*args).compile().as_text().count(' convolution(')
  assert convolutions(entries) == convolutions({'trained': entries['trained']}) > 0


def test_weight_decay_mask_excludes_patterns():
  params = jax.eval_shape(tiny_model().init, jax.random.key(0),
                          jnp.zeros((1, SIZE, SIZE, 3)))['params']  # the tree, no values
  mask = traverse_util.flatten_dict(
      train.weight_decay_mask(params, (r'bn\d*/', r'downsample_bn/', r'bias$')), sep='/')
  assert mask['conv1/kernel'] and mask['fc/kernel']
  assert not mask['bn1/scale'] and not mask['fc/bias']
  assert not mask['layer2_0/downsample_bn/scale']


def test_learning_rate_schedule_scales_and_warms_up():
  cfg = config_lib.get_base_config().train
  cfg.base_lr, cfg.warmup_epochs, cfg.schedule = 0.1, 1, 'cosine'
  cfg.num_epochs = 10
  lr = train.create_schedule_per_256(cfg, steps_per_epoch=100, global_batch=512)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(100)), 0.2, rtol=1e-6)  # 0.1 * 512 / 256
  assert float(lr(999)) < 1e-3


def test_logged_metrics_are_the_mean_since_the_last_log():
  window = stage.MetricWindow()
  for loss in (3.0, 1.0, 2.0):
    window.add({'loss': jnp.float32(loss), 'top1': jnp.float32(loss / 10)})
  assert window.mean() == pytest.approx({'loss': 2.0, 'top1': 0.2})
