"""Flax -> torchvision/timm weights: the converter's mapping run backwards, checked against
torchvision's and timm's own ResNet-50, and timm reading the test transform it is given."""

import json
import types

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixres_jax import convert
from fixres_jax import export_torch
from fixres_jax import models

try:
  import timm
  import torch
  import torchvision
except ImportError as e:  # Not a skip: CI installs them, and parity must be checked there.
  raise ImportError('tests/test_export_torch.py needs torch, torchvision and timm: '
                    'pip install -r requirements-torch.txt') from e

NUM_CLASSES = 10
IMAGE_SIZE = 72  # odd sizes below the stem exercise stride-2 padding, as in test_convert.py
RECORD = {'stage': 'finetune', 'image_size': 96, 'chosen': 'config.finetune.test_res',
          'crop_pct': 0.875, 'resize': 'shorter', 'resize_size': 0, 'crop_mode': 'center',
          'crop_margin': 32, 'interpolation': 'bicubic', 'decode': 'exact',
          'dtype': 'float32', 'mean_rgb': [123.675, 116.28, 103.53],
          'std_rgb': [58.395, 57.120000000000005, 57.375]}


def random_variables(arch: str, seed: int = 0) -> dict:
  """Random Flax variables whose BatchNorms are far from the identity (random statistics,
  scales and biases), so that a misplaced one shows in the logits."""
  model = models.create_model(arch, NUM_CLASSES)
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
  rng = np.random.default_rng(seed)
  draws = {'mean': lambda shape: rng.normal(0.0, 0.2, shape),
           'var': lambda shape: rng.uniform(0.5, 2.0, shape),
           'scale': lambda shape: rng.uniform(0.5, 1.5, shape),
           'bias': lambda shape: rng.normal(0.0, 0.2, shape)}
  flat = traverse_util.flatten_dict(jax.device_get(variables))
  return traverse_util.unflatten_dict({
      path: np.asarray(draws[path[-1]](value.shape) if path[-1] in draws else value,
                       np.float32) for path, value in flat.items()})


def torch_logits(torch_model, state_dict: dict, images: np.ndarray) -> np.ndarray:
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()},
                              strict=True)
  with torch.no_grad():
    return torch_model.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize('arch', ['resnet18', pytest.param('resnet50', marks=pytest.mark.slow)])
def test_weights_give_the_flax_logits_in_torchvision_and_timm(arch):
  variables = random_variables(arch)
  images = np.random.default_rng(1).normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
      np.float32)
  model = models.create_model(arch, NUM_CLASSES)
  expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
  state_dict = export_torch.to_state_dict(variables)
  assert np.abs(expected).max() > 0.1  # not a degenerate all-zero comparison
  for name, torch_model in [
      ('torchvision', getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)),
      ('timm', timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES))]:
    diff = np.abs(torch_logits(torch_model, state_dict, images) - expected).max()
    print(f'{name} {arch}: max |logit diff| {diff:.2e}')
    assert diff < 1e-4, name


def test_convert_export_convert_is_exact():
  torch.manual_seed(0)
  torch_model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
  with torch.no_grad():
    for module in torch_model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  original = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  model = models.create_model('resnet18', NUM_CLASSES)
  variables = convert.convert_state_dict(original, model)
  exported = export_torch.to_state_dict(variables)
  assert set(exported) == set(original)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  again = convert.convert_state_dict(exported, model)
  jax.tree.map(np.testing.assert_array_equal, again, variables)


@pytest.mark.parametrize('record, crop_pct, crop_mode, scale_size', [
    ({}, 0.875, 'center', 109),
    ({'image_size': 224, 'resize_size': 232}, None, 'center', 232),  # torchvision's V2
    ({'image_size': 224, 'crop_mode': 'margin'}, 224 / 256, 'center', 256),  # flax's
])
def test_timm_resizes_as_the_record_says(record, crop_pct, crop_mode, scale_size):
  record = dict(RECORD, **record)
  got_pct, got_mode = export_torch.timm_crop(record)
  assert got_mode == crop_mode
  if crop_pct is not None:
    assert got_pct == pytest.approx(crop_pct)
  assert int(record['image_size'] / got_pct) == scale_size  # timm's floor(K / crop_pct)


def test_timm_loads_the_weights_with_the_recorded_transform(tmp_path):
  run = types.SimpleNamespace(variables=random_variables('resnet18', seed=2), record=RECORD,
                              config=types.SimpleNamespace(
                                  model=types.SimpleNamespace(name='resnet18')))
  directory = export_torch.write(tmp_path / 'torch', run)
  cfg = json.loads((directory / export_torch.CONFIG_NAME).read_text())
  assert cfg['architecture'] == 'resnet18' and cfg['num_classes'] == NUM_CLASSES
  model = timm.create_model(
      cfg['architecture'], pretrained=True, num_classes=cfg['num_classes'],
      pretrained_cfg_overlay=dict(cfg['pretrained_cfg'],
                                  file=str(directory / export_torch.WEIGHTS_NAME)))
  data_config = timm.data.resolve_data_config(model=model)
  assert tuple(data_config['input_size']) == (3, 96, 96)
  assert data_config['interpolation'] == 'bicubic'
  assert data_config['crop_pct'] == 0.875 and data_config['crop_mode'] == 'center'
  np.testing.assert_allclose(data_config['mean'], (0.485, 0.456, 0.406))
  np.testing.assert_allclose(data_config['std'], (0.229, 0.224, 0.225))
  # The weights timm loaded are the exported ones.
  np.testing.assert_array_equal(model.state_dict()['layer4.1.bn2.running_var'].numpy(),
                                run.variables['batch_stats']['layer4_1']['bn2']['var'])
