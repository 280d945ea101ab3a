"""The contract every model keeps with the rest of fixres_jax, as code.

Training, FixRes fine-tuning, the cached mode, the sweep and the parametric adaptation use a
model only through FixResModel below; check_contract verifies a model against it (its
variables' layout by shape alone, and its BatchNorm modes on a few images), so a new network
registered in models/__init__.py is known to work with every stage before it trains.
"""

import functools
from typing import Any, Protocol, Sequence, Tuple, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

Path = Tuple[str, ...]
FEATURE_MAP = 'feature_map'  # the optional sown final feature map (FixResModel)


@runtime_checkable
class FixResModel(Protocol):
  """What fixres_jax needs from a network (a flax module).

  Attributes:
    HEAD: name of the classifier's parameters: a Dense layer ('kernel' [F, num_classes],
      'bias') applied to the pooled features; models.apply_head applies it alone.
    last_bn_path: path, in params and batch_stats, of the last BatchNorm before global
      pooling: the layer whose running statistics FixRes fine-tuning re-estimates.
    last_conv_path: path of the layer whose output that BatchNorm normalises (the cached
      mode reads its output).
    num_classes: the classifier's size.
    dtype: the computation dtype.

  Optional: a model that sows its final feature map [batch, h, w, F] (what global pooling
  averages into the features) with self.sow('intermediates', FEATURE_MAP, x) supports timm's
  test-time pooling (tta.py); check_contract then checks that the map averages to the features.
  """
  HEAD: str
  num_classes: int
  dtype: Any

  @property
  def last_bn_path(self) -> Path:
    ...

  @property
  def last_conv_path(self) -> Path:
    ...

  def __call__(self, x: jax.Array, train: bool = False, finetune: bool = False,
               return_features: bool = False):
    """Args:
      x: normalised images [batch, height, width, 3].
      train: every BatchNorm normalises with batch statistics and updates its running ones
        (mutable 'batch_stats'); with stochastic depth it draws from a 'dropout' rng.
      finetune: only the last BatchNorm does (FixRes fine-tuning); every other layer is in
        inference mode.
      return_features: also return the pooled features [batch, F] in float32.

    Returns:
      float32 logits [batch, num_classes], or (logits, features).
    """


class ContractError(ValueError):
  """A model that breaks the contract, with every violation found."""


def apply_with_feature_map(model: Any, variables: dict, images: jax.Array) -> tuple:
  """(logits, features, feature map in float32) in inference mode.

  Raises:
    ContractError: the model does not sow its feature map.
  """
  (logits, features), state = model.apply(variables, images, train=False,
                                           return_features=True, mutable=['intermediates'])
  sown = state.get('intermediates', {}).get(FEATURE_MAP)
  if sown is None:
    raise ContractError(f'{type(model).__name__} does not sow its final feature map as '
                        f"('intermediates', {FEATURE_MAP!r}), which test-time pooling needs "
                        '(fixres_jax/models/contract.py): sow it before global pooling, or '
                        "evaluate without 'test_time_pool'.")
  return logits, features, sown[-1].astype(jnp.float32)


def get_at(tree: dict, path: Sequence[str]) -> Any:
  """The subtree of `tree` at `path`."""
  for name in path:
    tree = tree[name]
  return tree


def set_at(tree: dict, path: Sequence[str], value: Any) -> dict:
  """A copy of `tree` with the subtree at `path` replaced (the rest shared, not copied)."""
  if not path:
    return value
  head, *rest = path
  return {**tree, head: set_at(tree[head], rest, value)}


def has_path(tree: Any, path: Sequence[str]) -> bool:
  for name in path:
    if not isinstance(tree, dict) or name not in tree:
      return False
    tree = tree[name]
  return True


def check_contract(model: Any, image_size: int = 32, run: bool = True) -> None:
  """Raises ContractError naming every way `model` breaks the contract.

  Args:
    model: an unbound flax module.
    image_size: the side of the test images.
    run: also run the model on four images and check its BatchNorm modes (the layout alone
      is checked by shape, without allocating the variables).
  """
  problems = layout_problems(model, image_size)
  if run and not problems:
    problems = mode_problems(model, image_size)
  if problems:
    raise ContractError(f'{type(model).__name__} breaks the model contract '
                        '(fixres_jax/models/contract.py):\n  ' + '\n  '.join(problems))


def layout_problems(model: Any, image_size: int) -> list:
  """The attributes and the variables' layout, from shapes alone."""
  missing = [a for a in ('HEAD', 'last_bn_path', 'last_conv_path', 'num_classes', 'dtype')
             if not hasattr(model, a)]
  if missing:
    return [f'no attribute {a}' for a in missing]
  images = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  params, stats = variables.get('params', {}), variables.get('batch_stats', {})
  problems = []
  head = params.get(model.HEAD)
  if head is None or set(head) != {'kernel', 'bias'}:
    problems.append(f'params[{model.HEAD!r}] is not a Dense layer (kernel, bias)')
  elif head['kernel'].shape[-1] != model.num_classes:
    problems.append(f'the head has {head["kernel"].shape[-1]} outputs, num_classes is '
                    f'{model.num_classes}')
  bn = tuple(model.last_bn_path)
  if not has_path(stats, bn) or set(get_at(stats, bn)) != {'mean', 'var'}:
    problems.append(f'batch_stats has no BatchNorm (mean, var) at last_bn_path {bn}')
  if not has_path(params, bn) or set(get_at(params, bn)) != {'scale', 'bias'}:
    problems.append(f'params has no BatchNorm (scale, bias) at last_bn_path {bn}')
  if not has_path(params, tuple(model.last_conv_path)):
    problems.append(f'params has no layer at last_conv_path {tuple(model.last_conv_path)}')
  return problems


def mode_problems(model: Any, image_size: int) -> list:
  """Outputs, and which BatchNorm statistics each mode updates, on four random images."""
  variables, logits, features, finetuned, trained, feature_map = jax.jit(functools.partial(
      run_modes, model))(jax.random.normal(jax.random.key(1), (4, image_size, image_size, 3)))
  problems = []
  if feature_map is not None and (feature_map.ndim != 4 or not np.allclose(
      np.mean(feature_map, axis=(1, 2)), features, rtol=1e-4, atol=1e-5)):
    problems.append(f'the sown {FEATURE_MAP!r} ({list(feature_map.shape)}) does not average '
                    'over its positions to the pooled features')
  if logits.shape != (4, model.num_classes) or logits.dtype != jnp.float32:
    problems.append(f'logits are {logits.dtype}{list(logits.shape)}, not float32'
                    f'[4, {model.num_classes}]')
  kernel = variables['params'][model.HEAD]['kernel']
  if features.shape != (4, kernel.shape[0]) or features.dtype != jnp.float32:
    problems.append(f'return_features gives {features.dtype}{list(features.shape)}, not '
                    f'float32[4, {kernel.shape[0]}] (the head\'s input)')
  bn = tuple(model.last_bn_path)
  changed = changed_paths(variables['batch_stats'], finetuned)
  if changed != {bn}:
    problems.append(f'finetune=True updates the statistics of {sorted(changed)}, not only '
                    f'those of the last BatchNorm {bn}')
  if bn not in changed_paths(variables['batch_stats'], trained):
    problems.append(f'train=True leaves the statistics of the last BatchNorm {bn} unchanged')
  return problems


def run_modes(model: Any, images: jax.Array) -> tuple:
  """The model initialised on `images`, its (logits, features) in inference, the
  statistics after one finetune=True and one train=True call, and its sown feature map (None
  when it sows none): one compilation."""
  variables = model.init(jax.random.key(0), images)
  (logits, features), state = model.apply(variables, images, return_features=True,
                                          mutable=['intermediates'])
  feature_map = state.get('intermediates', {}).get(FEATURE_MAP, (None,))[-1]
  rngs = {'dropout': jax.random.key(2)}
  stats = [model.apply(variables, images, mutable=['batch_stats'], rngs=rngs,
                       **{mode: True})[1]['batch_stats'] for mode in ('finetune', 'train')]
  return (variables, logits, features, *stats, feature_map)


def changed_paths(before: dict, after: dict) -> set:
  """The BatchNorm paths (the parent of 'mean'/'var') whose statistics differ."""
  flat_before = {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(before)[0]}
  changed = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(after)[0]:
    if not np.array_equal(np.asarray(leaf), np.asarray(flat_before[path])):
      changed.add(tuple(k.key for k in path[:-1]))
  return changed
