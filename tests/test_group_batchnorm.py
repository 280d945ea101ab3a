"""BatchNorm statistics over groups of the batch (per-GPU BN of PyTorch DDP) under jax.jit."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixres_jax import models
from fixres_jax.models import resnet


def numpy_group_batchnorm(x, group_size, scale, bias, mean, var, momentum=0.9, eps=1e-5):
  """Each group of images normalised by its own statistics; running statistics updated with
  the mean over groups of the group means and (biased) variances."""
  groups = x.reshape((-1, group_size) + x.shape[1:]).astype(np.float64)
  axes = tuple(range(1, groups.ndim - 1))
  g_mean = groups.mean(axes, keepdims=True)
  g_var = groups.var(axes, keepdims=True)
  y = ((groups - g_mean) / np.sqrt(g_var + eps)).reshape(x.shape) * scale + bias
  flat = lambda v: v.reshape(-1, x.shape[-1]).mean(0)
  return (y, momentum * mean + (1 - momentum) * flat(g_mean),
          momentum * var + (1 - momentum) * flat(g_var))


def make_inputs(batch=16, seed=0):
  rng = np.random.default_rng(seed)
  # Groups with different offsets: group statistics differ from the batch's.
  x = rng.normal(size=(batch, 5, 5, 6)) + np.repeat(rng.normal(size=(batch // 4, 1, 1, 6)) * 3, 4, 0)
  variables = {'params': {'scale': rng.uniform(0.5, 2, 6), 'bias': rng.normal(size=6)},
               'batch_stats': {'mean': rng.normal(size=6), 'var': rng.uniform(0.5, 2, 6)}}
  return x.astype(np.float32), jax.tree.map(lambda v: np.asarray(v, np.float32), variables)


@pytest.mark.parametrize('group_size', [2, 4, 16])
def test_group_statistics_match_numpy(group_size):
  x, variables = make_inputs()
  module = resnet.GroupBatchNorm(group_size)
  y, updates = jax.jit(lambda v, x: module.apply(v, x, mutable=['batch_stats']))(variables, x)
  expected, mean, var = numpy_group_batchnorm(x, group_size, **variables['params'],
                                              **variables['batch_stats'])
  np.testing.assert_allclose(y, expected, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['mean'], mean, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], var, atol=1e-5)
  # Inference uses the running statistics.
  y = resnet.GroupBatchNorm(group_size, use_running_average=True).apply(variables, x)
  stats = variables['batch_stats']
  np.testing.assert_allclose(y, (x - stats['mean']) / np.sqrt(stats['var'] + 1e-5)
                             * variables['params']['scale'] + variables['params']['bias'],
                             atol=1e-4)


def test_one_group_is_flax_batchnorm():
  x, variables = make_inputs()
  ours = resnet.GroupBatchNorm(16).apply(variables, x, mutable=['batch_stats'])
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  theirs = flax_bn.apply(variables, x, mutable=['batch_stats'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), ours, theirs)


def test_group_size_must_divide_the_batch():
  x, variables = make_inputs()
  with pytest.raises(ValueError, match='multiple of the group size'):
    resnet.GroupBatchNorm(5).apply(variables, x, mutable=['batch_stats'])


def train_outputs(model, variables, images, mesh):
  """Logits and updated statistics of a jitted train-mode call on a batch sharded on mesh."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  images = jax.device_put(images, sharding)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  return jax.device_get(apply(variables, images))


def test_resnet_groups_equal_on_1_and_8_devices():
  model = models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8,
                              bn_group_size=4)
  images = jax.random.normal(jax.random.key(0), (32, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images[:1])
  outputs = [train_outputs(model, variables, images,
                           jax.make_mesh((n,), ('data',), devices=jax.devices()[:n]))
             for n in (1, 8)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), *outputs)
  # Groups are not the whole batch: the logits differ from synchronised BN's.
  whole = models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8)
  logits = train_outputs(whole, variables, images, jax.make_mesh((8,), ('data',)))[0]
  assert np.abs(logits - outputs[0][0]).max() > 1e-3
  # Groups of 4 images: permuting images inside a group changes nothing, across groups does.
  order = np.arange(32).reshape(8, 4)[:, ::-1].reshape(-1)
  within = train_outputs(model, variables, images[order], jax.make_mesh((8,), ('data',)))[0]
  np.testing.assert_allclose(within, outputs[0][0][order], atol=1e-5)


def test_variables_are_those_of_flax_batchnorm():
  shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(m.init, jax.random.key(0),
                                                             jnp.zeros((1, 32, 32, 3))))
  grouped = models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8, bn_group_size=4)
  plain = models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8)
  assert flax.traverse_util.flatten_dict(shapes(grouped)) == flax.traverse_util.flatten_dict(
      shapes(plain))
