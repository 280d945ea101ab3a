"""Renders the embedded dataset's images: one textured object on a cluttered background.

Pure NumPy (and Pillow for resizing and JPEG), no TensorFlow, so a scene can be drawn and
inspected anywhere. Everything random comes from the `np.random.Generator` passed in.

The class is the texture filling the object: two random colours (independent of the label,
so colour never gives the class away) in one of ten patterns that are recognisable from a
local patch. Every pattern is horizontal-flip invariant as a class (a flip turns +45 degree
stripes into -45 degree ones, so both belong to 'diagonal_stripes'), because training
flips images at random.

Why apparent size matters. A texture has a fixed number of cycles across its object (8 to
16), not a fixed period in pixels, so its period is object size / cycles: the texture is as
fine as the object is small. A network trained on RandomResizedCrops sees objects, and so
textures, magnified compared with the test transform, which is the train/test resolution
discrepancy FixRes corrects; at low test resolutions the textures of small objects approach
the Nyquist limit, and low-contrast ones drown in noise and JPEG artefacts.

Looks. Images are 128-192 px on the short side with aspect ratios between 3:4 and 4:3 in
both orientations. The background is a smooth colour field with blurred shapes (drawn at
1/4 resolution, then upsampled) and a few sharp flat-coloured distractors, so neither edges
nor colour locate the object; the object gets a soft lighting gradient, the image sensor
noise of random strength, and the JPEG encoding a random quality.

Difficulty. A Style holds every range a scene is drawn from (DEFAULT_STYLE is the dataset's):
more cycles, smaller objects or less contrast make recognition depend more on resolution. The
texture's share of the image also sets how soon a network learns at all. With textures of
12-72 grey levels on objects 0.2-0.8 of the short side (version 1.0.0) the demo network sat
at chance level for a third of its training or more; doubling the contrast (2.0.0) shortened
that to about an epoch. Objects 0.4-0.9 of the short side with 8-16 cycles (3.0.0) cover more
of each crop with texture, whose periods are a little finer than before (0.056 of the short
side on average, was 0.087), and the network leaves chance within two thirds of an epoch
(docs/DEMO.md measures each step, over seeds). Version 4.0.0 draws the same scenes on images
128-192 px on the short side (was 200-320): the demo trains at 48 px instead of 64, leaves
chance within the first epoch, and the images cost less to draw and to decode.

Shifts. SHIFTS holds styles that change one range of DEFAULT_STYLE: more sensor noise, lower
JPEG quality, a Gaussian blur, smaller objects. Drawn from the same random streams, a shifted
image is the same scene of the same class, met under other conditions: the builder's shift_*
configs render the validation images that way, test sets of a deployment's shifts.
"""

import dataclasses
import functools
import io
import math
from typing import Tuple

import numpy as np
from PIL import Image
from PIL import ImageFilter

CLASS_NAMES = (
    'horizontal_stripes', 'vertical_stripes', 'diagonal_stripes', 'zigzag', 'checkerboard',
    'dots', 'hex_dots', 'grid', 'rings', 'blobs')
NUM_CLASSES = len(CLASS_NAMES)
SHAPES = ('ellipse', 'rectangle', 'blob')


_BACKGROUND_SCALE = 4  # the blurred background is drawn at 1/4 resolution
_NOISE_TILE = 512  # larger than any image side (192 * 4 / 3 = 256)


@dataclasses.dataclass(frozen=True)
class Style:
  """The ranges a scene's random draws come from: what makes a dataset easy or hard.

  Every draw takes the same random numbers whatever its range, so two styles render the same
  scenes (layout, colours, shapes) with only the ranged quantities changed.

  Attributes:
    short_side: image short side in pixels.
    aspect_ratio: width / height, log-uniform.
    object_size: object size (geometric-mean diameter) / image short side.
    cycles: texture periods across the object size.
    texture_contrast: luminance difference of the texture's two colours, grey levels.
    noise_std: per-image sensor noise, grey levels.
    jpeg_quality: JPEG quality, uniform over the integers in the range.
    blur: standard deviation of a Gaussian blur before the JPEG encoding, pixels; (0, 0):
      none, and no random number is drawn for it (DEFAULT_STYLE's images stay as they were).
  """
  short_side: Tuple[int, int] = (128, 192)
  aspect_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
  object_size: Tuple[float, float] = (0.4, 0.9)
  cycles: Tuple[float, float] = (8.0, 16.0)
  texture_contrast: Tuple[float, float] = (24.0, 144.0)
  noise_std: Tuple[float, float] = (2.0, 6.0)
  jpeg_quality: Tuple[int, int] = (70, 95)
  blur: Tuple[float, float] = (0.0, 0.0)


DEFAULT_STYLE = Style()
# What a deployed model may meet that training did not show it; each changes one range.
SHIFTS = {
    'noise': dataclasses.replace(DEFAULT_STYLE, noise_std=(12.0, 24.0)),
    'jpeg': dataclasses.replace(DEFAULT_STYLE, jpeg_quality=(8, 25)),
    'blur': dataclasses.replace(DEFAULT_STYLE, blur=(1.5, 3.0)),
    # Half the apparent size, and so half the texture period: the resolution FixRes adapts.
    'small': dataclasses.replace(DEFAULT_STYLE, object_size=(0.2, 0.45)),
}


@dataclasses.dataclass(frozen=True)
class Shape:
  """An outline in image pixels with a soft lighting gradient.

  Attributes:
    center: (y, x) in pixels.
    size: geometric-mean diameter in pixels, the square root of the product of the axes.
    elongation: ratio of the two axes (> 1: longer along `angle`).
    angle: orientation in radians.
    kind: one of SHAPES.
    harmonics: complex amplitudes of a 'blob' outline's harmonics 2, 3 and 4.
    light: (gy, gx), the relative brightness change across `size`.
  """
  center: Tuple[float, float]
  size: float
  elongation: float
  angle: float
  kind: str
  harmonics: Tuple[complex, ...]
  light: Tuple[float, float]

  @property
  def half_extent(self) -> Tuple[float, float]:
    """Half-height and half-width of the shape's bounding box, in pixels."""
    a = 0.5 * self.size * math.sqrt(self.elongation)
    b = 0.5 * self.size / math.sqrt(self.elongation)
    cos, sin = abs(math.cos(self.angle)), abs(math.sin(self.angle))
    if self.kind == 'rectangle':
      return a * sin + b * cos, a * cos + b * sin
    # An ellipse's box; a blob's radius is at most 1 + sum |harmonics| times the ellipse's.
    scale = 1 + sum(abs(c) for c in self.harmonics) if self.kind == 'blob' else 1
    return (scale * math.hypot(a * sin, b * cos), scale * math.hypot(a * cos, b * sin))


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """The textured object that defines an image's class.

  Attributes:
    label: class index into CLASS_NAMES (the texture).
    shape: its outline.
    cycles: texture periods across shape.size.
    texture_angle: texture orientation in radians (a jitter around the class's own).
    phase: texture offset in cycles, (u, v).
    colors: float32 [2, 3], the texture's two RGB colours.
  """
  label: int
  shape: Shape
  cycles: float
  texture_angle: float
  phase: Tuple[float, float]
  colors: np.ndarray

  @property
  def period(self) -> float:
    """Texture period in pixels: proportional to the object's size."""
    return self.shape.size / self.cycles


def sample_image_size(rng: np.random.Generator, style: Style = DEFAULT_STYLE
                      ) -> Tuple[int, int]:
  """(height, width): short side uniform in style.short_side, aspect log-uniform in
  style.aspect_ratio."""
  short = int(rng.integers(style.short_side[0], style.short_side[1] + 1))
  low, high = style.aspect_ratio
  aspect = math.exp(rng.uniform(math.log(low), math.log(high)))
  if aspect >= 1:
    return short, int(round(short * aspect))
  return int(round(short / aspect)), short


def sample_color(rng: np.random.Generator) -> np.ndarray:
  """A random RGB colour, float32 [3], desaturated towards grey by a random amount."""
  rgb = rng.uniform(0, 255, size=3)
  grey = rgb.mean()
  return (grey + rng.uniform(0.2, 1.0) * (rgb - grey)).astype(np.float32)


def sample_colors(rng: np.random.Generator,
                  contrast_range: Tuple[float, float] = DEFAULT_STYLE.texture_contrast
                  ) -> np.ndarray:
  """Two random colours, float32 [2, 3], whose luminances differ by a random contrast.

  Low-contrast textures are the first to vanish under downsampling, noise and JPEG, which
  makes recognition depend on resolution (and keeps the task from being trivial).
  """
  first, second = sample_color(rng), sample_color(rng)
  contrast = rng.uniform(*contrast_range) * rng.choice([-1, 1])
  # Shift the second colour along grey to set the luminance difference; clipping at 0 or
  # 255 can only lower it.
  second += _luma(first) + contrast - _luma(second)
  return np.clip(np.stack([first, second]), 0, 255)


def _luma(rgb: np.ndarray) -> float:
  return float(rgb @ np.array([0.299, 0.587, 0.114], np.float32))


def sample_shape(rng: np.random.Generator, height: int, width: int,
                 size_range: Tuple[float, float], inside: bool = True,
                 max_elongation: float = 1.65) -> Shape:
  """A random outline of size_range * the short side in a height x width image.

  Args:
    inside: keep the shape's mean radius inside the image (elongated tips may be cut off);
      otherwise the centre is anywhere in the image.
  """
  size = rng.uniform(*size_range) * min(height, width)
  if inside:
    margin_y, margin_x = min(size / 2, height / 2), min(size / 2, width / 2)
  else:
    margin_y = margin_x = 0
  center = (rng.uniform(margin_y, height - margin_y), rng.uniform(margin_x, width - margin_x))
  log_e = math.log(max_elongation)
  return Shape(
      center=center, size=size, elongation=math.exp(rng.uniform(-log_e, log_e)),
      angle=rng.uniform(0, math.pi), kind=SHAPES[rng.integers(len(SHAPES))],
      harmonics=tuple(complex(*xy) for xy in rng.normal(0, 0.08, size=(3, 2))),
      light=tuple(rng.uniform(-0.3, 0.3, size=2)))


def sample_object(rng: np.random.Generator, label: int, height: int, width: int,
                  style: Style = DEFAULT_STYLE) -> ObjectSpec:
  """A random object of class `label` placed (mostly) inside a height x width image."""
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f'label must be in [0, {NUM_CLASSES}), got {label}.')
  shape = sample_shape(rng, height, width, style.object_size)
  texture_angle = rng.uniform(-10, 10)
  if CLASS_NAMES[label] == 'diagonal_stripes':
    texture_angle += rng.choice([-45, 45])
  return ObjectSpec(
      label=label, shape=shape, cycles=rng.uniform(*style.cycles),
      texture_angle=math.radians(texture_angle), phase=tuple(rng.uniform(0, 1, size=2)),
      colors=sample_colors(rng, style.texture_contrast))


def render_example(rng: np.random.Generator, label: int, style: Style = DEFAULT_STYLE
                   ) -> Tuple[np.ndarray, ObjectSpec]:
  """Draws one image of class `label` in `style`.

  Returns:
    (image, object): uint8 [H, W, 3] and the ObjectSpec of the object drawn in it.
  """
  height, width = sample_image_size(rng, style)
  canvas = draw_background(rng, height, width)
  obj = sample_object(rng, label, height, width, style)
  draw_object(canvas, obj, rng)
  add_noise(canvas, rng, style.noise_std)
  return np.clip(canvas, 0, 255).astype(np.uint8), obj


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of a uint8 [H, W, 3] image."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def render_jpeg(rng: np.random.Generator, label: int, style: Style = DEFAULT_STYLE
                ) -> Tuple[bytes, ObjectSpec]:
  """render_example, blurred by style.blur, encoded at a random JPEG quality in
  style.jpeg_quality."""
  image, obj = render_example(rng, label, style)
  quality = int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
  if style.blur[1] > 0:  # drawn last, so that every earlier draw is the unblurred scene's
    radius = float(rng.uniform(*style.blur))
    image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
  return encode_jpeg(image, quality), obj


# Background.


def draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Float32 [H, W, 3] clutter: a blurred colour field and shapes, then sharp distractors."""
  small_h = -(-height // _BACKGROUND_SCALE)
  small_w = -(-width // _BACKGROUND_SCALE)
  grid_shape = (int(rng.integers(2, 5)), int(rng.integers(2, 5)))
  grid = np.array([[sample_color(rng) for _ in range(grid_shape[1])]
                   for _ in range(grid_shape[0])])
  small = _resize(grid, small_h, small_w)
  for _ in range(int(rng.integers(3, 9))):
    _draw_flat_shape(small, rng, blur=1.5)
  canvas = _resize(small, height, width)
  for _ in range(int(rng.integers(1, 4))):
    _draw_flat_shape(canvas, rng, blur=0.5)
  return canvas


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of a float [h, w, 3] image in [0, 255] (in C, via Pillow)."""
  pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  return np.asarray(pil.resize((width, height), Image.BICUBIC), dtype=np.float32)


def _draw_flat_shape(canvas: np.ndarray, rng: np.random.Generator, blur: float):
  """A random untextured shape anywhere in the canvas, in one colour."""
  shape = sample_shape(rng, *canvas.shape[:2], (0.1, 0.6), inside=False, max_elongation=2.2)
  _fill(canvas, shape, sample_color(rng), blur)


@functools.cache
def _noise_tile() -> np.ndarray:
  """Unit Gaussian noise, [_NOISE_TILE, _NOISE_TILE, 3], drawn once."""
  return np.random.default_rng(0).normal(size=(_NOISE_TILE, _NOISE_TILE, 3)).astype(np.float32)


def add_noise(canvas: np.ndarray, rng: np.random.Generator,
              std_range: Tuple[float, float] = DEFAULT_STYLE.noise_std):
  """Adds Gaussian sensor noise in place, cut from a fixed tile at a random offset (fast)."""
  height, width = canvas.shape[:2]
  std = np.float32(rng.uniform(*std_range))
  oy = int(rng.integers(0, _NOISE_TILE - height + 1))
  ox = int(rng.integers(0, _NOISE_TILE - width + 1))
  canvas += std * _noise_tile()[oy:oy + height, ox:ox + width]


# The textured object.


def draw_object(canvas: np.ndarray, obj: ObjectSpec, rng: np.random.Generator):
  """Draws `obj` into the float32 [H, W, 3] canvas in place (rng: the 'blobs' texture)."""
  _fill(canvas, obj.shape, lambda y, x: _texture_color(obj, y, x, rng), blur=0.5)


def _fill(canvas: np.ndarray, shape: Shape, color, blur: float):
  """Paints `shape` with `color`, RGB or a function of pixel offsets (y, x) from its centre."""
  height, width = canvas.shape[:2]
  cy, cx = shape.center
  ry, rx = (r + 2 * blur + 1 for r in shape.half_extent)
  y0, y1 = max(int(cy - ry), 0), min(int(math.ceil(cy + ry)), height)
  x0, x1 = max(int(cx - rx), 0), min(int(math.ceil(cx + rx)), width)
  if y0 >= y1 or x0 >= x1:
    return
  y = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
  x = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
  alpha = _shape_alpha(shape, y, x, blur)[..., None]
  if callable(color):
    color = color(y, x)
  gain = 1 + (shape.light[0] * y + shape.light[1] * x) / shape.size
  region = canvas[y0:y1, x0:x1]
  region += alpha * (color * gain[..., None] - region)


def _texture_color(obj: ObjectSpec, y: np.ndarray, x: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
  mix = texture(obj, y, x, rng)[..., None]
  return obj.colors[0] + mix * (obj.colors[1] - obj.colors[0])


def texture(obj: ObjectSpec, y: np.ndarray, x: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
  """Mixing weight in [0, 1] between the two colours at offsets (y, x) from the centre.

  Each pattern is a signed distance `d` to its edges, in cycles (positive on the second
  colour), turned into a weight with a one-pixel linear ramp: anti-aliased at any scale.
  """
  name = CLASS_NAMES[obj.label]
  freq = obj.cycles / obj.shape.size  # cycles per pixel
  cos, sin = math.cos(obj.texture_angle), math.sin(obj.texture_angle)
  u = (x * cos + y * sin) * freq + obj.phase[0]  # across vertical stripes
  v = (y * cos - x * sin) * freq + obj.phase[1]  # across horizontal stripes
  if name in ('horizontal_stripes', 'diagonal_stripes'):
    d = _band(v)
  elif name == 'vertical_stripes':
    d = _band(u)
  elif name == 'zigzag':
    d = _band(v + 0.6 * np.abs(_frac(u) - 0.5))
  elif name == 'checkerboard':
    bu, bv = _band(u), _band(v)
    d = np.copysign(np.minimum(np.abs(bu), np.abs(bv)), bu * bv)
  elif name == 'dots':
    d = 0.3 - np.hypot(_frac(u) - 0.5, _frac(v) - 0.5)
  elif name == 'hex_dots':
    row = math.sqrt(3)  # rows of a hexagonal lattice with unit spacing
    d_a = np.hypot(_frac(u) - 0.5, row * (_frac(v / row) - 0.5))
    d_b = np.hypot(_frac(u + 0.5) - 0.5, row * (_frac(v / row + 0.5) - 0.5))
    d = 0.27 - np.minimum(d_a, d_b)
  elif name == 'grid':
    d = np.maximum(np.abs(_frac(u) - 0.5), np.abs(_frac(v) - 0.5)) - 0.4
  elif name == 'rings':
    d = _band(np.hypot(x, y) * freq + obj.phase[0])
  elif name == 'blobs':
    d = _blob_noise(rng, y.shape[0], x.shape[1], 1 / freq) * 0.35
  else:
    raise ValueError(f'Unknown texture {name!r}.')
  return np.clip(d / freq + 0.5, 0, 1)


def _frac(t: np.ndarray) -> np.ndarray:
  return t - np.floor(t)


def _band(t: np.ndarray) -> np.ndarray:
  """Signed distance (cycles) to the edges of stripes filling half of each unit cycle."""
  return 0.25 - np.abs(_frac(t) - 0.5)


def _blob_noise(rng: np.random.Generator, height: int, width: int,
                period: float) -> np.ndarray:
  """Smooth zero-mean random field, [height, width], with about one sign change per period/2."""
  cell = period / 2  # pixels per grid value
  grid = rng.normal(size=(int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
  # Pillow resizes float ('F') images with a true bicubic filter; box is in grid cells.
  pil = Image.fromarray(grid).resize((width, height), Image.BICUBIC,
                                     box=(0, 0, width / cell, height / cell))
  return np.asarray(pil)


def _shape_alpha(shape: Shape, y: np.ndarray, x: np.ndarray, blur: float) -> np.ndarray:
  """Coverage in [0, 1] of the outline, with an edge ramp of 2 * `blur` pixels."""
  cos, sin = math.cos(shape.angle), math.sin(shape.angle)
  half_a = 0.5 * shape.size * math.sqrt(shape.elongation)
  half_b = 0.5 * shape.size / math.sqrt(shape.elongation)
  p = (x * cos + y * sin) / half_a
  q = (y * cos - x * sin) / half_b
  if shape.kind == 'rectangle':
    rho = np.maximum(np.abs(p), np.abs(q))
  else:
    rho = np.hypot(p, q)
    if shape.kind == 'blob':
      # Radius modulated by harmonics of the polar angle: Re(c_k z^k), z = e^{i theta}.
      z = (p + 1j * q) / np.maximum(rho, 1e-6)
      zk, wobble = z, np.zeros_like(rho)
      for c in shape.harmonics:
        zk = zk * z
        wobble += (c * zk).real
      rho = rho / np.maximum(1 + wobble, 0.2)
  # (rho - 1) * mean radius approximates the signed distance in pixels.
  distance = (rho - 1) * (0.5 * shape.size)
  return np.clip(0.5 - distance / (2 * blur), 0, 1)
