"""ResNet family: sizes, dtypes, initialisation and BatchNorm modes."""

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixres_jax import models

# sum(p.numel() for p in torchvision.models.<name>().parameters()), torchvision 0.29.1; the
# resnext101_32x{16,32,48}d rows are torchvision.models.ResNet(Bottleneck, [3, 4, 23, 3],
# groups=32, width_per_group=16/32/48), the WSL hub models.
TORCHVISION_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
    'resnext50_32x4d': 25_028_904,
    'resnext101_32x8d': 88_791_336,
    'resnext101_32x16d': 194_026_792,
    'resnext101_32x32d': 468_530_472,
    'resnext101_32x48d': 828_411_176,
    'wide_resnet50_2': 68_883_240,
    'wide_resnet101_2': 126_886_696,
}


def init_shapes(model, size=64):
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def create_small_model(**kwargs):
  return models.create_model('resnet', 10, stage_sizes=(1, 2), block='bottleneck',
                             num_filters=8, **kwargs)


@pytest.fixture(scope='module')
def small_variables():
  """Variables of create_small_model (the same for every dtype), initialised once (jitted:
  eagerly, every operation of the initialisers would be compiled on its own)."""
  return jax.jit(create_small_model().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_registry_covers_torchvision_family():
  assert set(models.ARCH_NAMES) == set(TORCHVISION_PARAMS) | {'resnet'}


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvision(name):
  variables = init_shapes(models.create_model(name, 1000))  # Shapes only: no allocation.
  num_params = sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params']))
  assert num_params == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize('name,path', [('resnet18', ('layer4_1', 'bn2')),
                                       ('resnet50', ('layer4_2', 'bn3')),
                                       ('resnext101_32x8d', ('layer4_2', 'bn3'))])
def test_last_bn_path_is_the_last_batchnorm(name, path):
  model = models.create_model(name, 10)
  assert model.last_bn_path == path
  stats = flax.traverse_util.flatten_dict(init_shapes(model)['batch_stats'])
  # Flax creates variables in call order, so the last BN's statistics come last.
  assert list(stats)[-1][:2] == path


def test_bfloat16_computes_in_bfloat16_with_float32_parameters(small_variables):
  model32 = create_small_model()
  model16 = create_small_model(dtype='bfloat16')
  dtypes = {x.dtype for x in jax.tree.leaves(init_shapes(model16, size=32))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = small_variables
  apply16 = jax.jit(lambda v, x: model16.apply(v, x, return_features=True,
                                                capture_intermediates=True))
  (logits, features), state = apply16(variables, images)
  assert logits.dtype == features.dtype == jnp.float32
  assert state['intermediates']['fc']['__call__'][0].dtype == jnp.bfloat16
  expected = jax.jit(model32.apply)(variables, images)
  np.testing.assert_allclose(logits, expected, atol=0.05 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize('block,last_bn', [('basic', 'bn2'), ('bottleneck', 'bn3')])
@pytest.mark.parametrize('zero_init_residual', [False, True])
def test_zero_init_residual_zeroes_the_last_bn_of_each_block(block, last_bn,
                                                             zero_init_residual):
  model = models.create_model('resnet', 10, stage_sizes=(2, 1), block=block, num_filters=8,
                              zero_init_residual=zero_init_residual)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  scales = {path[:-1]: value for path, value in flax.traverse_util.flatten_dict(params).items()
            if path[-1] == 'scale'}
  for path, scale in scales.items():
    zeroed = zero_init_residual and path[-1] == last_bn
    np.testing.assert_array_equal(scale, 0.0 if zeroed else 1.0, err_msg=str(path))
  assert sum(path[-1] == last_bn for path in scales) == 3  # One per block.


@pytest.mark.parametrize('mode,updated', [('train', 'all'), ('finetune', 'last'),
                                          ('inference', 'none')])
def test_batchnorm_modes_update_the_right_statistics(mode, updated, small_variables):
  model = create_small_model()
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = small_variables
  _, state = jax.jit(functools.partial(model.apply, train=mode == 'train',
                                       finetune=mode == 'finetune', mutable=['batch_stats']))(
                                           variables, images)
  before = flax.traverse_util.flatten_dict(variables['batch_stats'])
  after = flax.traverse_util.flatten_dict(state['batch_stats'])
  changed = {path[:-1] for path in before if not np.array_equal(before[path], after[path])}
  all_bns = {path[:-1] for path in before}
  expected = {'all': all_bns, 'last': {model.last_bn_path}, 'none': set()}[updated]
  assert changed == expected


def test_zero_init_head_starts_from_uniform_logits():
  model = models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8,
                              zero_init_head=True)
  images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], 0.0)
  np.testing.assert_array_equal(jax.jit(model.apply)(variables, images), 0.0)
  random_head = models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8)
  logits = jax.jit(lambda x: random_head.apply(random_head.init(jax.random.key(0), x), x))(images)
  assert float(jnp.std(logits)) > 0


@pytest.mark.parametrize('output_stride,side', [(32, 3), (16, 5), (8, 10)])
def test_output_stride_keeps_the_parameters_and_enlarges_the_last_map(output_stride, side):
  layout = dict(stage_sizes=(1, 1, 1, 1), num_filters=8)
  reference = models.create_model('resnet', 10, **layout)
  model = models.create_model('resnet', 10, output_stride=output_stride, **layout)
  images = jax.random.normal(jax.random.key(1), (2, 80, 80, 3))
  variables = jax.jit(reference.init)(jax.random.key(0), images)
  # The same variables fit (a torchvision checkpoint converts to any output stride).
  logits, state = jax.jit(functools.partial(model.apply, mutable=['intermediates']))(
      variables, images)
  assert state['intermediates']['feature_map'][0].shape == (2, side, side, 64)
  assert logits.shape == (2, 10)
  assert jax.tree.map(jnp.shape, model.init(jax.random.key(0), images)) == \
      jax.tree.map(jnp.shape, variables)
