r"""Exports a run's network for serving, with the test transform its numbers were measured at.

  python -m fixres_jax.export --workdir=RUN --out=DIR

reads the run's last finished stage (finetune, else train; --stage picks one): its variables,
and the test transform it wrote beside them (transform_record.py); --test_res=K takes the
adapter at K of the run's adapter bank instead (adapters.py: the fine-tuned network with the
last BN's statistics, the classifier and the transform of its fine-tuning at K). It writes

  DIR/saved_model/          TensorFlow SavedModel: 'serving_default' takes encoded images
                            (tf.string [batch], JPEG or PNG bytes) and returns
                            {'logits': float32 [batch, classes]} at the stage's K, the test
                            transform inside the graph (data/serving.py); 'pixels' takes uint8
                            RGB [batch, K, K, 3].
  DIR/model.jax_export      jax.export's serialized function: uint8 RGB [batch, K, K, 3] (the
                            test transform's output before normalisation) -> float32 logits.
  DIR/test_transform.json   the transform: K, crop fraction, resize rule, filter, decoding,
                            mean/std, dtype.
  DIR/torch/                with --torch: torchvision/timm weights (export_torch.py).

Both take any batch size, and load without fixres_jax or flax:

  tf.saved_model.load('DIR/saved_model').signatures['serving_default'](
      images=tf.constant([jpeg_bytes]))['logits']
  jax.export.deserialize(open('DIR/model.jax_export', 'rb').read()).call(uint8_images)

The network runs in inference mode (every BatchNorm on its running statistics), in the run's
config.model.dtype.
"""

import dataclasses
import functools
import json
import os
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fixres_jax import adapters
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import console
from fixres_jax import errors
from fixres_jax import train
from fixres_jax import transform_record
from fixres_jax import workdir as workdir_lib

CONFIG_NAME = 'config.json'  # what every run writes in its workdir (rerun.py)
JAX_EXPORT_NAME = 'model.jax_export'
SAVED_MODEL_NAME = 'saved_model'
PLATFORMS = ('cpu', 'cuda', 'tpu')


class OutputError(errors.UserError, OSError):
  """--out cannot be written."""


@dataclasses.dataclass
class Run:
  """A finished stage of a run: what export needs."""
  config: ml_collections.ConfigDict
  model: object
  variables: dict  # {'params', 'batch_stats'}, NumPy
  record: dict  # transform_record's


def read_config(workdir) -> ml_collections.ConfigDict:
  """The run's config.json over today's defaults (fields added since keep their default)."""
  path = epath.Path(workdir) / CONFIG_NAME
  if not path.exists():
    raise errors.NotFoundError(f'{path} does not exist: --workdir must be the directory of a '
                               'run of `python -m fixres_jax.main`.')
  merged = config_lib.get_base_config().to_dict()
  _deep_update(merged, json.loads(path.read_text()))
  return ml_collections.ConfigDict(merged)


def _deep_update(base: dict, update: dict) -> None:
  for key, value in update.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      _deep_update(base[key], value)
    else:
      base[key] = value


def finished_stage(workdir, stage: Optional[str] = None) -> str:
  """`stage`, or the last stage holding a checkpoint: 'finetune', else 'train'."""
  checkpoints = epath.Path(workdir) / 'checkpoints'
  candidates = [stage] if stage else list(reversed(transform_record.STAGES))
  for name in candidates:
    if checkpoint.has_steps(checkpoints / name):
      return name
  raise errors.NotFoundError(
      f'No checkpoint of the {" or ".join(candidates)} stage in {checkpoints}: export a run '
      'whose stage has finished (`python -m fixres_jax.main ... --workdir=` that directory).')


def load_run(workdir, stage: Optional[str] = None, test_res: Optional[int] = None) -> Run:
  """The variables, network and test transform of a run's finished stage, or of its adapter
  at test_res (its adapter bank's, unless test_res is the finetune stage's own K_test)."""
  if test_res and stage not in (None, 'finetune'):
    raise errors.ConfigError(
        f'--test_res={test_res} selects an adapter of the finetune stage\'s bank: leave '
        f'--stage={stage} out, or leave --test_res out to export the {stage} stage at its K.')
  config = read_config(workdir)
  stage = finished_stage(workdir, 'finetune' if test_res else stage)
  record = transform_record.require(workdir, stage)
  variables = checkpoint.load_variables(epath.Path(workdir) / 'checkpoints' / stage)
  if test_res and test_res != record['image_size']:
    variables = adapters.load_adapter(workdir, test_res, variables)
    record = adapters.read_record(workdir, test_res)
  head = train.create_model(config, 1).HEAD  # its name, whatever the number of classes
  num_classes = variables['params'][head]['kernel'].shape[-1]
  return Run(config, train.create_model(config, num_classes), variables, record)


def normalize_pixels(pixels: jax.Array, record: dict) -> jax.Array:
  """uint8 RGB -> the network's input, as preprocess.normalize_image computes it."""
  # The same float32 constants as normalize_image: 1 / float32(std), -float32(mean) / std.
  std = np.asarray(record['std_rgb'], np.float64)
  scale = 1 / std.astype(np.float32)
  offset = (-np.asarray(record['mean_rgb'], np.float32) / std).astype(np.float32)
  return (pixels.astype(jnp.float32) * scale + offset).astype(record['dtype'])


def images_fn(model):
  """(variables, normalised images) -> float32 logits, in inference mode."""
  return lambda variables, images: model.apply(variables, images, train=False)


def pixels_fn(model, record: dict):
  """(variables, uint8 pixels) -> float32 logits."""
  return lambda variables, pixels: model.apply(variables, normalize_pixels(pixels, record),
                                               train=False)


def export_pixels(run: Run, platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """jax.export of pixels -> logits with the variables inside, for a symbolic batch size."""
  size = run.record['image_size']
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'(b, {size}, {size}, 3)'), jnp.uint8)
  fn = functools.partial(pixels_fn(run.model, run.record), run.variables)
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec)


def check_writable(out) -> epath.Path:
  """Creates --out and writes a probe there, so that a bad path fails before any work."""
  out = epath.Path(out)
  try:
    workdir_lib.probe_writable(out)
  except OSError as e:
    raise OutputError(f'Cannot write to --out={out} ({e}): choose a writable directory.') from e
  return out


def export(workdir, out, stage: Optional[str] = None, platforms: Sequence[str] = PLATFORMS,
           torch: bool = False, test_res: Optional[int] = None) -> Run:
  """Writes DIR's files (see the module docstring); returns what was exported."""
  out = check_writable(out)
  run = load_run(workdir, stage, test_res)
  (out / JAX_EXPORT_NAME).write_bytes(export_pixels(run, platforms).serialize())
  from fixres_jax.data import serving  # pylint: disable=g-import-not-at-top  (TensorFlow)
  serving.write_saved_model(os.fspath(out / SAVED_MODEL_NAME), images_fn(run.model),
                            pixels_fn(run.model, run.record), run.variables, run.record,
                            platforms)
  (out / transform_record.FILE_NAME).write_text(json.dumps(run.record, indent=2) + '\n')
  if torch:
    from fixres_jax import export_torch  # pylint: disable=g-import-not-at-top
    export_torch.write(out / export_torch.DIR_NAME, run)
  return run


def export_or_exit(workdir, out, stage: Optional[str] = None,
                   platforms: Sequence[str] = PLATFORMS, torch: bool = False,
                   test_res: Optional[int] = None) -> Run:
  """export(), where a user's mistake exits with its message alone and errors.EXIT_CODE."""
  try:
    return export(workdir, out, stage, platforms, torch, test_res)
  except errors.UserError as e:  # anything else is a bug: its traceback stays
    errors.exit_with(errors.message(e))


def quiet_library_logs() -> None:
  """The library lines below WARNING stay off the console, as in main.py."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  logging.get_absl_handler().addFilter(console.keep_record)
  console.import_tensorflow_quietly()


def define_flags() -> None:
  """The command line's flags; defined when run as a program only, since main.py's --workdir
  would clash with them in a process that imports both."""
  flags.DEFINE_string('workdir', None, 'The run to export (its --workdir).')
  flags.DEFINE_string('out', None, 'Directory for the exported files.')
  flags.DEFINE_enum('stage', None, list(transform_record.STAGES),
                    'The stage to export (default: finetune when it has a checkpoint, '
                    'else train).')
  flags.DEFINE_list('platforms', list(PLATFORMS), 'Platforms the network is lowered for.')
  flags.DEFINE_bool('torch', False, 'Also write torchvision/timm weights (DIR/torch/).')
  flags.DEFINE_integer('test_res', None, 'Export the adapter at this K_test of the run\'s '
                       'adapter bank (config.finetune.adapter_resolutions).', lower_bound=1)
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_library_logs()
  values = flags.FLAGS
  run = export_or_exit(values.workdir, values.out, values.stage, values.platforms,
                       values.torch, values.test_res)
  logging.info('Exported the %s stage of %s at K=%d into %s.', run.record['stage'],
               values.workdir, run.record['image_size'], values.out)


if __name__ == '__main__':
  define_flags()
  errors.run_tool(main)  # a bad or missing flag also ends with Error: and exit 2
