"""Flax ResNet variables -> torchvision/timm weights, with timm's pretrained config.

  python -m fixres_jax.export --workdir=RUN --out=DIR --torch

writes DIR/torch/model.safetensors, torchvision's state_dict (the names and layouts of
convert.py's mapping, run backwards; num_batches_tracked included, so strict loading passes),
which torchvision's and timm's ResNets of the same architecture load as they are, and
DIR/torch/config.json, timm's model config: 'architecture', 'num_classes', 'num_features' and
a 'pretrained_cfg' holding the stage's test transform (input_size, crop_pct, crop_mode,
interpolation, mean, std) from its test_transform.json (the full record under
'test_transform'). In PyTorch:

  model = torchvision.models.resnet50(num_classes=N)
  model.load_state_dict(safetensors.torch.load_file('DIR/torch/model.safetensors'))

or with timm, the transform coming with the weights:

  cfg = json.load(open('DIR/torch/config.json'))
  model = timm.create_model(cfg['architecture'], pretrained=True,
                            num_classes=cfg['num_classes'], pretrained_cfg_overlay=dict(
                                cfg['pretrained_cfg'], file='DIR/torch/model.safetensors'))
  transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))

timm decodes with PIL and resizes in two passes rounded to uint8; the record's decode='fast'
decodes JPEGs at a reduced DCT scale. Both differ from the measured pixels by rounding only
(docs/DECODE.md), but the exported SavedModel (export.py) is the exact transform.
"""

import json
import math
import os
from typing import Dict, Tuple

from etils import epath
import flax.traverse_util
import numpy as np

from fixres_jax import convert
from fixres_jax import errors
from fixres_jax import models

DIR_NAME = 'torch'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'


class MissingDependencyError(errors.UserError, ImportError):
  """safetensors, needed to write the weights, is not installed."""


def to_state_dict(variables: dict) -> Dict[str, np.ndarray]:
  """Flax ResNet variables -> torchvision's state_dict, float32 NumPy arrays (int64 counters).

  Args:
    variables: {'params', 'batch_stats'} of a fixres_jax ResNet.

  Returns:
    {torchvision key: array}, with every BatchNorm's num_batches_tracked set to 0 (PyTorch
    reads it only with momentum=None, and strict loading asks for it).
  """
  state_dict = {}
  for path, value in flax.traverse_util.flatten_dict(dict(variables)).items():
    array = convert.to_torch_layout(np.asarray(value, np.float32))
    state_dict[convert.torch_name(path)] = np.ascontiguousarray(array)
  for name in [n for n in state_dict if n.endswith('.running_mean')]:
    state_dict[name.removesuffix('running_mean') + 'num_batches_tracked'] = np.zeros(
        (), np.int64)
  return state_dict


def timm_crop(record: dict) -> Tuple[float, str]:
  """(crop_pct, crop_mode) with which timm's eval transform takes the record's window.

  timm resizes to floor(K / crop_pct): a fixed resize size S becomes crop_pct = K / S (nudged
  up so that the floor lands on S), flax's fixed margin K / (K + margin) in 'center' mode.
  """
  size = record['image_size']
  if record['crop_mode'] == 'margin':
    return _crop_pct_for(size, size + record['crop_margin']), 'center'
  if record['resize_size']:
    return _crop_pct_for(size, record['resize_size']), record['crop_mode']
  return float(record['crop_pct']), record['crop_mode']


def _crop_pct_for(size: int, resize_size: int) -> float:
  crop_pct = size / resize_size
  while math.floor(size / crop_pct) < resize_size:
    crop_pct = float(np.nextafter(crop_pct, 0.0))
  return crop_pct


def pretrained_config(record: dict, arch: str, num_classes: int, num_features: int) -> dict:
  """timm's model config (as its Hugging Face Hub models carry it) for the record."""
  crop_pct, crop_mode = timm_crop(record)
  size = record['image_size']
  cfg = {'input_size': [3, size, size], 'fixed_input_size': False,
         'interpolation': record['interpolation'], 'crop_pct': crop_pct, 'crop_mode': crop_mode,
         'mean': [round(m / 255, 10) for m in record['mean_rgb']],
         'std': [round(s / 255, 10) for s in record['std_rgb']],
         'num_classes': num_classes, 'first_conv': 'conv1', 'classifier': 'fc'}
  return {'architecture': arch, 'num_classes': num_classes, 'num_features': num_features,
          'pretrained_cfg': cfg, 'test_transform': record}


def write(directory, run) -> epath.Path:
  """Writes model.safetensors and config.json of an export.Run into `directory`."""
  try:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(f'Writing PyTorch weights needs safetensors. '
                                 f'{convert.INSTALL_HINT}') from e
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  state_dict = to_state_dict(run.variables)
  safetensors_numpy.save_file(state_dict, os.fspath(directory / WEIGHTS_NAME))
  name = run.config.model.name
  # torchvision's and timm's constructor names agree for these; a custom ResNet has none.
  arch = name if name in models.TORCHVISION_ARCHS else None
  num_features, num_classes = state_dict['fc.weight'].shape[::-1]
  config = pretrained_config(run.record, arch, int(num_classes), int(num_features))
  (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n')
  return directory
