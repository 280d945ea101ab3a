"""Model registry: each name maps to a constructor of a network that keeps the contract.

The contract (what training, FixRes fine-tuning, the cached mode, the sweep and the
checkpoint converter rely on) is code: contract.FixResModel, checked by
contract.check_contract. A new network lives in its own file here and registers a
constructor with @register_model('name'); the constructor takes (num_classes, ModelOptions)
and may ignore the options that do not apply to it (the ResNet layout fields).
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fixres_jax.models import resnet  # registers the ResNets
from fixres_jax.models.contract import (ContractError, FixResModel, check_contract, get_at,
                                        set_at)
from fixres_jax.models.registry import (DTYPES, MODELS, ModelOptions, create_model,
                                        model_names, register_model)

BLOCKS = resnet.BLOCKS  # the custom 'resnet' entry's block names (config.model.block)
OUTPUT_STRIDES = resnet.OUTPUT_STRIDES  # what config.model.output_stride accepts
# The torchvision architectures convert.py converts from PyTorch checkpoints.
TORCHVISION_ARCHS = tuple(resnet.ARCHS)
ARCH_NAMES = model_names()  # the built-in names


def apply_head(model, head_params: dict, features: jax.Array) -> jax.Array:
  """The model's classifier alone, on pooled (or adapted) features: float32 logits."""
  head = nn.Dense(head_params['kernel'].shape[-1], dtype=model.dtype)
  return head.apply({'params': head_params}, features.astype(jnp.float32)).astype(jnp.float32)


def finetuned_names(model, train_bn_affine: bool) -> Tuple[str, ...]:
  """'/'-joined names of the parameters FixRes fine-tuning trains: the classifier, and the
  last BatchNorm's scale and bias with train_bn_affine."""
  names = (f'{model.HEAD}/kernel', f'{model.HEAD}/bias')
  if train_bn_affine:
    names += tuple('/'.join(tuple(model.last_bn_path) + (p,)) for p in ('scale', 'bias'))
  return names
