"""The model contract as code: every registered model keeps it, and so does a network that is
not a ResNet, registered here, which then FixRes-fine-tunes through the project's own step."""

import ast
import functools
import pathlib

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fixres_jax import cached_finetune
from fixres_jax import finetune
from fixres_jax import models

PACKAGE = pathlib.Path(models.__file__).parents[1]


class ToyConvNet(nn.Module):
  """Two conv-BN-ReLU layers, the last BN three levels deep, pooling and a head 'classifier'."""
  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32
  HEAD = 'classifier'
  last_bn_path = ('trunk', 'late', 'norm')
  last_conv_path = ('trunk', 'late', 'conv')

  @nn.compact
  def __call__(self, x, train=False, finetune=False, return_features=False):
    x = ToyTrunk(train=train, finetune=finetune, name='trunk')(x)
    features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    logits = nn.Dense(self.num_classes, name='classifier')(features).astype(jnp.float32)
    return (logits, features) if return_features else logits


class ToyTrunk(nn.Module):
  train: bool
  finetune: bool

  @nn.compact
  def __call__(self, x):
    x = ToyLayer(6, use_batch_stats=self.train, name='early')(x)
    return ToyLayer(8, use_batch_stats=self.train or self.finetune, name='late')(x)


class ToyLayer(nn.Module):
  width: int
  use_batch_stats: bool

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.width, (3, 3), (2, 2), name='conv')(x)
    return nn.relu(nn.BatchNorm(use_running_average=not self.use_batch_stats, momentum=0.9,
                                name='norm')(x))


class WrongLastBN(ToyConvNet):
  last_bn_path = ('trunk', 'early', 'norm')  # FixRes would re-estimate the wrong layer


@pytest.fixture
def registered_toy():
  """ToyConvNet registered as 'toy' for the test, then removed."""
  models.register_model('toy')(lambda num_classes, options: ToyConvNet(num_classes))
  yield
  del models.MODELS['toy']


@pytest.mark.parametrize('name', models.ARCH_NAMES)
def test_every_registered_model_has_the_contracts_layout(name):
  options = dict(stage_sizes=(1, 1), num_filters=8) if name == 'resnet' else {}
  model = models.create_model(name, 10, **options)
  assert isinstance(model, models.FixResModel)
  models.check_contract(model, run=False)  # shapes only: no allocation, even for 800M params


def test_resnet_batchnorm_modes_keep_the_contract():
  # Both blocks' modes: test_models.py, test_batchnorm_modes_update_the_right_statistics.
  models.check_contract(models.create_model('resnet', 10, stage_sizes=(1, 1), num_filters=8))


def test_a_registered_non_resnet_keeps_the_contract_and_is_created_by_name(registered_toy):
  assert 'toy' in models.model_names()
  model = models.create_model('toy', 7)
  models.check_contract(model)
  assert model.num_classes == 7


def test_a_wrong_last_bn_path_breaks_the_contract():
  with pytest.raises(models.ContractError, match=r"finetune=True updates .*'late'"):
    models.check_contract(WrongLastBN())


def test_a_missing_head_breaks_the_contract():
  class NoHead(ToyConvNet):
    HEAD = 'fc'
  with pytest.raises(models.ContractError, match=r"params\['fc'\] is not a Dense layer"):
    models.check_contract(NoHead(), run=False)


def test_unknown_model_name_is_a_config_error():
  with pytest.raises(models.registry.errors.ConfigError, match='config.model.name=.resnet51'):
    models.create_model('resnet51', 10)


def test_a_name_registers_once(registered_toy):
  with pytest.raises(ValueError, match="'toy' is already registered"):
    models.register_model('toy')(lambda num_classes, options: ToyConvNet(num_classes))


def test_fixres_finetune_step_on_a_non_resnet_changes_only_head_and_last_bn(registered_toy):
  model = models.create_model('toy', 10)
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  variables = model.init(jax.random.key(1), images)
  names = models.finetuned_names(model, train_bn_affine=False)
  cfg = type('Cfg', (), dict(weight_decay=1e-4, momentum=0.9))
  state = finetune.create_finetune_state(model, variables, cfg, optax.constant_schedule(0.1),
                                         names)
  step = jax.jit(functools.partial(finetune.finetune_step, trainable=names,
                                   last_bn_path=model.last_bn_path))
  new_state, metrics = step(state, {'image': images, 'label': jnp.arange(8) % 10})
  assert np.isfinite(float(metrics['loss']))
  changed = lambda a, b: {k for k, v in flax.traverse_util.flatten_dict(a).items()
                          if not np.array_equal(v, flax.traverse_util.flatten_dict(b)[k])}
  assert changed(new_state.params, state.params) == {('classifier', 'kernel'),
                                                     ('classifier', 'bias')}
  assert changed(new_state.batch_stats, state.batch_stats) == {
      ('trunk', 'late', 'norm', 'mean'), ('trunk', 'late', 'norm', 'var')}


def test_cached_mode_reads_and_sets_the_last_bn_of_a_non_resnet():
  model = ToyConvNet()
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), images)
  x = cached_finetune.last_bn_input(model, variables, images)
  assert x.shape == (4, 4, 4, 8)
  mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
  updated = cached_finetune.set_population_stats(variables, model.last_bn_path, mean, var)
  np.testing.assert_allclose(updated['batch_stats']['trunk']['late']['norm']['mean'], mean)
  # The result equals what finetune=True's batch statistics compute from the same images.
  _, stats = model.apply(variables, images, finetune=True, mutable=['batch_stats'])
  np.testing.assert_allclose(stats['batch_stats']['trunk']['late']['norm']['mean'],
                             0.9 * variables['batch_stats']['trunk']['late']['norm']['mean']
                             + 0.1 * mean, rtol=1e-5, atol=1e-6)
  logits, features = model.apply(variables, images, return_features=True)
  np.testing.assert_allclose(
      models.apply_head(model, variables['params'][model.HEAD], features), logits, rtol=1e-5,
      atol=1e-6)


def code_names(path: pathlib.Path) -> set:
  """Identifiers, attribute names and string constants of a module's code (not docstrings
  or comments)."""
  tree = ast.parse(path.read_text())
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                and node.body and isinstance(node.body[0], ast.Expr)}
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      names.add(node.id)
    elif isinstance(node, ast.Attribute):
      names.add(node.attr)
    elif isinstance(node, ast.alias):
      names.update(node.name.split('.'))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
        id(node) not in docstrings):
      names.add(node.value)
  return names


# These read and write torchvision's own checkpoint layout, whose head is named 'fc'.
TORCHVISION_LAYOUT = {'convert.py', 'export_torch.py'}


def test_no_module_outside_models_names_the_head_or_resnet():
  offenders = {}
  for path in PACKAGE.rglob('*.py'):
    relative = path.relative_to(PACKAGE)
    if relative.parts[0] == 'models' or relative.name in TORCHVISION_LAYOUT:
      continue
    named = code_names(path) & {'fc', 'ResNet', 'resnet', 'BasicBlock', 'Bottleneck',
                                'last_block', 'bn2', 'bn3', 'conv2', 'conv3'}
    if named:
      offenders[str(relative)] = sorted(named)
  assert not offenders
