r"""Converts PyTorch ResNet/ResNeXt checkpoints into Flax variables.

  python -m fixres_jax.convert --arch=resnet50 --input=resnet50.pth --output=/tmp/r50

writes an orbax directory that any stage can start from (config.init_from=/tmp/r50).

Accepted inputs:
  * a torchvision state_dict (.pth), e.g. from torchvision.models.resnet50(weights=...);
  * the official FixRes releases: a dict whose 'model' entry is the state_dict of a
    DataParallel model (every key starts with 'module.');
  * the WSL ResNeXt hub checkpoints (ig_resnext101_32x{8,16,32,48}d): plain state_dicts of
    torchvision's resnext101_32xNd;
  * .safetensors files holding such a state_dict.

The name mapping is one-to-one (see fixres_jax/models/resnet.py): every tensor of the
checkpoint must be used and every Flax variable filled, or the conversion fails listing the
missing, unexpected and mis-shaped names. torch is needed only to read .pth files and is
imported lazily; conversion itself works on NumPy arrays.
"""

import functools
import os
import pickle
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import models

INSTALL_HINT = ('Install the converter dependencies with '
                '`pip install -r requirements-torch.txt -c requirements.lock`.')
# PyTorch OIHW conv kernels -> Flax HWIO; PyTorch (out, in) dense weights -> Flax (in, out).
# Grouped convs need nothing special: both layouts keep in/groups on the input axis.
_TO_FLAX_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}
_MODULE_NAMES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
_SHOWN_NAMES = 20


class ConversionError(errors.UserError, ValueError):
  """The input cannot be converted: unreadable, or not the requested architecture."""


class MissingDependencyError(errors.UserError, ImportError):
  """torch or safetensors, needed to read the input, is not installed."""


def torch_name(path: Tuple[str, ...]) -> str:
  """Maps a Flax variable path to its torchvision state_dict key.

  Args:
    path: (collection, module..., leaf), e.g. ('batch_stats', 'layer1_0', 'downsample_bn',
      'mean').

  Returns:
    the torchvision key, e.g. 'layer1.0.downsample.1.running_mean'.
  """
  *modules, leaf = path[1:]
  parts = [_MODULE_NAMES.get(m, m.replace('_', '.')) for m in modules]
  return '.'.join(parts + [_LEAF_NAMES[leaf]])


def to_flax_layout(array: np.ndarray) -> np.ndarray:
  """Transposes a PyTorch weight into Flax's layout (vectors are unchanged)."""
  return np.transpose(array, _TO_FLAX_AXES.get(array.ndim, tuple(range(array.ndim))))


def to_torch_layout(array: np.ndarray) -> np.ndarray:
  """Transposes a Flax weight into PyTorch's layout: to_flax_layout undone."""
  axes = _TO_FLAX_AXES.get(array.ndim, tuple(range(array.ndim)))
  return np.transpose(array, np.argsort(axes))


def init_shapes(model) -> Dict[Tuple[str, ...], jax.ShapeDtypeStruct]:
  """The model's variables as {flat path: shape and dtype}, without allocating them."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  return flax.traverse_util.flatten_dict(variables)


def expected_torch_shapes(model) -> Dict[str, Tuple[int, ...]]:
  """The torchvision state_dict (without num_batches_tracked) that fills `model`."""
  shapes = {}
  for path, leaf in init_shapes(model).items():
    axes = _TO_FLAX_AXES.get(len(leaf.shape), tuple(range(len(leaf.shape))))
    # flax_shape[k] == torch_shape[axes[k]], so torch_shape[i] == flax_shape[axes.index(i)].
    shapes[torch_name(path)] = tuple(leaf.shape[axes.index(i)] for i in range(len(axes)))
  return shapes


def unwrap_state_dict(checkpoint_obj: Mapping[str, Any]) -> Dict[str, Any]:
  """Finds the state_dict in a loaded checkpoint and strips DataParallel's 'module.' prefix.

  Args:
    checkpoint_obj: a state_dict, or a dict holding one under 'model' (FixRes releases) or
      'state_dict' (common training scripts).

  Returns:
    {torchvision key: tensor} with num_batches_tracked counters dropped.
  """
  if not isinstance(checkpoint_obj, Mapping):
    raise ConversionError(f'Expected a state_dict, got a {type(checkpoint_obj).__name__}: save '
                          'the weights with torch.save(model.state_dict(), path).')
  state_dict = checkpoint_obj
  for entry in ('model', 'state_dict'):
    if isinstance(state_dict.get(entry), Mapping):
      state_dict = state_dict[entry]
      break
  return {name.removeprefix('module.'): value for name, value in state_dict.items()
          if not name.endswith('num_batches_tracked')}


def _list_names(title: str, names: Iterable[str]) -> str:
  names = sorted(names)
  shown = ', '.join(names[:_SHOWN_NAMES])
  more = f' ... and {len(names) - _SHOWN_NAMES} more' if len(names) > _SHOWN_NAMES else ''
  return f'\n  {title} ({len(names)}): {shown}{more}'


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model) -> Dict[str, Any]:
  """Converts a torchvision-layout state_dict into the variables of a Flax ResNet.

  Args:
    state_dict: {torchvision key: array}, as from load_state_dict; a FixRes release's
      {'model': {'module.' + key: array}} is unwrapped, num_batches_tracked ignored.
    model: the Flax ResNet to fill (fixres_jax.models.create_model).

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 NumPy arrays.

  Raises:
    ConversionError: listing the missing, unexpected and mis-shaped tensors (the first
      20 of each, with their counts).
  """
  state_dict = unwrap_state_dict(state_dict)
  converted, missing, mismatched = {}, [], []
  targets = init_shapes(model)
  for path, target in targets.items():
    name = torch_name(path)
    if name not in state_dict:
      missing.append(name)
      continue
    value = to_flax_layout(np.asarray(state_dict[name]))
    if value.shape != target.shape:
      mismatched.append(f'{name} {np.shape(state_dict[name])} -> {value.shape}, '
                        f'model needs {target.shape}')
      continue
    converted[path] = value.astype(target.dtype)
  unexpected = set(state_dict) - {torch_name(path) for path in targets}
  if missing or unexpected or mismatched:
    raise ConversionError(
        'The checkpoint does not match the model:'
        + (_list_names('missing from the checkpoint', missing) if missing else '')
        + (_list_names('unexpected in the checkpoint', unexpected) if unexpected else '')
        + (_list_names('shape mismatch', mismatched) if mismatched else '')
        + '\nCheck --arch (and --num_classes, which defaults to the rows of fc.weight).')
  return flax.traverse_util.unflatten_dict(converted)


@functools.lru_cache(maxsize=None)
def _arch_torch_shapes(arch: str, num_classes: int) -> Dict[str, Tuple[int, ...]]:
  return expected_torch_shapes(models.create_model(arch, num_classes))


def find_matching_archs(state_dict: Mapping[str, np.ndarray]) -> List[str]:
  """The registry architectures whose torchvision state_dict has exactly these shapes."""
  shapes = {name: np.shape(value) for name, value in unwrap_state_dict(state_dict).items()}
  num_classes = shapes.get('fc.weight', (1000,))[0]
  return [arch for arch in models.ARCH_NAMES
          if arch != 'resnet' and _arch_torch_shapes(arch, num_classes) == shapes]


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(f'Reading PyTorch .pth files needs torch. {INSTALL_HINT}'
                                 ) from e
  return torch


def load_state_dict(path: str, trust_pickle: bool = False) -> Dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint (.pth/.pt or .safetensors) as {key: float32 NumPy array}.

  Args:
    path: the checkpoint file.
    trust_pickle: allow .pth files that hold arbitrary Python objects (unpickling runs
      code from the file: only for files from a trusted source).

  Returns:
    the unwrapped state_dict (see unwrap_state_dict).
  """
  if not os.path.isfile(path):
    raise errors.NotFoundError(f'No checkpoint file at {path!r} (--input).')
  obj = read_safetensors(path) if path.endswith('.safetensors') else read_pth(path, trust_pickle)
  state_dict = unwrap_state_dict(obj)
  not_arrays = [name for name, value in state_dict.items()
                if not hasattr(value, 'detach') and not isinstance(value, np.ndarray)]
  if not_arrays:
    raise ConversionError(f'{path} holds entries that are not tensors: '
                          f'{", ".join(sorted(not_arrays)[:_SHOWN_NAMES])}. Give the '
                          "model's state_dict (torch.save(model.state_dict(), path)).")
  # .float() first: NumPy has no bfloat16 for torch tensors.
  return {name: (value.detach().float().numpy() if hasattr(value, 'detach')
                 else np.asarray(value, np.float32))
          for name, value in state_dict.items()}


def read_pth(path: str, trust_pickle: bool) -> Any:
  """torch.load's object; a file it cannot read is a ConversionError naming why."""
  torch = _import_torch()
  if not written_by_torch_save(path):  # else torch.load fails as if it held Python objects
    raise ConversionError(f'{path} is not a file written by torch.save (neither a zip '
                          'archive nor a pickle). --input must be a .pth/.pt file holding a '
                          'ResNet state_dict, or a .safetensors file.')
  try:
    return torch.load(path, map_location='cpu', weights_only=not trust_pickle)
  except pickle.UnpicklingError as e:
    if not trust_pickle:
      raise ConversionError(
          f'{path} holds Python objects besides tensors, which torch.load(weights_only=True) '
          'refuses. If you trust where the file comes from, rerun with --trust_pickle.') from e
    raise ConversionError(unreadable(path, e, 'a file written by torch.save')) from e
  except Exception as e:  # pylint: disable=broad-except  (a damaged archive: any failure is the file's)
    raise ConversionError(unreadable(path, e, 'a file written by torch.save')) from e


def written_by_torch_save(path: str) -> bool:
  """torch.save's formats: a zip archive (since PyTorch 1.6), or a pickle (the legacy one)."""
  with open(path, 'rb') as f:
    head = f.read(4)
  # A zip's local file header, or the PROTO opcode every pickle since protocol 2 starts with.
  return head == b'PK\x03\x04' or head[:1] == b'\x80'


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """The arrays of a .safetensors file; a file it cannot read is a ConversionError."""
  try:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(
        f'Reading .safetensors files needs safetensors. {INSTALL_HINT}') from e
  try:
    return safetensors_numpy.load_file(path)
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError, and I/O errors)
    raise ConversionError(unreadable(path, e, 'a .safetensors file')) from e


def unreadable(path: str, error: Exception, wanted: str) -> str:
  reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ''
  return (f'{path} cannot be read as a PyTorch checkpoint ({type(error).__name__}: {reason}). '
          f'--input must be {wanted} holding a ResNet state_dict.')


def convert_file(arch: str, input_path: str, output_dir: str,
                 num_classes: Optional[int] = None, trust_pickle: bool = False) -> Dict[str, Any]:
  """Converts a PyTorch checkpoint file into a variables directory for config.init_from.

  Args:
    arch: a torchvision constructor name (fixres_jax.models.ARCH_NAMES, except 'resnet').
    input_path: the PyTorch checkpoint.
    output_dir: where to write the orbax checkpoint.
    num_classes: classifier size; by default the rows of the checkpoint's fc.weight.
    trust_pickle: see load_state_dict.

  Returns:
    the converted variables.
  """
  if arch not in models.ARCH_NAMES or arch == 'resnet':
    raise ConversionError(f'Unknown --arch={arch!r}: use one of {models.ARCH_NAMES[:-1]}.')
  if num_classes is not None and num_classes < 1:
    raise ConversionError(f'--num_classes={num_classes}: use a positive number of classes, '
                          'or leave it out to take the rows of fc.weight.')
  check_output(output_dir)
  state_dict = load_state_dict(input_path, trust_pickle)
  if num_classes is None:
    if 'fc.weight' not in state_dict:
      raise ConversionError(f'{input_path} has no fc.weight: pass --num_classes.')
    num_classes = state_dict['fc.weight'].shape[0]
  try:
    variables = convert_state_dict(state_dict, models.create_model(arch, num_classes))
  except ConversionError as e:
    matches = find_matching_archs(state_dict)
    if matches:
      raise ConversionError(f'{e}\nThe checkpoint matches --arch={matches[0]}.') from None
    raise
  checkpoint.save_variables(output_dir, variables)
  return variables


def check_output(output_dir: str) -> None:
  """Fails before the conversion when a local --output cannot be created."""
  if '://' in str(output_dir):
    return
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise ConversionError(f'Cannot write --output={output_dir} ({e}): choose a writable '
                          'directory.') from e


FLAGS = flags.FLAGS
flags.DEFINE_string('arch', None, 'torchvision constructor name, e.g. resnet50.')
flags.DEFINE_string('input', None, 'PyTorch checkpoint: .pth/.pt (torch.save) or .safetensors.')
flags.DEFINE_string('output', None, 'Directory for the converted Flax variables.')
flags.DEFINE_integer('num_classes', None, 'Classifier size (default: from fc.weight).')
flags.DEFINE_bool('trust_pickle', False,
                  'Allow .pth files holding arbitrary Python objects (trusted sources only).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  variables = convert_file(FLAGS.arch, FLAGS.input, FLAGS.output, FLAGS.num_classes,
                           FLAGS.trust_pickle)
  num_params = sum(x.size for x in jax.tree.leaves(variables['params']))
  logging.info('Converted %s (%s, %d parameters) into %s; start a stage from it with '
               '--config.init_from=%s', FLAGS.input, FLAGS.arch, num_params, FLAGS.output,
               FLAGS.output)


if __name__ == '__main__':
  flags.mark_flags_as_required(['arch', 'input', 'output'])
  errors.run_tool(main)
