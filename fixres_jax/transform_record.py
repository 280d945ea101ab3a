"""The test transform a stage's numbers were measured with, written beside its checkpoint.

An accuracy holds only for the pixels it was measured on: a model served at another crop
fraction or filter loses points without any error. So every finished stage writes
WORKDIR/checkpoints/STAGE/test_transform.json, and what reads a stage's weights later (the
sweep, `python -m fixres_jax.export`, the PyTorch weights) takes the transform from there, not
from a config that may have changed since. The file lives inside the stage's checkpoint
directory, so it moves with the checkpoints (config.redo, a copy of the directory).

The record, one JSON object:
  stage          'train' (its validation numbers, at K_train) or 'finetune' (at K_test)
  image_size     K: the network's input side, in pixels
  chosen         how K was set ('config.train.image_size', 'config.finetune.test_res', or the
                 held-out split 'auto' chose it on)
  crop_pct, resize, resize_size, crop_mode, crop_margin, interpolation, decode
                 the test transform's geometry and filter (config.data's test fields, see
                 data/preprocess.py's preprocess_test)
  mean_rgb, std_rgb  the normalisation, on [0, 255] pixels: (x - mean) / std
  dtype          the normalised images' dtype as the network received them
Transform fields this version of the config does not have are recorded at the value that
reproduces the transform it ran (e.g. 'bilinear' before data.test_interpolation existed).
"""

import json
from typing import Optional

from etils import epath
import jax

from fixres_jax import errors

FILE_NAME = 'test_transform.json'
STAGES = ('train', 'finetune')
# config.data's test fields -> (record key, the value that reproduces a config without them).
DATA_FIELDS = {'crop_pct': ('crop_pct', 0.875), 'test_resize': ('resize', 'shorter'),
               'test_resize_size': ('resize_size', 0), 'test_crop_mode': ('crop_mode', 'center'),
               'test_crop_margin': ('crop_margin', 32),
               'test_interpolation': ('interpolation', 'bilinear'), 'decode': ('decode', 'fast'),
               'dtype': ('dtype', 'float32')}


def describe(config, stage: str, image_size: int, chosen: str) -> dict:
  """The record (see the module docstring) of `config`'s test transform at image_size."""
  from fixres_jax.data import preprocess  # pylint: disable=g-import-not-at-top  (TensorFlow)
  data = config.data
  record = {'stage': stage, 'image_size': int(image_size), 'chosen': chosen}
  for field, (key, default) in DATA_FIELDS.items():
    record[key] = data.get(field, default)
  record['mean_rgb'] = [float(m) for m in preprocess.MEAN_RGB]
  record['std_rgb'] = [float(s) for s in preprocess.STDDEV_RGB]
  return record


def path(workdir, stage: str) -> epath.Path:
  return epath.Path(workdir) / 'checkpoints' / stage / FILE_NAME


def write(workdir, record: dict) -> None:
  """Writes `record` beside its stage's checkpoints (process 0)."""
  if jax.process_index() == 0:
    target = path(workdir, record['stage'])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2) + '\n')


def read(workdir, stage: str) -> Optional[dict]:
  """The stage's record, or None where the stage wrote none (an older or unfinished run)."""
  target = path(workdir, stage)
  return json.loads(target.read_text()) if target.exists() else None


def differences(record: dict, other: dict) -> dict:
  """{key: (record's value, other's value)} of the transform fields (K aside) that differ."""
  keys = [key for key, _ in DATA_FIELDS.values()] + ['mean_rgb', 'std_rgb']
  return {k: (record.get(k), other.get(k)) for k in keys if record.get(k) != other.get(k)}


def require(workdir, stage: str) -> dict:
  """read(), where a missing record is the user's to fix."""
  record = read(workdir, stage)
  if record is None:
    raise errors.NotFoundError(
        f'{path(workdir, stage)} does not exist: the {stage} stage has not finished in '
        f'{workdir}, or finished before stages recorded their test transform; re-run the '
        "run's command (finished stages are skipped) to write it.")
  return record
