"""Model registry, and the contract every model keeps with the rest of fixres_jax.

The contract (what training, FixRes fine-tuning, the cached mode, the sweep and the
checkpoint converter rely on; a new model implements it in its own file here and adds its
constructor to the registry below):

  model(x, train=False, finetune=False, return_features=False)
      x: normalised images [batch, height, width, 3]. train=True: every BatchNorm normalises
      with batch statistics and updates its running ones (mutable 'batch_stats');
      finetune=True: only the last BatchNorm does (FixRes); neither: inference. With
      stochastic depth, train=True draws from a 'dropout' rng. Returns
      float32 logits, or (logits, pooled features [batch, F] in float32) with
      return_features.
  model.HEAD          name of the classifier's parameters, a Dense layer on the pooled
                      features (apply_head applies it alone).
  model.last_bn_path  (module, BN) path of the last BatchNorm before global pooling: the
                      layer whose running statistics FixRes fine-tuning re-estimates.
  model.last_conv_path  path of the convolution that BN normalises (the cached mode reads
                      its output).
  model.num_classes, model.dtype
"""

from typing import Tuple

import jax
import jax.numpy as jnp

from fixres_jax.models.resnet import BasicBlock, Bottleneck, ResNet, create_head

_ARCHS = {
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    'resnet34': dict(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
    'resnet101': dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck),
    'resnet152': dict(stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck),
    'resnext50_32x4d': dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck,
                            groups=32, width_per_group=4),
    'resnext101_32x8d': dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck,
                             groups=32, width_per_group=8),
    'resnext101_32x16d': dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck,
                              groups=32, width_per_group=16),
    'resnext101_32x32d': dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck,
                              groups=32, width_per_group=32),
    'resnext101_32x48d': dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck,
                              groups=32, width_per_group=48),
    'wide_resnet50_2': dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, width_per_group=128),
    'wide_resnet101_2': dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck,
                             width_per_group=128),
}
ARCH_NAMES = tuple(_ARCHS) + ('resnet',)
BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}
# Computation dtypes (parameters stay float32): bfloat16 is the one accelerators run fast.
DTYPES = ('float32', 'bfloat16')


def create_model(name: str, num_classes: int, dtype: str = 'float32',
                 zero_init_residual: bool = False, zero_init_head: bool = False,
                 stage_sizes=None, block: str = 'basic',
                 num_filters: int = 64, bn_group_size: int = 0,
                 drop_path_rate: float = 0.0) -> ResNet:
  """Builds a model by name.

  Args:
    name: one of ARCH_NAMES. 'resnet' is a custom ResNet built from stage_sizes, block (a
      BLOCKS name) and num_filters (the demo's small network); the other names ignore those
      three.
    num_classes: classifier size.
    dtype: computation dtype name, one of DTYPES; parameters stay float32.
    zero_init_residual: zero-initialise the last BN scale of each residual block.
    zero_init_head: zero-initialise the classifier's kernel.
    bn_group_size: BatchNorm statistics over groups of this many images (0: whole batch).
    drop_path_rate: stochastic depth (timm's rule; training then needs a 'dropout' rng).

  Returns:
    an unbound flax ResNet module.
  """
  if name == 'resnet':
    arch = dict(stage_sizes=tuple(stage_sizes), block_cls=BLOCKS[block], num_filters=num_filters)
  elif name in _ARCHS:
    arch = _ARCHS[name]
  else:
    raise ValueError(f'Unknown model {name!r}: config.model.name must be one of {ARCH_NAMES}.')
  return ResNet(num_classes=num_classes, dtype=jnp.dtype(dtype),
                zero_init_residual=zero_init_residual, zero_init_head=zero_init_head,
                bn_group_size=bn_group_size,
                drop_path_rate=drop_path_rate, **arch)


def apply_head(model, head_params: dict, features: jax.Array) -> jax.Array:
  """The model's classifier alone, on pooled (or adapted) features: float32 logits."""
  head = create_head(head_params['kernel'].shape[-1], model.dtype)
  return head.apply({'params': head_params}, features.astype(jnp.float32)).astype(jnp.float32)


def finetuned_names(model, train_bn_affine: bool) -> Tuple[str, ...]:
  """'/'-joined names of the parameters FixRes fine-tuning trains: the classifier, and the
  last BatchNorm's scale and bias with train_bn_affine."""
  names = (f'{model.HEAD}/kernel', f'{model.HEAD}/bias')
  if train_bn_affine:
    names += tuple('/'.join(model.last_bn_path + (p,)) for p in ('scale', 'bias'))
  return names
