"""PyTorch -> Flax conversion, checked against torchvision's own models."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from fixres_jax import checkpoint
from fixres_jax import convert
from fixres_jax import errors
from fixres_jax import models

try:
  import torch
  import torchvision
except ImportError as e:  # Not a skip: CI installs torch, and parity must be checked there.
  raise ImportError('tests/test_convert.py needs torch and torchvision: '
                    'pip install -r requirements-torch.txt') from e

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
IMAGE_SIZE = 72  # Odd sizes below the stem (9 -> 5 -> 3) exercise stride-2 padding.


def create_torch_model(arch: str, num_classes: int = NUM_CLASSES, seed: int = 0):
  """torchvision's model with random BN affine parameters and data-driven running stats."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(num_classes=num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.momentum = 1.0  # Running stats := one batch's stats, far from the 0/1 defaults.
    model.train()
    model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))
  return model.eval()


def torch_state_dict(model):
  return {name: value.numpy() for name, value in model.state_dict().items()}


def compare_logits(torch_model, variables, arch, num_classes=NUM_CLASSES):
  """Max |logit difference| between torchvision (eval) and Flax (train=False)."""
  images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = torch_model(images).numpy()
  flax_model = models.create_model(arch, num_classes)
  logits = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
      variables, images.numpy().transpose(0, 2, 3, 1))
  return float(np.max(np.abs(np.asarray(logits) - expected))), float(np.max(np.abs(expected)))


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50', 'resnext50_32x4d'])
def test_logits_match_torchvision(arch, tmp_path):
  torch_model = create_torch_model(arch)
  path = str(tmp_path / f'{arch}.pth')
  torch.save(torch_model.state_dict(), path)
  convert.convert_file(arch, path, str(tmp_path / 'converted'))
  variables = checkpoint.load_variables(tmp_path / 'converted')
  max_diff, max_logit = compare_logits(torch_model, variables, arch)
  print(f'{arch}: max |logit diff| {max_diff:.2e} (max |logit| {max_logit:.2f})')
  assert max_logit > 0.1  # Not a degenerate all-zero comparison.
  assert max_diff < 1e-4


def test_command_line_converts_a_fixres_release(tmp_path):
  """The official FixRes format ('model' entry, 'module.' keys) through the CLI."""
  torch_model = create_torch_model('resnet18', num_classes=7)
  release = {'model': {f'module.{name}': value
                       for name, value in torch_model.state_dict().items()},
             'epoch': 3}
  path = str(tmp_path / 'ResNet18_release.pth')
  torch.save(release, path)
  output = str(tmp_path / 'converted')
  subprocess.run([sys.executable, '-m', 'fixres_jax.convert', '--arch=resnet18',
                  f'--input={path}', f'--output={output}'],
                 check=True, cwd=REPO_ROOT, env={**os.environ, 'PYTHONPATH': REPO_ROOT})
  variables = checkpoint.load_variables(output)
  max_diff, _ = compare_logits(torch_model, variables, 'resnet18', num_classes=7)
  assert max_diff < 1e-4


def test_layouts_and_batch_stats_are_exact():
  torch_model = create_torch_model('resnext50_32x4d')
  state_dict = torch_state_dict(torch_model)
  variables = convert.convert_state_dict(state_dict,
                                         models.create_model('resnext50_32x4d', NUM_CLASSES))
  params, stats = variables['params'], variables['batch_stats']
  grouped = state_dict['layer2.1.conv2.weight']  # (out, in / 32 groups, 3, 3)
  np.testing.assert_array_equal(params['layer2_1']['conv2']['kernel'],
                                grouped.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['fc']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(params['layer3_0']['downsample_bn']['scale'],
                                state_dict['layer3.0.downsample.1.weight'])
  np.testing.assert_array_equal(stats['layer4_2']['bn3']['var'],
                                state_dict['layer4.2.bn3.running_var'])


def test_fixres_release_layout_is_unwrapped():
  state_dict = torch_state_dict(create_torch_model('resnet18'))
  release = {'model': {f'module.{name}': value for name, value in state_dict.items()},
             'epoch': 3}
  model = models.create_model('resnet18', NUM_CLASSES)
  jax.tree.map(np.testing.assert_array_equal, convert.convert_state_dict(release, model),
               convert.convert_state_dict(state_dict, model))


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # Makes `import torch` fail.
  (tmp_path / 'model.pth').touch()
  with pytest.raises(ImportError, match='pip install -r requirements-torch.txt'):
    convert.load_state_dict(str(tmp_path / 'model.pth'))


def test_safetensors_input_matches_pth(tmp_path):
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  torch_model = create_torch_model('resnet18')
  torch.save(torch_model.state_dict(), tmp_path / 'model.pth')
  state_dict = torch_state_dict(torch_model)
  safetensors_numpy.save_file(state_dict, str(tmp_path / 'model.safetensors'))
  from_pth = convert.load_state_dict(str(tmp_path / 'model.pth'))
  from_safetensors = convert.load_state_dict(str(tmp_path / 'model.safetensors'))
  assert from_pth.keys() == from_safetensors.keys()
  for name, value in from_pth.items():
    np.testing.assert_array_equal(value, from_safetensors[name])


def test_missing_unexpected_and_misshaped_names_are_reported():
  state_dict = torch_state_dict(create_torch_model('resnet18'))
  del state_dict['layer2.1.bn1.running_mean']
  state_dict['layer5.0.conv1.weight'] = np.zeros((3, 3, 1, 1), np.float32)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_state_dict(state_dict, models.create_model('resnet18', 1000))
  message = str(error.value)
  assert 'missing from the checkpoint (1): layer2.1.bn1.running_mean' in message
  assert 'unexpected in the checkpoint (1): layer5.0.conv1.weight' in message
  assert 'fc.weight (10, 512)' in message and 'fc.bias' in message


def test_wrong_arch_is_reported_with_the_right_one(tmp_path):
  path = str(tmp_path / 'resnet34.pth')
  torch.save(torchvision.models.resnet34().state_dict(), path)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_file('resnet50', path, str(tmp_path / 'converted'))
  assert 'layer1.0.conv3.weight' in str(error.value)
  assert 'The checkpoint matches --arch=resnet34.' in str(error.value)


def test_pickled_objects_need_trust(tmp_path):
  path = str(tmp_path / 'with_objects.pth')
  torch.save({'model': create_torch_model('resnet18').state_dict(), 'args': object()}, path)
  with pytest.raises(convert.ConversionError, match='--trust_pickle'):
    convert.load_state_dict(path)
  assert 'fc.weight' in convert.load_state_dict(path, trust_pickle=True)


def write_input(tmp_path, kind: str) -> str:
  """A bad --input of `kind`; returns its path."""
  path = tmp_path / {'safetensors': 'model.safetensors'}.get(kind, 'model.pth')
  if kind == 'text':
    path.write_text('not a checkpoint\n')
  elif kind == 'safetensors':
    path.write_bytes(bytes(range(256)) * 4)
  elif kind == 'not_tensors':
    torch.save({'fc.weight': torch.zeros(10, 512), 'note': 'trained by me'}, path)
  elif kind == 'empty':
    path.write_bytes(b'')
  elif kind == 'truncated':  # a torch.save archive cut short, as by a failed copy
    torch.save(create_torch_model('resnet18').state_dict(), path)
    path.write_bytes(path.read_bytes()[:100_000])
  return str(path)


@pytest.mark.parametrize('kind, trust, message', [
    ('text', False, 'is not a file written by torch.save'),
    ('text', True, 'is not a file written by torch.save'),
    ('empty', False, 'is not a file written by torch.save'),
    ('truncated', False, 'cannot be read as a PyTorch checkpoint'),
    ('safetensors', False, 'cannot be read as a PyTorch checkpoint (SafetensorError'),
    ('not_tensors', False, 'holds entries that are not tensors: note'),
    ('missing', False, "No checkpoint file at"),
])
def test_an_unreadable_input_is_a_user_error(tmp_path, kind, trust, message):
  path = write_input(tmp_path, kind)
  with pytest.raises(errors.UserError, match=re.escape(message)):
    convert.convert_file('resnet18', path, str(tmp_path / 'out'), trust_pickle=trust)


def test_bad_arguments_are_user_errors(tmp_path):
  path = str(tmp_path / 'resnet18.pth')
  torch.save(create_torch_model('resnet18').state_dict(), path)
  for arch, num_classes, output, message in [
      ('resnet51', None, tmp_path / 'out', "Unknown --arch='resnet51': use one of"),
      ('resnet18', 0, tmp_path / 'out', '--num_classes=0: use a positive number'),
      ('resnet18', None, '/proc/converted', 'Cannot write --output=/proc/converted'),
      ('resnet50', None, tmp_path / 'out', 'The checkpoint matches --arch=resnet18.')]:
    with pytest.raises(errors.UserError, match=re.escape(message)):
      convert.convert_file(arch, path, str(output), num_classes)


@pytest.mark.slow
@pytest.mark.parametrize('kind, args, message', [
    ('text', ['--arch=resnet18'], 'is not a file written by torch.save'),
    ('missing', ['--arch=resnet18'], 'No checkpoint file at'),
    ('text', ['--arch=resnet51'], "Unknown --arch='resnet51'"),
    ('text', [], 'Flag --arch must have a value other than None'),
])
def test_command_line_answers_bad_input_with_its_message_alone(tmp_path, kind, args, message):
  command = [sys.executable, '-m', 'fixres_jax.convert', f'--input={write_input(tmp_path, kind)}',
             f'--output={tmp_path / "out"}', *args]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHONPATH': REPO_ROOT})
  assert result.returncode == errors.EXIT_CODE, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and message in result.stderr, result.stderr[-3000:]
  assert result.stderr.rstrip().splitlines()[-1].startswith('Error: ')


@pytest.mark.parametrize('arch', [name for name in models.ARCH_NAMES if name != 'resnet'])
def test_every_arch_maps_one_to_one_onto_torchvision(arch):
  """Names and shapes of the whole registry, against torchvision built on the meta device."""
  with torch.device('meta'):
    if hasattr(torchvision.models, arch):
      torch_model = getattr(torchvision.models, arch)()
    else:  # The WSL widths torchvision has no constructor for (resnext101_32x16d, ...).
      width = int(arch.split('x')[-1].rstrip('d'))
      torch_model = torchvision.models.ResNet(torchvision.models.resnet.Bottleneck,
                                              [3, 4, 23, 3], groups=32, width_per_group=width)
  # Zero-strided stand-ins: the shapes of the real tensors without their memory.
  state_dict = {name: np.broadcast_to(np.float32(0), value.shape)
                for name, value in torch_model.state_dict().items()}
  assert convert.find_matching_archs(state_dict) == [arch]  # ...and to no other arch.


@pytest.mark.slow
def test_converted_checkpoint_starts_a_finetune_stage(tmp_path, tiny_config):
  """torchvision resnet18 (1000 classes) -> FixRes fine-tuning on the 10-class tiny dataset."""
  from fixres_jax import recipe  # pylint: disable=g-import-not-at-top
  torch_model = create_torch_model('resnet18', num_classes=1000)
  path = str(tmp_path / 'resnet18.pth')
  torch.save(torch_model.state_dict(), path)
  converted = convert.convert_file('resnet18', path, str(tmp_path / 'converted'))
  config = tiny_config
  config.model.name = 'resnet18'
  config.init_from = str(tmp_path / 'converted')
  # The fine-tuning stage alone: a resnet18 compiled for tests (tests/xla_flags.py) runs
  # slowly, and the sweep of a fine-tuned network is tested on the tiny one.
  config.stages = ('finetune',)
  with pytest.raises(ValueError, match='init_head=False'):  # 1000 classes vs 10
    recipe.run(config, str(tmp_path / 'same_head'))
  config.init_head = False
  result = recipe.run(config, str(tmp_path / 'run'))
  tuned = result['finetuned']
  # The backbone is the converted one, untouched; the new 10-class head was trained.
  np.testing.assert_array_equal(tuned['params']['layer3_1']['conv2']['kernel'],
                                converted['params']['layer3_1']['conv2']['kernel'])
  assert np.asarray(tuned['params']['fc']['kernel']).shape == (512, 10)
  assert (tmp_path / 'run' / 'checkpoints' / 'finetune').is_dir()
