"""timm's RandAugment (timm.data.auto_augment, rand_augment_transform) in stateless TensorFlow.

Semantics, as timm's: for each of spec.num_layers layers, one op is drawn uniformly, with
replacement, from timm's 15-op list (OPS, or INCREASING_OPS with spec.increasing) and
applied with probability spec.prob. Its magnitude is spec.magnitude plus Gaussian noise of
std spec.magnitude_std (uniform in [0, magnitude] when the std is infinite), clipped to
[0, spec.magnitude_max]; a level function (LEVELS) maps it to the op's arguments as timm's
LEVEL_TO_ARG does, negating the signed ones (angle, shear, shift, the 'Increasing'
enhancement offset) with probability 1/2.

Pixels. Images are float32 [H, W, 3] holding integers in [0, 255], as PIL's uint8 images,
and every op rounds or truncates as PIL does, so that each equals timm's PIL op pixel for
pixel (tests/test_randaugment.py): the LUT ops (auto_contrast, equalize, invert, posterize,
solarize, solarize_add) by construction; the ImageEnhance blends (color, contrast,
brightness, sharpness) with PIL's float32 alpha, truncation and clipping, its 8-bit
greyscale (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16) and its SMOOTH filter, which
leaves the border pixels as they are; the affine ops (rotate, shear_x/y,
translate_x/y_rel) as PIL's BILINEAR or BICUBIC transform (Geometry.c: cubic convolution
with a = -1 over 4 x 4 neighbours, clamped to [0, 255]): the source point of each output
pixel centre in float64, neighbours clamped at the edges, truncation, and the fill colour
where the source point falls outside the image. The float arithmetic is written so that
Grappler's rewrites of tf.function graphs keep that rounding (see _scaled and _affine).

Interpolation of the affine ops (config.data.randaugment_interpolation, INTERPOLATIONS):
'bilinear', 'bicubic', or 'random', timm's train default (create_transform's
interpolation='random', train.py's --train-interpolation): each op draws bilinear or bicubic
with probability 1/2, as timm's AugmentOp draws from _RANDOM_INTERPOLATION.

Departures from timm:
- Randomness: timm draws from Python's `random` and numpy's global generator; here every
  draw comes from the `seed` tensor (tf.random.stateless_*), so the distribution is the
  same and the draws are not.
- Interpolation: the default is 'bilinear', not timm's 'random': the runs made before the
  choice existed keep their pixels; configs that follow a timm recipe set 'random'.
- Posterize to 0 bits (plain Posterize below magnitude 2.5, PosterizeIncreasing at
  magnitude 10): Pillow 13 rejects bits < 1, so timm raises there; here every channel
  becomes 0, what Pillow returned before it added that check.
- Fill: FILL, timm's img_mean for the ImageNet mean (its create_transform passes it); timm's
  own default without hparams is (128, 128, 128).
- The rotation matrix: PIL rounds its sin and cos to 15 decimals with Python's correctly
  rounded round(); _round_15 matches it except within 1e-6 of a tie in the 16th decimal,
  and TensorFlow's float64 sin and cos are libm's on the tested angles. Where either
  differed, a source point would move by ~1e-13 px: a pixel only on a truncation boundary.
"""

import math
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fixres_jax import augmentations

# timm's img_mean for the ImageNet mean: tuple(min(255, round(255 * x)) for x in mean).
FILL = tuple(min(255, round(255 * x)) for x in (0.485, 0.456, 0.406))
# The affine ops' filters (config.data.randaugment_interpolation); 'random': either, per op.
INTERPOLATIONS = augmentations.RANDAUGMENT_INTERPOLATIONS
LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is an op's full strength.
TRANSLATE_PCT = 0.45  # timm's default translate_pct (of the image side) at magnitude 10.
OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
       'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
       'TranslateYRel')  # timm's _RAND_TRANSFORMS
INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                  'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                  'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
                  'TranslateXRel', 'TranslateYRel')  # timm's _RAND_INCREASING_TRANSFORMS


def _float64(value):
  """`value` as float64; a Python float directly (tf.cast would round it to float32 first)."""
  if isinstance(value, (tf.Tensor, tf.Variable)):
    return tf.cast(value, tf.float64)
  return tf.constant(value, tf.float64)


# LUT ops: each maps every channel value through a 256-entry table, as PIL's Image.point.

def _apply_lut(image, lut):
  """`image` through `lut`, int [256] for every channel or [3, 256] one per channel."""
  lut = tf.broadcast_to(tf.cast(lut, tf.float32), [3, 256])
  index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  return tf.gather(tf.reshape(lut, [-1]), index)


def _histograms(image):
  """int32 [3, 256]: the histogram of each channel."""
  index = tf.reshape(tf.cast(image, tf.int32) + tf.constant([0, 256, 512]), [-1])
  return tf.reshape(tf.math.bincount(index, minlength=768, maxlength=768), [3, 256])


def auto_contrast(image):
  """ImageOps.autocontrast: each channel's [min, max] stretched to [0, 255]."""
  levels = tf.range(256, dtype=tf.float64)
  present = _histograms(image) > 0
  low = tf.reduce_min(tf.where(present, levels, 256.0), axis=1, keepdims=True)
  high = tf.reduce_max(tf.where(present, levels, -1.0), axis=1, keepdims=True)
  # PIL's float64 arithmetic, in its order, then int() and clipping. (DivNoNan: see _scaled.)
  scale = tf.math.divide_no_nan(255.0, tf.maximum(high - low, 1.0))
  stretched = tf.clip_by_value(tf.floor(levels * scale + -low * scale), 0.0, 255.0)
  return _apply_lut(image, tf.where(high > low, stretched, levels))


def equalize(image):
  """ImageOps.equalize: each channel's histogram equalised with PIL's integer steps."""
  histograms = _histograms(image)
  last = tf.reduce_max(tf.where(histograms > 0, tf.range(256), -1), axis=1, keepdims=True)
  count_last = tf.gather(histograms, last, batch_dims=1)
  step = (tf.reduce_sum(histograms, axis=1, keepdims=True) - count_last) // 255
  below = tf.cumsum(histograms, axis=1, exclusive=True)
  # A value above 255 (possible at the top level) is clipped as Image.point clips its LUT.
  equalized = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
  # PIL keeps a channel with one level (step 0 then) or too few pixels (step 0) unchanged.
  return _apply_lut(image, tf.where(step > 0, equalized, tf.range(256)))


def invert(image):
  """ImageOps.invert."""
  return 255.0 - image


def posterize(image, bits):
  """ImageOps.posterize: keep the `bits` high bits (8 or more: unchanged; 0 or less: 0)."""
  bits = tf.cast(bits, tf.int32)
  drop = tf.clip_by_value(8 - bits, 0, 8)
  levels = tf.range(256)
  return _apply_lut(image, levels - levels % tf.bitwise.left_shift(1, drop))


def solarize(image, threshold):
  """ImageOps.solarize: values >= threshold inverted."""
  return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image, add, threshold=128):
  """timm's solarize_add: `add` added (capped at 255) to values below threshold."""
  added = tf.minimum(image + tf.cast(add, tf.float32), 255.0)
  return tf.where(image < tf.cast(threshold, tf.float32), added, image)


# ImageEnhance: Image.blend(degenerate, image, factor).

def _blend(degenerate, image, factor):
  """Image.blend: degenerate + factor * (image - degenerate), in float32 as PIL's C code
  (its alpha is a C float), clipped to [0, 255] and truncated."""
  factor = tf.cast(factor, tf.float32)
  return tf.floor(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0))


def _grey(image):
  """PIL's RGB -> L conversion, integer [H, W, 1]."""
  weighted = tf.cast(image, tf.int32) * tf.constant([19595, 38470, 7471])
  grey = tf.bitwise.right_shift(tf.reduce_sum(weighted, axis=-1, keepdims=True) + 0x8000, 16)
  return tf.cast(grey, tf.float32)


def color(image, factor):
  """ImageEnhance.Color: a blend with the image's greyscale."""
  return _blend(_grey(image), image, factor)


def contrast(image, factor):
  """ImageEnhance.Contrast: a blend with the mean grey level, rounded as PIL's."""
  grey = tf.cast(_grey(image), tf.float64)
  mean = tf.floor(tf.reduce_sum(grey) / tf.cast(tf.size(grey), tf.float64) + 0.5)
  return _blend(tf.cast(mean, tf.float32), image, factor)


def brightness(image, factor):
  """ImageEnhance.Brightness: a blend with black."""
  return _blend(tf.zeros_like(image), image, factor)


def _smooth(image):
  """ImageFilter.SMOOTH: [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, in float32 and in PIL's
  order of sums, rounded; the one-pixel border left as it is."""
  corner, centre = np.float32(1 / 13), np.float32(5 / 13)
  padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
  height, width = tf.shape(image)[0], tf.shape(image)[1]

  def row(dy, middle):
    pixel = lambda dx: padded[dy:dy + height, dx:dx + width]
    return pixel(0) * corner + pixel(1) * middle + pixel(2) * corner

  total = 0.5 + row(2, corner) + row(1, centre) + row(0, corner)
  smoothed = tf.floor(tf.clip_by_value(total, 0.0, 255.0))
  y = tf.range(height)[:, None, None]
  x = tf.range(width)[None, :, None]
  border = (y == 0) | (y == height - 1) | (x == 0) | (x == width - 1)
  return tf.where(border, image, smoothed)


def sharpness(image, factor):
  """ImageEnhance.Sharpness: a blend with the SMOOTH-filtered image."""
  return _blend(_smooth(image), image, factor)


# Affine ops: PIL's Image.transform(AFFINE, BILINEAR or BICUBIC) with a fill colour.

def _affine(image, matrix: Sequence, fill, bicubic=False):
  """PIL's affine transform: output pixel (x, y) samples the input at (a x' + b y' + c,
  d x' + e y' + f), x' = x + 0.5, y' = y + 0.5 (pixel centres), bilinearly or bicubically.

  Args:
    image: float32 [H, W, 3], integers in [0, 255].
    matrix: (a, b, c, d, e, f), float64 scalars, PIL's `data`: output -> input.
    fill: RGB of the pixels whose source lies outside the image.
    bicubic: False (BILINEAR), True (BICUBIC), or a bool tensor choosing in the graph.
  """
  a, b, c, d, e, f = (_float64(v) for v in matrix)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  # Full-size grids: in a tf.function graph Grappler reorders a sum of terms of different
  # shapes ([1, W] + [H, 1] + []), which would round differently from PIL's.
  y_out, x_out = tf.meshgrid(tf.range(h, dtype=tf.float64) + 0.5,
                             tf.range(w, dtype=tf.float64) + 0.5, indexing='ij')
  x_in = a * x_out + b * y_out + c
  y_in = d * x_out + e * y_out + f
  inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
  x_in, y_in = x_in - 0.5, y_in - 0.5
  x0, y0 = tf.floor(x_in), tf.floor(y_in)
  dx, dy = (x_in - x0)[..., None], (y_in - y0)[..., None]
  # Clamped neighbours; only points inside the image are kept, so the clamps only matter
  # near an edge, where PIL clamps too (its rows past the edge repeat the last one read,
  # which is the clamped row).
  x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  pixels = tf.cast(image, tf.float64)

  def at(dy_index, dx_index):
    rows = tf.clip_by_value(y0 + dy_index, 0, height - 1)
    columns = tf.clip_by_value(x0 + dx_index, 0, width - 1)
    return tf.gather_nd(pixels, tf.stack([rows, columns], axis=-1))

  def bilinear():
    top = at(0, 0) + (at(0, 1) - at(0, 0)) * dx
    bottom = at(1, 0) + (at(1, 1) - at(1, 0)) * dx
    return tf.floor(top + (bottom - top) * dy)

  def cubic():
    rows = [_cubic(*(at(i, j) for j in (-1, 0, 1, 2)), dx) for i in (-1, 0, 1, 2)]
    # PIL's C cast truncates what its clamp to [0, 255] leaves.
    return tf.floor(tf.clip_by_value(_cubic(*rows, dy), 0.0, 255.0))

  if isinstance(bicubic, bool):
    value = cubic() if bicubic else bilinear()
  else:
    value = tf.cond(bicubic, cubic, bilinear)
  return tf.where(inside[..., None], tf.cast(value, tf.float32), tf.constant(fill, tf.float32))


def _cubic(v1, v2, v3, v4, d):
  """PIL's BICUBIC macro (cubic convolution with a = -1) between v2 and v3, `d` past v2."""
  p2 = -v1 + v3
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def _round_15(x):
  """Python's round(x, 15) for float64 |x| <= 1, ties aside: the nearest multiple of 1e-15.

  Not tf.round(x * 1e15) / 1e15: that product is rounded to a multiple of 1/8 and so
  rounds about 1 value in 20 of sin and cos the other way. Here x * 1e15 is formed in two
  parts, a high one exact and a low one with an error below 1e-6, which matters only that
  close to a tie (none among 200,000 angles checked against Python's round).
  """
  high = tf.round(x * 2.0**17) / 2.0**17  # 17 bits: high * 1e15 has <= 52 and is exact.
  scaled_high, scaled_low = high * 1e15, (x - high) * 1e15
  whole = tf.floor(scaled_high) + tf.floor(scaled_low)
  fraction = (scaled_high - tf.floor(scaled_high)) + (scaled_low - tf.floor(scaled_low))
  # DivNoNan, not /: Grappler would fold the 1e15 into a later product by a constant.
  return tf.math.divide_no_nan(whole + tf.floor(fraction + 0.5), 1e15)


def rotate(image, degrees, fill=FILL, bicubic=False):
  """Image.rotate(degrees, BILINEAR or BICUBIC, fillcolor=fill): counter-clockwise about the
  centre."""
  angle = -tf.math.floormod(_float64(degrees), 360.0) * (math.pi / 180)
  cos, sin = _round_15(tf.cos(angle)), _round_15(tf.sin(angle))  # PIL's: cos(90) is 0.
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  cx, cy = tf.cast(width, tf.float64) / 2, tf.cast(height, tf.float64) / 2
  # PIL's matrix: rotation about the centre, output -> input.
  c = cos * -cx + sin * -cy + 0.0 + cx
  f = -sin * -cx + cos * -cy + 0.0 + cy
  return _affine(image, (cos, sin, c, -sin, cos, f), fill, bicubic)


def shear_x(image, factor, fill=FILL, bicubic=False):
  """timm's shear_x: input x = x + factor * y."""
  return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill, bicubic)


def shear_y(image, factor, fill=FILL, bicubic=False):
  """timm's shear_y: input y = y + factor * x."""
  return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill, bicubic)


def translate_x_rel(image, pct, fill=FILL, bicubic=False):
  """timm's translate_x_rel: input x = x + pct * width (the image moves left for pct > 0)."""
  pixels = _float64(pct) * tf.cast(tf.shape(image)[1], tf.float64)
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill, bicubic)


def translate_y_rel(image, pct, fill=FILL, bicubic=False):
  """timm's translate_y_rel: input y = y + pct * height."""
  pixels = _float64(pct) * tf.cast(tf.shape(image)[0], tf.float64)
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill, bicubic)


# Level functions: magnitude (float64 scalar, 0-10 scale) and `negate` (bool, timm's
# random.random() > 0.5) -> the op's arguments, timm's arithmetic in timm's order.

def _scaled(magnitude, scale):
  """timm's (magnitude / 10) * scale, rounded as in Python.

  DivNoNan and MulNoNan (/ and * for a nonzero divisor and finite values): in a tf.function
  graph Grappler's constant push-down rewrites x / 10 * scale as x * (scale / 10), which
  rounds differently (and int((7.5 / 10) * 4) must stay 3).
  """
  return tf.math.multiply_no_nan(tf.math.divide_no_nan(magnitude, LEVEL_DENOM), scale)


def _signed(value, negate):
  return tf.where(negate, -value, value)


def _rotate_level(magnitude, negate):
  return (_signed(_scaled(magnitude, 30.0), negate),)


def _enhance_level(magnitude, negate):
  del negate
  return (_scaled(magnitude, 1.8) + 0.1,)


def _enhance_increasing_level(magnitude, negate):
  return (tf.maximum(1.0 + _signed(_scaled(magnitude, 0.9), negate), 0.1),)


def _shear_level(magnitude, negate):
  return (_signed(_scaled(magnitude, 0.3), negate),)


def _translate_rel_level(magnitude, negate):
  return (_signed(_scaled(magnitude, TRANSLATE_PCT), negate),)


def _truncate(value):
  return tf.cast(value, tf.int32)  # Python's int(): towards zero.


def _posterize_level(magnitude, negate):
  del negate
  return (_truncate(_scaled(magnitude, 4.0)),)


def _posterize_increasing_level(magnitude, negate):
  return (4 - _posterize_level(magnitude, negate)[0],)


def _solarize_level(magnitude, negate):
  del negate
  return (tf.minimum(_truncate(_scaled(magnitude, 256.0)), 256),)


def _solarize_increasing_level(magnitude, negate):
  return (256 - _solarize_level(magnitude, negate)[0],)


def _solarize_add_level(magnitude, negate):
  del negate
  return (tf.minimum(_truncate(_scaled(magnitude, 110.0)), 128),)


def _no_level(magnitude, negate):
  del magnitude, negate
  return ()


# Name -> (op, level function), as timm's NAME_TO_OP and LEVEL_TO_ARG.
OP_TABLE: Dict[str, Tuple[Callable, Callable]] = {
    'AutoContrast': (auto_contrast, _no_level),
    'Equalize': (equalize, _no_level),
    'Invert': (invert, _no_level),
    'Rotate': (rotate, _rotate_level),
    'Posterize': (posterize, _posterize_level),
    'PosterizeIncreasing': (posterize, _posterize_increasing_level),
    'Solarize': (solarize, _solarize_level),
    'SolarizeIncreasing': (solarize, _solarize_increasing_level),
    'SolarizeAdd': (solarize_add, _solarize_add_level),
    'Color': (color, _enhance_level),
    'ColorIncreasing': (color, _enhance_increasing_level),
    'Contrast': (contrast, _enhance_level),
    'ContrastIncreasing': (contrast, _enhance_increasing_level),
    'Brightness': (brightness, _enhance_level),
    'BrightnessIncreasing': (brightness, _enhance_increasing_level),
    'Sharpness': (sharpness, _enhance_level),
    'SharpnessIncreasing': (sharpness, _enhance_increasing_level),
    'ShearX': (shear_x, _shear_level),
    'ShearY': (shear_y, _shear_level),
    'TranslateXRel': (translate_x_rel, _translate_rel_level),
    'TranslateYRel': (translate_y_rel, _translate_rel_level),
}
LEVELS = {name: level for name, (_, level) in OP_TABLE.items()}
_TAKE_FILL = (rotate, shear_x, shear_y, translate_x_rel, translate_y_rel)


def op_names(spec: augmentations.RandAugmentSpec) -> Tuple[str, ...]:
  """The ops `spec` draws from, in timm's order (the index sample_layers returns)."""
  return INCREASING_OPS if spec.increasing else OPS


def sample_layers(seed, spec: augmentations.RandAugmentSpec):
  """The random choices of rand_augment, one per layer.

  Returns:
    (int32 [n] op indices into op_names(spec), uniform; bool [n] applied, each with
    probability spec.prob; float64 [n] magnitudes; bool [n] negate, each with probability
    1/2), n = spec.num_layers.
  """
  n = spec.num_layers
  choice_seed, apply_seed, noise_seed, sign_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  index = tf.random.stateless_uniform([n], choice_seed, 0, len(op_names(spec)), tf.int32)
  # timm skips an op when random.random() > prob: applied with probability prob.
  applied = tf.random.stateless_uniform([n], apply_seed, dtype=tf.float64) < spec.prob
  magnitude = tf.fill([n], tf.constant(spec.magnitude, tf.float64))
  if spec.magnitude_std == math.inf:
    magnitude = tf.random.stateless_uniform([n], noise_seed, 0, spec.magnitude, tf.float64)
  elif spec.magnitude_std > 0:
    magnitude += spec.magnitude_std * tf.random.stateless_normal([n], noise_seed,
                                                                 dtype=tf.float64)
  magnitude = tf.clip_by_value(magnitude, 0.0, float(spec.magnitude_max))
  negate = tf.random.stateless_uniform([n], sign_seed, dtype=tf.float64) > 0.5
  return index, applied, magnitude, negate


def apply_op(image, name: str, magnitude, negate, fill=FILL, bicubic=False):
  """timm's AugmentOp `name` at `magnitude` (already noisy and clipped), always applied;
  `bicubic` (a bool or a bool tensor) is the affine ops' filter, bilinear when False."""
  op, level = OP_TABLE[name]
  kwargs = {'fill': fill, 'bicubic': bicubic} if op in _TAKE_FILL else {}
  return op(image, *level(_float64(magnitude), negate), **kwargs)


def sample_bicubic(seed, num_layers: int, interpolation: str):
  """Whether each layer's affine op filters bicubically: a Python bool for 'bilinear' and
  'bicubic'; for 'random', bool [num_layers], each True with probability 1/2, drawn from its
  own stream of `seed` (the other draws stay those of sample_layers)."""
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'config.data.randaugment_interpolation={interpolation!r}: use one of '
                     f'{INTERPOLATIONS}.')
  if interpolation != 'random':
    return interpolation == 'bicubic'
  draw_seed = tf.random.experimental.stateless_fold_in(seed, 1)
  return tf.random.stateless_uniform([num_layers], draw_seed, dtype=tf.float64) < 0.5


def rand_augment(image, seed, spec: augmentations.RandAugmentSpec, fill=FILL,
                 interpolation: str = 'bilinear'):
  """timm's RandAugment(spec) on a float32 [H, W, 3] image of integers in [0, 255].

  Stateless: the int [2] `seed` decides every choice (sample_layers, sample_bicubic). Works
  eagerly and in graphs (tf.data .map); only the drawn op of each layer runs
  (tf.switch_case).

  Args:
    interpolation: the affine ops' filter, one of INTERPOLATIONS.

  Returns:
    float32 [H, W, 3], integers in [0, 255].
  """
  names = op_names(spec)
  indices, applied, magnitudes, negates = sample_layers(seed, spec)
  bicubic = sample_bicubic(seed, spec.num_layers, interpolation)
  # An op that is not applied becomes the extra last branch, the identity.
  indices = tf.where(applied, indices, len(names))

  def layer(i, image):
    layer_bicubic = bicubic if isinstance(bicubic, bool) else bicubic[i]
    branches = [lambda name=name: apply_op(image, name, magnitudes[i], negates[i], fill,
                                           layer_bicubic)
                for name in names]
    return i + 1, tf.switch_case(indices[i], branches + [lambda: image])

  # A loop, not a Python one: the graph holds the ops once, however many layers.
  return tf.while_loop(lambda i, _: i < spec.num_layers, layer, (0, image))[1]
