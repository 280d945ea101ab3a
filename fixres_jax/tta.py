"""Test-time augmentation: several views of each test image, their logits averaged; and timm's
test-time pooling for a network evaluated above its training resolution.

A TTA is named by a string (config.sweep.tta): 'none', or parts joined by '+':
  'flip'             every view and its mirror image (the input tensor flipped left-right).
  'five_crop'        torchvision's FiveCrop(K) after the test transform's resize: the four
                     corner K x K crops and the central one of the resized image.
  'ten_crop'         torchvision's TenCrop(K): the five crops, and the five of the mirrored
                     resized image (the FixRes authors' iNaturalist entry, Contest/transforms.py).
  'multiscale:F,...' the test transform at round(F * K_test) for each factor F, e.g.
                     'multiscale:0.8,1,1.2'. Factors, not sizes, so that a sweep over K_test
                     moves every scale with it.
  'test_time_pool'   timm's TestTimePoolHead (timm/layers/test_time_pool.py): the final
                     feature map average-pooled with the window it had at K_train (stride 1),
                     the classifier applied at every position (a 1x1 convolution), then the
                     mean and the max of that logit map averaged. At or below K_train the
                     window covers the whole map: the plain network.
e.g. 'multiscale:0.8,1,1.2+flip' or 'test_time_pool+flip'.

Averaging. The views' logits are averaged, not their softmax: the FixRes authors' ten-crop
multi-resolution entry averages the networks' raw outputs over crops and over resolutions
(Contest/fixres_INat.py), as torchvision's TenCrop example does; top-1, NLL and ECE are then
those of the averaged logits.

Cost. forward_passes is the number of forward passes per image; relative_flops weighs each by
its pixels, (K_view / K_test)^2, so it is the compute relative to one pass at K_test
(test-time pooling adds only the classifier at each position: 1 pass, ~1x).

Who makes what. Crops and scales come from the input pipeline (data/views.py: an image as
[K, K, 3], [crops, K, K, 3], or a tuple over scales); mirrors and pooling happen here, on the
device, one view at a time (lax.map), so the activations of one view are alive at once. This
module imports no TensorFlow.
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fixres_jax import latency
from fixres_jax import models
from fixres_jax import parametric
from fixres_jax.models import contract

NONE = 'none'
PARTS = ('flip', 'five_crop', 'ten_crop', 'multiscale:F1,F2,...', 'test_time_pool')
CROPS = {'five_crop': 5, 'ten_crop': 10}


@dataclasses.dataclass(frozen=True)
class TestTimeAugment:
  """A parsed TTA name (hashable: a static argument of the jitted step).

  Attributes:
    name: as given, e.g. 'ten_crop'.
    crops: views per scale the pipeline makes: 1 (the test view), 5 (FiveCrop), 10 (TenCrop).
    flip: also every view's mirror image.
    scales: factors of K_test, one test transform each.
    pool: timm's test-time pooling.
    pool_window: its window (the feature map's size at K_train), set by for_model.
  """
  __test__ = False  # not a pytest class, whatever its name
  name: str = NONE
  crops: int = 1
  flip: bool = False
  scales: Tuple[float, ...] = (1.0,)
  pool: bool = False
  pool_window: Tuple[int, ...] = ()

  @property
  def forward_passes(self) -> int:
    """Forward passes per image."""
    return len(self.scales) * self.crops * (2 if self.flip else 1)

  @property
  def data_views(self) -> bool:
    """Whether the input pipeline makes more than the test view."""
    return self.crops > 1 or self.scales != (1.0,)

  def sizes(self, test_res: int) -> Tuple[int, ...]:
    """The views' K at the sweep's K_test."""
    return tuple(scaled_size(test_res, f) for f in self.scales)

  def relative_flops(self, test_res: int) -> float:
    """Compute per image relative to one forward pass at K_test."""
    per_scale = self.crops * (2 if self.flip else 1)
    return per_scale * sum((k / test_res)**2 for k in self.sizes(test_res))


PLAIN = TestTimeAugment()


def scaled_size(test_res: int, factor: float) -> int:
  return max(1, int(round(test_res * factor)))


def parse(name: str) -> TestTimeAugment:
  """The TestTimeAugment `name` describes (module docstring).

  Raises:
    ValueError: naming what is wrong and the names allowed.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f'config.sweep.tta={name!r}: use {NONE!r} or parts of {PARTS} joined by '
                     "'+', e.g. 'ten_crop' or 'multiscale:0.8,1,1.2+flip'.")
  if name.strip() == NONE:
    return PLAIN
  fields, seen = {}, set()
  for part in (p.strip() for p in name.split('+')):
    kind = part.split(':')[0]
    if kind in seen:
      raise ValueError(f'config.sweep.tta={name!r} names {kind!r} twice: name it once.')
    seen.add(kind)
    if part == 'flip':
      fields['flip'] = True
    elif part in CROPS:
      fields['crops'] = CROPS[part]
    elif part == 'test_time_pool':
      fields['pool'] = True
    elif kind == 'multiscale':
      fields['scales'] = parse_factors(name, part)
    else:
      raise ValueError(f'config.sweep.tta={name!r}: {part!r} is not a test-time augmentation; '
                       f"use {NONE!r} or parts of {PARTS} joined by '+'.")
  if {'five_crop', 'ten_crop'} <= seen:
    raise ValueError(f"config.sweep.tta={name!r}: five_crop and ten_crop are two crop sets; "
                     'name one (ten_crop is five_crop+flip, with its own mirrored centre).')
  if {'ten_crop', 'flip'} <= seen:
    raise ValueError(f"config.sweep.tta={name!r}: ten_crop already holds the mirror images; "
                     "drop 'flip'.")
  return TestTimeAugment(name=name, **fields)


def parse_factors(name: str, part: str) -> Tuple[float, ...]:
  """The factors of 'multiscale:F1,F2,...'."""
  try:
    factors = tuple(float(f) for f in part.split(':', 1)[1].split(','))
  except (IndexError, ValueError):
    factors = ()
  if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
    raise ValueError(f"config.sweep.tta={name!r}: {part!r} needs positive factors of K_test, "
                     "e.g. 'multiscale:0.8,1,1.2'.")
  if len(set(factors)) != len(factors):
    raise ValueError(f'config.sweep.tta={name!r}: {part!r} repeats a factor; give each once.')
  return factors


def problems(name, max_size: Optional[int] = None, test_resolutions: Sequence[int] = ()
             ) -> list:
  """What is wrong with config.sweep.tta (none when it is usable): its grammar, and scales
  above max_size px at any of test_resolutions."""
  try:
    spec = parse(name)
  except ValueError as e:
    return [str(e)]
  too_large = [k for r in test_resolutions for k in spec.sizes(r) if max_size and k > max_size]
  if too_large:
    return [f'config.sweep.tta={name!r} evaluates at {max(too_large)} px, above {max_size} px: '
            'use smaller factors or K_test.']
  return []


def for_model(spec: TestTimeAugment, model, train_res: int) -> TestTimeAugment:
  """`spec` with test-time pooling's window: the model's feature map size at K_train (timm's
  pretrained 'pool_size', 7 x 7 for a ResNet at 224)."""
  if not spec.pool:
    return spec
  return dataclasses.replace(spec, pool_window=feature_map_size(model, train_res))


def feature_map_size(model, image_size: int) -> Tuple[int, int]:
  """(height, width) of the model's final feature map at image_size, from shapes alone."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

  def feature_map(x):
    return contract.apply_with_feature_map(model, model.init(jax.random.key(0), x), x)[2]

  return tuple(jax.eval_shape(feature_map, images).shape[1:3])


def view_groups(images) -> list:
  """The pipeline's views as a list (one per scale) of [batch, views, K, K, 3]."""
  groups = images if isinstance(images, (tuple, list)) else (images,)
  return [g[:, None] if g.ndim == 4 else g for g in groups]


def pool_logits(model, head_params: dict, feature_map: jax.Array, window: Sequence[int],
                adapt=None) -> jax.Array:
  """timm's TestTimePoolHead on a feature map [B, h, w, F]: average pooling with `window`
  (clipped to the map) at stride 1, the classifier at every position, then the mean of the
  average and the max over positions. `adapt` maps the pooled features first (parametric)."""
  size = (min(window[0], feature_map.shape[1]), min(window[1], feature_map.shape[2]))
  pooled = nn.avg_pool(feature_map, size, strides=(1, 1), padding='VALID')
  if adapt is not None:
    pooled = adapt(pooled)
  logit_map = models.apply_head(model, head_params, pooled)  # Dense = a 1x1 convolution
  return 0.5 * (jnp.mean(logit_map, axis=(1, 2)) + jnp.max(logit_map, axis=(1, 2)))


def forward_view(model, variables: dict, images: jax.Array, spec: TestTimeAugment,
                 adaptation=None) -> dict:
  """One view: {'logits', 'features'} and, with an adaptation, {'adapted_logits',
  'adapted_features'} (parametric.adapt_features on the pooled features)."""
  head = variables['params'][model.HEAD]
  adapt = None if adaptation is None else lambda f: parametric.adapt_features(f, *adaptation)
  if spec.pool:
    _, features, feature_map = contract.apply_with_feature_map(model, variables, images)
    out = {'logits': pool_logits(model, head, feature_map, spec.pool_window), 'features': features}
    if adapt is not None:
      out['adapted_logits'] = pool_logits(model, head, feature_map, spec.pool_window, adapt)
  else:
    logits, features = model.apply(variables, images, train=False, return_features=True)
    out = {'logits': logits, 'features': features}
    if adapt is not None:
      out['adapted_logits'] = models.apply_head(model, head, adapt(features))
  if adapt is not None:
    out['adapted_features'] = adapt(features)
  return out


def forward(model, variables: dict, images, spec: TestTimeAugment = PLAIN,
            adaptation=None) -> dict:
  """The TTA's outputs for a batch of images as the pipeline made them (view_groups).

  Returns:
    forward_view's dict: the logits averaged over every view; the features (and adapted
    features) those of the first view (the central crop of the first scale, unmirrored), so
    that with the factor 1 first the feature statistics are the plain test view's.
  """
  outputs = []
  for group in view_groups(images):
    views = jnp.moveaxis(group, 1, 0)  # [views, batch, K, K, 3]
    if spec.flip:  # NHWC per view: width is axis 3 of the stack
      views = jnp.concatenate([views, jnp.flip(views, axis=3)])
    if views.shape[0] == 1:
      outputs.append(jax.tree.map(lambda x: x[None],
                                  forward_view(model, variables, views[0], spec, adaptation)))
    else:
      outputs.append(jax.lax.map(
          lambda x: forward_view(model, variables, x, spec, adaptation), views))
  first = jax.tree.map(lambda x: x[0], outputs[0])
  if len(outputs) == 1 and outputs[0]['logits'].shape[0] == 1:
    return first
  for key in ('logits', 'adapted_logits'):
    if key in first:
      first[key] = jnp.mean(jnp.concatenate([o[key] for o in outputs]), axis=0)
  return first


def describe(spec: TestTimeAugment, test_res: int) -> dict:
  """What a record says of its TTA: {'tta', 'forward_passes', 'relative_flops'}."""
  return {'tta': spec.name, 'forward_passes': spec.forward_passes,
          'relative_flops': round(spec.relative_flops(test_res), 4)}


def time_forward(model, variables: dict, spec: TestTimeAugment, test_res: int,
                 batch_size: int, dtype: str = 'float32') -> dict:
  """latency.time_forward of every forward pass of `spec` at K_test: each view size timed
  once, counted once per view of that size (test-time pooling is timed as the plain pass,
  whose cost it keeps)."""
  per_size = spec.crops * (2 if spec.flip else 1)
  timings = [latency.time_forward(model, variables, k, batch_size, dtype)
             for k in spec.sizes(test_res)]
  if per_size == 1 and len(timings) == 1:
    return timings[0]
  ms_per_image = per_size * sum(t['ms_per_image'] for t in timings)
  return {**timings[0], 'test_res': int(test_res), 'ms_per_image': ms_per_image,
          'images_per_second': 1000 / ms_per_image, 'ms_per_batch': ms_per_image * batch_size}
