"""ResNet and ResNeXt in Flax linen, with torchvision's layout and names.

Parameter names map one-to-one onto torchvision's state_dict: `layer3.1.conv2.weight`
is params['layer3_1']['conv2']['kernel'], `layer1.0.downsample.1.running_mean` is
batch_stats['layer1_0']['downsample_bn']['mean'], `fc.weight` is params['fc']['kernel'].
Bottlenecks are v1.5 (stride on the 3x3 conv), BatchNorm uses eps 1e-5 and PyTorch's
momentum 0.1 (Flax momentum 0.9).

BatchNorm modes, chosen per call:
  train=True      every BN normalises with batch statistics and updates its running ones.
  finetune=True   FixRes: every BN uses its running statistics, except the LAST BN before
                  global pooling (`last_bn_path`), which uses batch statistics and updates
                  its running mean and variance.
  neither         inference.

BatchNorm statistics come from the whole (global, sharded) batch, as synchronised BN, or,
with `bn_group_size` N > 0, from each group of N consecutive images of the batch, as
per-GPU BN under PyTorch DDP computes them (GroupBatchNorm).
"""

import functools
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fixres_jax.models.registry import ModelOptions, register_model

BN_MOMENTUM = 0.9  # == PyTorch momentum 0.1
BN_EPSILON = 1e-5

# torchvision initialises convolutions with kaiming_normal(fan_out, relu).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def apply_drop_path(block: nn.Module, y: jax.Array, train: bool) -> jax.Array:
  """Stochastic depth (timm's DropPath): in training, each image's residual branch is
  dropped with probability block.drop_path and the kept ones are scaled by 1 / keep, so the
  expectation is unchanged; at inference (and in FixRes fine-tuning) the identity. Draws from
  the 'dropout' rng."""
  if not train or block.drop_path == 0:
    return y
  keep = 1.0 - block.drop_path
  mask = jax.random.bernoulli(block.make_rng('dropout'), keep, (y.shape[0], 1, 1, 1))
  return y * (mask / keep).astype(y.dtype)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (resnet18/34)."""
  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  downsample: bool = False
  norm: Any = None  # a function (name, use_running_average) -> BatchNorm module
  drop_path: float = 0.0  # stochastic depth: the probability of dropping the residual branch
  dtype: Any = jnp.float32
  expansion = 1
  last_conv, last_bn = 'conv2', 'bn2'  # the block's output convolution and its BN

  @nn.compact
  def __call__(self, x, bn_modes, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    residual = x
    y = conv(self.planes, (3, 3), (self.stride, self.stride), padding=1, name='conv1')(x)
    y = nn.relu(self.norm('bn1', bn_modes['bn1'])(y))
    y = conv(self.planes, (3, 3), padding=1, name='conv2')(y)
    y = apply_drop_path(self, self.norm('bn2', bn_modes['bn2'], last_in_block=True)(y), train)
    if self.downsample:
      residual = conv(self.planes, (1, 1), (self.stride, self.stride), name='downsample_conv')(x)
      residual = self.norm('downsample_bn', bn_modes['downsample_bn'])(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, groups) -> 1x1 x4 (resnet50+, ResNeXt, wide ResNet)."""
  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  downsample: bool = False
  norm: Any = None
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  expansion = 4
  last_conv, last_bn = 'conv3', 'bn3'

  @nn.compact
  def __call__(self, x, bn_modes, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    width = int(self.planes * (self.base_width / 64.0)) * self.groups
    residual = x
    y = conv(width, (1, 1), name='conv1')(x)
    y = nn.relu(self.norm('bn1', bn_modes['bn1'])(y))
    y = conv(width, (3, 3), (self.stride, self.stride), padding=1,
             feature_group_count=self.groups, name='conv2')(y)
    y = nn.relu(self.norm('bn2', bn_modes['bn2'])(y))
    y = conv(self.planes * 4, (1, 1), name='conv3')(y)
    y = apply_drop_path(self, self.norm('bn3', bn_modes['bn3'], last_in_block=True)(y), train)
    if self.downsample:
      residual = conv(self.planes * 4, (1, 1), (self.stride, self.stride), name='downsample_conv')(x)
      residual = self.norm('downsample_bn', bn_modes['downsample_bn'])(residual)
    return nn.relu(y + residual)


BLOCK_BN_NAMES = ('bn1', 'bn2', 'bn3', 'downsample_bn')


class GroupBatchNorm(nn.Module):
  """BatchNorm whose batch statistics are those of each group of `group_size` images.

  The batch [B, ...] is viewed as [B / group_size, group_size, ...]; every group is
  normalised with its own mean and (biased) variance over its images and positions, as each
  GPU's BatchNorm does in PyTorch DDP without SyncBN. Under jax.jit this is a reshape of the
  global batch, so it gives the same result on any number of devices. The running statistics
  are updated with the mean over the groups of their means and variances (PyTorch momentum
  1 - `momentum`); the variance is kept biased, as flax.linen.BatchNorm keeps it. Variables
  and names are flax.linen.BatchNorm's: params scale, bias; batch_stats mean, var.
  """
  group_size: int
  use_running_average: bool = False
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if self.use_running_average:
      y = (x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    else:
      if x.shape[0] % self.group_size:
        raise ValueError(f'A batch of {x.shape[0]} images does not split into BatchNorm groups '
                         f'of {self.group_size}: make the batch a multiple of the group size.')
      groups = x32.reshape((x.shape[0] // self.group_size, self.group_size) + x.shape[1:])
      axes = tuple(range(1, groups.ndim - 1))  # images and positions, per group
      mean = jnp.mean(groups, axes, keepdims=True)
      var = jnp.mean(jnp.square(groups - mean), axes, keepdims=True)
      y = ((groups - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if not self.is_initializing():
        reduce = lambda v: jnp.mean(v.reshape(-1, features), 0)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * reduce(mean)
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * reduce(var)
    return (y * scale + bias).astype(self.dtype)


def create_head(num_classes: int, dtype: Any, name: Any = None, zero_init: bool = False
                ) -> nn.Dense:
  """The classifier on the pooled features (torchvision's `fc`); zero_init starts it at zero
  (big_vision's head_zeroinit), so the first logits are uniform whatever the input."""
  kernel_init = nn.initializers.zeros if zero_init else nn.linear.default_kernel_init
  return nn.Dense(num_classes, dtype=dtype, name=name, kernel_init=kernel_init)


class ResNet(nn.Module):
  """torchvision-layout ResNet.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for resnet50.
    block_cls: BasicBlock or Bottleneck.
    num_classes: size of the classifier `fc`.
    num_filters: planes of the first stage (64 in torchvision); stage i has num_filters * 2**i.
    groups, width_per_group: ResNeXt cardinality and group width (torchvision's arguments).
    zero_init_residual: initialise the last BN scale of every block to zero.
    zero_init_head: initialise the classifier's kernel to zero (big_vision's head_zeroinit):
      the first logits are uniform, so the first steps cannot lower the loss by silencing
      the random features (see docs/DEMO.md, which measured it on the demo network).
    drop_path_rate: stochastic depth of the last block (timm's drop_path_rate); block k of
      the n blocks drops its residual branch with probability drop_path_rate * k / (n - 1)
      in training, timm's linear rule. Training then needs a 'dropout' rng.
    bn_group_size: batch statistics over groups of this many images (0: the whole batch).
    dtype: computation dtype (e.g. bfloat16); parameters and BN statistics stay float32.
  """
  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int = 1000
  num_filters: int = 64
  groups: int = 1
  width_per_group: int = 64
  zero_init_residual: bool = False
  zero_init_head: bool = False
  drop_path_rate: float = 0.0
  bn_group_size: int = 0  # >0: batch statistics per group of this many images
  # The input's size over the last feature map's (torchvision's 32). 16 or 8 keep the last
  # stages at their input's size (stride 1, the same parameters), as DeepLab's output
  # stride: more positions to pool over at a small resolution.
  output_stride: int = 32
  dtype: Any = jnp.float32
  HEAD = 'fc'  # the classifier's parameters: a Dense layer on the pooled features

  @property
  def last_block(self) -> str:
    return f'layer{len(self.stage_sizes)}_{self.stage_sizes[-1] - 1}'

  @property
  def last_bn_path(self) -> Tuple[str, str]:
    """Path of the last BatchNorm before global pooling, e.g. ('layer4_2', 'bn3')."""
    return (self.last_block, self.block_cls.last_bn)

  @property
  def last_conv_path(self) -> Tuple[str, str]:
    """Path of the convolution whose output the last BatchNorm normalises."""
    return (self.last_block, self.block_cls.last_conv)

  @nn.compact
  def __call__(self, x, train: bool = False, finetune: bool = False,
               return_features: bool = False):
    """Args:
      x: images, [batch, height, width, 3], normalised.
      train: batch statistics in every BN (training).
      finetune: batch statistics in the last BN only (FixRes fine-tuning).
      return_features: also return the pooled features (after the final ReLU and global
        average pooling), for the feature statistics and parametric adaptation.

    Returns:
      logits [batch, num_classes] in float32, or (logits, features).
    """
    def norm(name, use_running_average, last_in_block=False):
      zero = self.zero_init_residual and last_in_block
      scale_init = nn.initializers.zeros if zero else nn.initializers.ones
      if self.bn_group_size:
        return GroupBatchNorm(self.bn_group_size, use_running_average, dtype=self.dtype,
                              name=name, scale_init=scale_init)
      return nn.BatchNorm(use_running_average=use_running_average, momentum=BN_MOMENTUM,
                          epsilon=BN_EPSILON, dtype=self.dtype, name=name,
                          scale_init=scale_init)

    x = x.astype(self.dtype)
    x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=3, use_bias=False, dtype=self.dtype,
                kernel_init=conv_init, name='conv1')(x)
    x = nn.relu(norm('bn1', not train)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    in_planes = self.num_filters
    last_block, last_bn = self.last_bn_path
    block_index, num_blocks_total = 0, sum(self.stage_sizes)
    current_stride = 4  # the stem's convolution and max pooling
    for i, num_blocks in enumerate(self.stage_sizes):
      planes = self.num_filters * 2**i
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 and current_stride < self.output_stride else 1
        current_stride *= stride
        out_planes = planes * self.block_cls.expansion
        name = f'layer{i + 1}_{j}'
        bn_modes = {bn: not (train or (finetune and (name, bn) == (last_block, last_bn)))
                    for bn in BLOCK_BN_NAMES}
        x = self.block_cls(planes, stride=stride, groups=self.groups,
                           base_width=self.width_per_group,
                           downsample=stride != 1 or in_planes != out_planes,
                           norm=norm, drop_path=self.drop_path_rate * block_index
                           / max(num_blocks_total - 1, 1),
                           dtype=self.dtype, name=name)(x, bn_modes, train)
        in_planes, block_index = out_planes, block_index + 1
    self.sow('intermediates', 'feature_map', x)  # contract.FEATURE_MAP: test-time pooling
    features = jnp.mean(x, axis=(1, 2))
    logits = create_head(self.num_classes, self.dtype, name=self.HEAD,
                         zero_init=self.zero_init_head)(features)
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, features.astype(jnp.float32)
    return logits


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}
OUTPUT_STRIDES = (4, 8, 16, 32)  # the stem alone halves twice; each later stage may once
# torchvision's architectures (and the ResNeXt / wide variants of the WSL and FixRes releases).
ARCHS = {
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


def create_resnet(num_classes: int, options: ModelOptions, **arch) -> ResNet:
  """A ResNet of layout `arch` (ResNet's fields) with config.model's options."""
  return ResNet(num_classes=num_classes, dtype=jnp.dtype(options.dtype),
                zero_init_residual=options.zero_init_residual,
                zero_init_head=options.zero_init_head, bn_group_size=options.bn_group_size,
                drop_path_rate=options.drop_path_rate, output_stride=options.output_stride,
                **arch)


for _name, _arch in ARCHS.items():
  register_model(_name)(functools.partial(create_resnet, **_arch))


@register_model('resnet')
def create_custom_resnet(num_classes: int, options: ModelOptions) -> ResNet:
  """The demo's small network: a ResNet of options.stage_sizes blocks of options.block, the
  first stage options.num_filters wide."""
  if options.block not in BLOCKS:
    raise ValueError(f'config.model.block={options.block!r}: use one of {tuple(BLOCKS)}.')
  return create_resnet(num_classes, options, stage_sizes=tuple(options.stage_sizes),
                       block_cls=BLOCKS[options.block], num_filters=options.num_filters)
