"""The registry of model constructors, and the options a config gives every one of them."""

import dataclasses
from typing import Callable, Dict, Optional, Tuple

from fixres_jax import errors

# Computation dtypes (parameters stay float32): bfloat16 is the one accelerators run fast.
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """config.model's fields, as every constructor receives them.

  Attributes:
    dtype: computation dtype name, one of DTYPES; parameters stay float32.
    zero_init_residual: zero-initialise the last BN scale of each residual block.
    zero_init_head: zero-initialise the classifier's kernel.
    bn_group_size: BatchNorm statistics over groups of this many images (0: whole batch).
    drop_path_rate: stochastic depth (training then needs a 'dropout' rng).
    output_stride: the input's size over the last feature map's (ResNets: 32, 16 or 8).
    stage_sizes, block, num_filters: the layout of a custom network (the 'resnet' entry);
      fixed architectures ignore them.
  """
  dtype: str = 'float32'
  zero_init_residual: bool = False
  zero_init_head: bool = False
  bn_group_size: int = 0
  drop_path_rate: float = 0.0
  output_stride: int = 32
  stage_sizes: Optional[Tuple[int, ...]] = None
  block: str = 'basic'
  num_filters: int = 64


Constructor = Callable[[int, ModelOptions], object]  # (num_classes, options) -> a FixResModel
MODELS: Dict[str, Constructor] = {}


def register_model(name: str) -> Callable[[Constructor], Constructor]:
  """Decorator: registers `constructor(num_classes, options)` under `name`."""
  def register(constructor: Constructor) -> Constructor:
    if name in MODELS:
      raise ValueError(f'A model named {name!r} is already registered.')
    MODELS[name] = constructor
    return constructor
  return register


def model_names() -> Tuple[str, ...]:
  """Every registered name: what config.model.name accepts."""
  return tuple(MODELS)


def create_model(name: str, num_classes: int, **options):
  """The registered network `name` with `num_classes` outputs.

  Args:
    name: a registered name (model_names()).
    num_classes: the classifier's size.
    **options: ModelOptions fields.

  Returns:
    an unbound flax module keeping the model contract (contract.FixResModel).
  """
  if name not in MODELS:
    raise errors.ConfigError(f'config.model.name={name!r}: use one of {model_names()}.')
  return MODELS[name](num_classes, ModelOptions(**options))
