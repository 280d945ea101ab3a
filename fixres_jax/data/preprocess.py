"""Image transforms separated by resolution: train (K_train), test and finetune (K_test).

Every op is plain TensorFlow, graph-compatible (it runs eagerly and inside tf.data .map)
and stateless: randomness comes from a `seed` tensor of shape [2], so a seed gives the same
image every time (deterministic input pipelines, resumable epochs).

Decoding. decode='exact' decodes the whole image as PIL does (libjpeg's accurate IDCT) and
then resizes, the pixels torchvision and so FixRes saw; decode='fast' is described next.
resize='official' reproduces the official FixRes test Resize (height to K / crop_pct, black
columns on narrow portraits) instead of the paper's shorter-side resize.

Speed (decode='fast'). JPEGs are not decoded whole: the crop window (plus, for the test transform, the
margin the resize filter reads) is located in the original image from the JPEG header
alone, and only that window is decoded (tf.io.decode_and_crop_jpeg). When the window is at
least 2, 4 or 8 times larger than the target on both sides, libjpeg's DCT-domain scaling
decodes it directly at 1/2, 1/4 or 1/8 scale, skipping most of the inverse DCT and colour
conversion. decode_and_crop_jpeg(ratio=r) takes its window in the coordinates of the scaled
image, whose size is ceil(H / r) x ceil(W / r) and whose pixel i covers original pixels
[r i, r (i + 1)); so the box is divided by r, the window rounded outwards, and the final
resize resamples exactly the requested (fractional) box: the crop geometry is the same at
every ratio. Huffman decoding of the rows above the window cannot be skipped, so on photos
the decode itself gets only ~1.1-1.3x cheaper; the smaller resize that follows gains more.

Resizing. Antialiased, as PIL resizes: the filter is widened by the downscale factor
(tf.raw_ops.ScaleAndTranslate, the kernel behind tf.image.resize(antialias=True)). Bilinear
(a triangle filter) is PIL's bilinear resize, hence what torchvision, and so FixRes, trained
and evaluated with; the test and fine-tuning transforms also offer PIL's bicubic (Keys' cubic
with a = -0.5, TF's 'keyscubic'; timm's choice for most of its weights) and Lanczos-3
(INTERPOLATIONS). Without antialiasing a 3x downscale aliases, and aliasing changes with the
resolution, the very variable FixRes studies. ScaleAndTranslate also takes a sub-pixel box,
which keeps the test crop's geometry exact. PIL resizes in two passes rounded to uint8 in
between; one float pass differs from it by rounding only (docs/DECODE.md: >= 55 dB).

Train augmentation. After the crop and flip, either torchvision's ColorJitter or timm's
RandAugment (data/randaugment.py, on the crop rounded to integers as timm's uint8 image),
each with a seed of its own, so that turning one on leaves the crops and flips unchanged.

Crop samplers. 'torchvision' (default) is torchvision's RandomResizedCrop, the sampler
FixRes used; 'inception' is tf.image.sample_distorted_bounding_box as in the flax and
big_vision ImageNet pipelines, a different distribution with smaller crops (mean area 0.37
against 0.43 on a 500x375 image) and so a different best test resolution.
"""

import math
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from fixres_jax import augmentations
from fixres_jax.data import randaugment as randaugment_lib

MEAN_RGB = tuple(255 * m for m in (0.485, 0.456, 0.406))
STDDEV_RGB = tuple(255 * s for s in (0.229, 0.224, 0.225))
DCT_RATIOS = (1, 2, 4, 8)  # The scales libjpeg can decode at, via tf.io.decode_jpeg(ratio=).
CROPS = augmentations.TRAIN_CROPS
DECODES = augmentations.DECODES
TEST_RESIZES = augmentations.TEST_RESIZES
INTERPOLATIONS = augmentations.INTERPOLATIONS
TEST_CROP_MODES = augmentations.TEST_CROP_MODES
# timm's padding colour in its 'border' crop mode: the ImageNet mean, rounded.
BORDER_FILL = tuple(round(m) for m in MEAN_RGB)
# PIL's resampling filters as ScaleAndTranslate kernels, with their support radius in input
# pixels at scale 1 (PIL's BICUBIC is Keys' cubic, a = -0.5; its LANCZOS has 3 lobes).
KERNELS = {'bilinear': ('triangle', 1), 'bicubic': ('keyscubic', 2), 'lanczos': ('lanczos3', 3)}

Box = Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]  # offset_y, offset_x, height, width


def normalize_image(image, dtype=tf.float32):
  """Maps RGB in [0, 255] to ImageNet-normalised `dtype`."""
  # Full-size constants: TF broadcasts a [3] vector over an image several times slower
  # than it multiplies two same-shape tensors.
  shape = image.shape if image.shape.is_fully_defined() else [3]
  scale = np.broadcast_to(1 / np.array(STDDEV_RGB, np.float32), shape)
  offset = np.broadcast_to(-np.array(MEAN_RGB, np.float32) / STDDEV_RGB, shape)
  return tf.cast(image * tf.constant(scale) + tf.constant(offset, tf.float32), dtype)


def split_seed(seed, num):
  """`num` independent [2] seeds derived from one [2] seed."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def sample_crop_torchvision(seed, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            attempts: int = 10) -> Box:
  """torchvision's RandomResizedCrop.get_params, with stateless TF ops.

  Up to `attempts` tries (drawn at once, the first that fits is kept): target area uniform
  in scale * H * W, aspect ratio w/h log-uniform in `ratio`, w = round(sqrt(area * aspect)),
  h = round(sqrt(area / aspect)); a crop fits when 0 < w <= W and 0 < h <= H, and its offset
  is uniform. If none fits, the central crop of the whole image with its aspect ratio
  clamped to `ratio`.

  Returns:
    int32 scalars (offset_y, offset_x, crop_height, crop_width).
  """
  area_seed, aspect_seed, y_seed, x_seed = split_seed(seed, 4)
  h_img, w_img = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = h_img * w_img * tf.random.stateless_uniform([attempts], area_seed, *scale)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  aspect = tf.exp(tf.random.stateless_uniform([attempts], aspect_seed, *log_ratio))
  w = tf.round(tf.sqrt(area * aspect))  # tf.round, like Python's, rounds half to even.
  h = tf.round(tf.sqrt(area / aspect))
  fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
  first = tf.argmax(tf.cast(fits, tf.int32))  # 0 when nothing fits; masked below.
  fallback_h, fallback_w = _central_crop_size(h_img, w_img, ratio)
  any_fits = tf.reduce_any(fits)
  crop_h = tf.cast(tf.where(any_fits, h[first], fallback_h), tf.int32)
  crop_w = tf.cast(tf.where(any_fits, w[first], fallback_w), tf.int32)
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  random_y = tf.random.stateless_uniform([], y_seed, 0, height - crop_h + 1, tf.int32)
  random_x = tf.random.stateless_uniform([], x_seed, 0, width - crop_w + 1, tf.int32)
  offset_y = tf.where(any_fits, random_y, (height - crop_h) // 2)
  offset_x = tf.where(any_fits, random_x, (width - crop_w) // 2)
  return offset_y, offset_x, crop_h, crop_w


def _central_crop_size(height, width, ratio):
  """torchvision's fall-back: the whole image, its aspect ratio clamped to `ratio`."""
  in_ratio = width / height
  too_tall = in_ratio < ratio[0]
  too_wide = in_ratio > ratio[1]
  crop_h = tf.where(too_tall, tf.round(width / ratio[0]), height)
  crop_w = tf.where(too_wide, tf.round(height * ratio[1]), width)
  return crop_h, crop_w


def sample_crop_inception(seed, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                          attempts: int = 10) -> Box:
  """The "inception crop" of the flax and big_vision pipelines.

  tf.image.stateless_sample_distorted_bounding_box with no object boxes (the whole image is
  the object, no minimum coverage, as big_vision does). NOT torchvision's distribution: the
  aspect ratio is uniform rather than log-uniform, and the crop height is uniform between
  the heights of the smallest and largest allowed areas (clipped to the image), which
  favours smaller crops (mean area 0.37 against 0.43 on 500x375 images), so FixRes's best
  test resolution differs. When no attempt fits, the whole image.

  Returns:
    int32 scalars (offset_y, offset_x, crop_height, crop_width).
  """
  image_size = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), 3])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_size, bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ratio, area_range=scale, max_attempts=attempts,
      use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def select_dct_ratio(crop_height, crop_width, size):
  """Index into DCT_RATIOS of the largest ratio r with both crop sides >= r * size."""
  shorter = tf.minimum(tf.cast(crop_height, tf.float32), tf.cast(crop_width, tf.float32))
  fits = [shorter >= r * size for r in DCT_RATIOS[1:]]
  return tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))


def resize_box(image, box, size: int, interpolation: str = 'bilinear'):
  """Resamples `box` (float offset_y, offset_x, h, w in pixels of `image`) to size x size.

  Antialiased, with PIL's `interpolation` filter (KERNELS); the box may have fractional
  bounds and may reach past the image by less than a pixel (filter taps outside the image
  are dropped and the rest renormalised).
  """
  y, x, h, w = tf.unstack(tf.cast(box, tf.float32))
  scale = tf.stack([size / h, size / w])
  translation = -tf.stack([y, x]) * scale
  return _resample(image, [size, size], scale, translation, interpolation)


def _resample(image, size, scale, translation, interpolation: str):
  """ScaleAndTranslate of one image with PIL's `interpolation` filter, in [0, 255]."""
  _check_interpolation(interpolation)
  resized = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(image, tf.float32)[None], size=size, scale=scale,
      translation=translation, kernel_type=KERNELS[interpolation][0], antialias=True)[0]
  if interpolation == 'bilinear':  # A triangle filter cannot leave the input's range.
    return resized
  return tf.clip_by_value(resized, 0.0, 255.0)  # Cubic and Lanczos lobes overshoot; PIL clips.


def _window_for(box, image_height, image_width, size: int, context: bool, radius: int = 1):
  """The integer window of the image to decode for `box`, and `box` relative to it.

  The window holds the box (bounds rounded outwards) and, with `context`, the pixels a
  filter of support `radius` (KERNELS) reads around it once widened by the downscale
  factor, so that decoding the window and resizing equals resizing the whole image and then
  cropping. Clamped to the image.

  Returns:
    (int32 [4] window y, x, h, w; float32 [4] box in window coordinates).
  """
  downscale = tf.maximum(tf.maximum(box[2], box[3]) / size, 1.0)
  margin = tf.math.ceil(radius * downscale) + 1 if context else 0.0
  lo = tf.floor(box[:2] - margin)
  hi = tf.math.ceil(box[:2] + box[2:] + margin)
  limit = tf.stack([tf.cast(image_height, tf.float32), tf.cast(image_width, tf.float32)])
  lo = tf.clip_by_value(lo, 0.0, limit - 1)
  hi = tf.clip_by_value(hi, lo + 1, limit)
  window = tf.cast(tf.concat([lo, hi - lo], 0), tf.int32)
  return window, tf.concat([box[:2] - lo, box[2:]], 0)


def decode_and_resize_jpeg(image_bytes, box, size: int, context: bool = False,
                           dct_scaling: bool = True, interpolation: str = 'bilinear'):
  """Decodes only `box` of a JPEG (at a reduced DCT scale when possible), resized.

  Args:
    image_bytes: a scalar string tensor holding a JPEG.
    box: float [4] (offset_y, offset_x, h, w) in original-image pixels, may be fractional.
    size: output side.
    context: decode the filter's margin around the box too, so that the result equals
      resizing the whole image and then cropping (the test transform); False gives
      crop-then-resize (the train transform).
    dct_scaling: allow decoding at 1/2, 1/4 or 1/8 scale when the box is that much larger
      than `size` on both sides.
    interpolation: the resampling filter, a name of INTERPOLATIONS.

  Returns:
    float32 [size, size, 3], RGB in [0, 255]. (With 4:2:0 chroma, libjpeg upsamples the
    colour of a window's first and last columns from the window alone: they can differ
    slightly from a full decode. The test transform's margin keeps them out of the crop.)
  """
  box = tf.cast(box, tf.float32)
  shape = tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.float32)

  def decode_at(ratio):
    scaled_shape = tf.math.ceil(shape / ratio)  # libjpeg's scaled output size.
    window, box_in_window = _window_for(box / ratio, scaled_shape[0], scaled_shape[1], size,
                                        context, KERNELS[interpolation][1])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3, ratio=ratio)
    return resize_box(image, box_in_window, size, interpolation)

  if not dct_scaling:
    return decode_at(1)
  index = select_dct_ratio(box[2], box[3], size)
  return tf.switch_case(index, [lambda r=r: decode_at(r) for r in DCT_RATIOS])


def decode_and_resize(image_bytes, sample_box: Callable, size: int, context: bool = False,
                      decode: str = 'fast', interpolation: str = 'bilinear'):
  """Decodes any image format and resizes the box `sample_box(height, width)` picks.

  decode='fast': JPEGs (grayscale and CMYK included) take decode_and_resize_jpeg (only the
  window, at a reduced DCT scale when possible); PNG, GIF (first frame) and BMP are decoded
  whole. decode='exact': every image is decoded whole at full scale, as PIL does, then
  cropped and resized by the same antialiased filter (decode_whole). Every output is RGB.
  `interpolation` names the filter (INTERPOLATIONS).

  Returns:
    float32 [size, size, 3], RGB in [0, 255].
  """
  _check_decode(decode)

  def jpeg():
    height, width = tf.unstack(tf.io.extract_jpeg_shape(image_bytes)[:2])
    return decode_and_resize_jpeg(image_bytes, sample_box(height, width), size, context,
                                  interpolation=interpolation)

  def whole():
    image = decode_whole(image_bytes)
    height, width = tf.unstack(tf.shape(image)[:2])
    box = tf.cast(sample_box(height, width), tf.float32)
    window, box_in_window = _window_for(box, height, width, size, context,
                                        KERNELS[interpolation][1])
    return resize_box(tf.image.crop_to_bounding_box(image, *tf.unstack(window)),
                      box_in_window, size, interpolation)

  image = whole() if decode == 'exact' else tf.cond(tf.io.is_jpeg(image_bytes), jpeg, whole)
  image.set_shape([size, size, 3])
  return image


def decode_whole(image_bytes):
  """The whole image at full scale, RGB uint8: for JPEGs libjpeg's accurate integer IDCT,
  PIL's (bit-identical pixels on real photos; TensorFlow's default, the fast IDCT, differs
  by up to 20/255)."""
  def jpeg():
    return tf.io.decode_jpeg(image_bytes, channels=3, dct_method='INTEGER_ACCURATE')

  def other():
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def _check_decode(decode: str) -> None:
  if decode not in DECODES:
    raise ValueError(f'Unknown decode {decode!r}: use one of {DECODES} (config.data.decode).')


def _check_interpolation(interpolation: str) -> None:
  if interpolation not in KERNELS:
    raise ValueError(f'Unknown interpolation {interpolation!r}: use one of {INTERPOLATIONS} '
                     '(config.data.test_interpolation).')


# The test transform's geometry. Every crop mode is a "frame": the image resized to
# (new_h, new_w) and the top-left corner (top, left) of the size x size output window in it,
# in resized pixels; a negative corner means padding, as torchvision's CenterCrop pads.

def test_frame(height, width, size: int, crop_pct: float = 0.875, crop_mode: str = 'center',
               resize_size: int = 0, margin: int = 32, resize: str = 'shorter'):
  """The frame of the test transform at K_test = size, for a height x width image.

  crop_mode (augmentations.TEST_CROP_MODES), with S = resize_size, or floor(size /
  crop_pct) when resize_size is 0:
    'center': torchvision's Resize(S) + CenterCrop(size) (timm's 'center'; with
      resize='official', the FixRes repository's Resize, see resized_size).
    'squash': timm's: Resize((S, S)), the aspect ratio lost, then CenterCrop(size).
    'border': timm's: the longer side to S (ResizeKeepRatio(S, longest=1)), then
      CenterCropOrPad(size): the shorter side padded when it comes out below size.
    'margin': the flax and big_vision ImageNet convention: the central square of side
      int(size / (size + margin) * shorter side) (float32, as their TF code), offset
      (side difference + 1) // 2, cropped from the original and resized to size; crop_pct
      and resize_size play no part.

  Returns:
    float32 [4]: new_h, new_w, top, left.
  """
  if crop_mode == 'margin':
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(tf.constant(size / (size + margin), tf.float32) * shorter, tf.int32)
    offsets = (tf.cast(tf.stack([height, width]), tf.int32) - side + 1) // 2
    scale = size / tf.cast(side, tf.float32)
    shape = tf.cast(tf.stack([height, width]), tf.float32)
    return tf.concat([shape * scale, tf.cast(offsets, tf.float32) * scale], 0)
  short = resize_size or math.floor(size / crop_pct)
  if crop_mode == 'squash':
    new_h = new_w = tf.constant(short, tf.float32)
  elif crop_mode == 'border':
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    ratio = tf.maximum(h / short, w / short)
    new_h, new_w = (tf.cast(tf.round(x / ratio), tf.float32) for x in (h, w))
  else:
    new_h, new_w = resized_size(height, width, short, resize)
  return tf.stack([new_h, new_w, _center_offset(new_h, size), _center_offset(new_w, size)])


def _center_offset(side, size: int):
  """torchvision's CenterCrop corner on one axis: round((side - size) / 2) when the image
  is at least size wide, else minus the (size - side) // 2 padded pixels."""
  return tf.where(side >= size, tf.round((side - size) / 2), -tf.floor((size - side) / 2))


def frame_box(height, width, frame, size: int, shift_x=0):
  """The frame's output window as a box of the original image, `shift_x` resized pixels
  to the right (clamped to the image).

  Returns:
    float32 [4]: offset_y, offset_x, h, w (fractional).
  """
  new_h, new_w, top, left = tf.unstack(frame)
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  left = tf.clip_by_value(left + tf.cast(shift_x, tf.float32), 0.0, new_w - size)
  scale_y, scale_x = h / new_h, w / new_w
  return tf.stack([top * scale_y, left * scale_x, size * scale_y, size * scale_x])


def central_crop_box(height, width, size: int, crop_pct: float = 0.875, shift_x=0):
  """The window, in original pixels, of Resize(floor(size / crop_pct)) + CenterCrop(size).

  torchvision's geometry: the shorter side resized to S = floor(size / crop_pct), the longer
  to int(S * long / short); the crop offset round((resized - size) / 2), plus `shift_x`
  resized pixels horizontally (clamped to the image) for the FixRes v2 augmentation.

  Returns:
    float32 [4]: offset_y, offset_x, h, w (fractional).
  """
  return frame_box(height, width, test_frame(height, width, size, crop_pct), size, shift_x)


def sample_v2_shift(seed, height, width, size: int, crop_pct: float = 0.875,
                    resize: str = 'shorter', frame=None):
  """FixRes v2's random horizontal shift of the central crop, in resized pixels.

  As the official transforms_v2.CenterCrop: with c = the central crop's left offset,
  a jitter uniform in {0, ..., c} with a random sign, so the crop can move anywhere from
  the left edge to the right edge (no shift on an image as wide as the crop or narrower).
  `frame` (test_frame) replaces the geometry crop_pct and resize describe.
  """
  magnitude_seed, sign_seed = split_seed(seed, 2)
  if frame is None:
    frame = test_frame(height, width, size, crop_pct, resize=resize)
  center_left = tf.maximum(tf.cast(tf.floor(frame[3]), tf.int32), 0)
  jitter = tf.random.stateless_uniform([], magnitude_seed, 0, center_left + 1, tf.int32)
  sign = 2 * tf.random.stateless_uniform([], sign_seed, 0, 2, tf.int32) - 1
  return sign * jitter


def resized_size(height, width, short: int, resize: str):
  """(height, width), float32, of the 'center' mode's resized image before the crop.

  'shorter': the shorter side becomes `short` (torchvision's Resize(short)).
  'official': the FixRes repository's own Resize(short): the HEIGHT becomes `short` and the
  width int(short * width / height), whatever the orientation.
  """
  short = tf.constant(short, tf.float64)
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  if resize == 'official':
    return tf.cast(short, tf.float32), tf.cast(tf.floor(short * w / h), tf.float32)
  shorter = tf.minimum(h, w)
  new_h = tf.where(h <= w, short, tf.floor(short * h / shorter))
  new_w = tf.where(h <= w, tf.floor(short * w / shorter), short)
  return tf.cast(new_h, tf.float32), tf.cast(new_w, tf.float32)


def resize_into(image_bytes, sample_frame: Callable, size: int, fill=(0, 0, 0),
                interpolation: str = 'bilinear', sample_shift: Callable = lambda h, w: 0,
                edit_whole: Optional[Callable] = None):
  """Resize + CenterCrop for frames that may pad: the whole image decoded (decode_whole),
  the part of the resized image inside the output window resampled, the rest `fill`.

  Args:
    sample_frame: (height, width) -> float32 [4] frame (test_frame) with integer sides.
    fill: RGB of the padding (torchvision's CenterCrop: black; timm's 'border': the mean).
    sample_shift: (height, width) -> resized pixels to move the window right (FixRes v2),
      clamped to the image.
    edit_whole: if given, the whole image is resized, passed through it (FixRes v2's flip
      and colour jitter, which see the whole resized image), and only then cropped.

  Returns:
    float32 [size, size, 3], RGB in [0, 255].
  """
  image = decode_whole(image_bytes)
  height, width = tf.unstack(tf.shape(image)[:2])
  new_h, new_w, top, left = tf.unstack(sample_frame(height, width))
  left = tf.where(new_w > size, tf.clip_by_value(
      left + tf.cast(sample_shift(height, width), tf.float32), 0.0, new_w - size), left)
  corner = tf.stack([top, left])
  start = tf.maximum(corner, 0.0)  # the first resized row and column kept
  visible = tf.minimum(tf.stack([new_h, new_w]), corner + size) - start
  scale = tf.stack([new_h, new_w]) / tf.cast(tf.stack([height, width]), tf.float32)
  if edit_whole is None:
    resized = _resample(image, tf.cast(visible, tf.int32), scale, -start, interpolation)
  else:
    whole = _resample(image, tf.cast(tf.stack([new_h, new_w]), tf.int32), scale,
                      tf.zeros([2]), interpolation)
    resized = tf.slice(edit_whole(whole), tf.concat([tf.cast(start, tf.int32), [0]], 0),
                       tf.concat([tf.cast(visible, tf.int32), [3]], 0))
  before = tf.cast(start - corner, tf.int32)
  after = size - before - tf.cast(visible, tf.int32)
  fill = tf.constant(fill, tf.float32)
  paddings = tf.concat([tf.stack([before, after], 1), tf.zeros([1, 2], tf.int32)], 0)
  image = tf.pad(resized - fill, paddings) + fill
  image.set_shape([size, size, 3])
  return image


def resize_official(image_bytes, size: int, crop_pct: float = 0.875,
                    sample_shift: Callable = lambda h, w: 0, interpolation: str = 'bilinear'):
  """The official FixRes test transform: Resize (height to S) + CenterCrop(size).

  The whole image is decoded and resized to (S, int(S * width / height)) with the
  antialiased `interpolation` filter (the official code's: bilinear), S = floor(size /
  crop_pct); the central size x size crop (plus `sample_shift(height, width)` resized
  pixels, clamped) is taken. A portrait image narrower than `size` after the resize is
  centred between black columns, as torchvision's CenterCrop pads it: (size - width) // 2
  on the left, the rest on the right.

  Returns:
    float32 [size, size, 3], RGB in [0, 255].
  """
  frame = lambda h, w: test_frame(h, w, size, crop_pct, resize='official')
  return resize_into(image_bytes, frame, size, interpolation=interpolation,
                     sample_shift=sample_shift)


def flip_image(image, seed):
  """Horizontal flip with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def sample_jitter(seed, brightness: float, contrast: float, saturation: float):
  """torchvision ColorJitter.get_params without hue: a random order and three factors.

  Returns:
    (int32 [3] order of the ops, 0 brightness / 1 contrast / 2 saturation; float32 [3]
    factors, uniform in [1 - x, 1 + x] (clipped at 0) for x = brightness, contrast,
    saturation).
  """
  order_seed, factor_seed = split_seed(seed, 2)
  order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
  strength = tf.constant([brightness, contrast, saturation], tf.float32)
  unit = tf.random.stateless_uniform([3], factor_seed)
  factors = tf.maximum(1 - strength, 0.0) + unit * (1 + strength - tf.maximum(1 - strength, 0.0))
  return tf.cast(order, tf.int32), factors


def _grey(image):
  return tf.image.rgb_to_grayscale(image)  # ITU-R 601-2 luma, as torchvision and PIL


def apply_jitter(image, order, factors):
  """Brightness, contrast and saturation in `order`, as torchvision's functional ops do on
  float images (PIL's ImageEnhance is the same blend, rounded to uint8 after each op):
  brightness scales, contrast blends with the image's mean grey level, saturation blends
  with the per-pixel grey; each result clipped to [0, 255].
  """
  def blend(degenerate, factor):
    return lambda x: tf.clip_by_value(degenerate(x) + factor * (x - degenerate(x)), 0.0, 255.0)

  ops = [blend(tf.zeros_like, factors[0]),
         blend(lambda x: tf.reduce_mean(_grey(x)), factors[1]),
         blend(_grey, factors[2])]
  for i in range(3):
    image = tf.switch_case(order[i], [lambda op=op, x=image: op(x) for op in ops])
  return image


def jitter_color(image, seed, strength: float = 0.05):
  """torchvision ColorJitter(brightness=contrast=saturation=strength) on [0, 255] RGB.

  Factors uniform in [1 - strength, 1 + strength], the three ops in a random order; the mean
  grey level of the contrast op is that of `image` (torchvision's after RandomResizedCrop:
  the crop's). Stateless: `seed` decides everything.
  """
  if strength == 0:
    return image
  order, factors = sample_jitter(seed, strength, strength, strength)
  return apply_jitter(image, order, factors)


def preprocess_train(image_bytes, seed, size: int, crop: str = 'torchvision', flip: bool = True,
                     dtype=tf.float32, color_jitter: float = 0.0, decode: str = 'fast',
                     randaugment: str = '', randaugment_interpolation: str = 'bilinear'):
  """RandomResizedCrop at K_train (crop 'torchvision' or 'inception') + horizontal flip, then
  either ColorJitter(color_jitter, color_jitter, color_jitter) when color_jitter > 0 or
  timm's RandAugment when `randaugment` is set (timm turns the jitter off under it).

  Args:
    image_bytes: scalar string tensor, an encoded image (JPEG fast path; PNG/GIF/BMP too).
    seed: int [2] stateless seed.
    size: K_train.
    color_jitter: ColorJitter strength, 0 for none.
    decode: 'fast' (decode only the crop, DCT-scaled when possible) or 'exact' (full decode).
    randaugment: a timm RandAugment string such as 'rand-m6-mstd0.5-inc1' (see
      augmentations.parse_randaugment), '' for none. The crop is rounded to integers in
      [0, 255] first, as timm's uint8 PIL crop, and augmented by data/randaugment.py.
    randaugment_interpolation: its affine ops' filter, 'bilinear', 'bicubic' or 'random'
      (timm's train default: either, per op); see data/randaugment.py.

  Returns:
    `dtype` [size, size, 3], ImageNet-normalised.
  """
  samplers = {'torchvision': sample_crop_torchvision, 'inception': sample_crop_inception}
  if crop not in samplers:
    raise ValueError(f'Unknown crop {crop!r}: use one of {CROPS}.')
  spec = augmentations.parse_randaugment(randaugment)
  if spec is not None and color_jitter > 0:
    raise ValueError(
        f'config.data.color_jitter={color_jitter} and config.data.randaugment={randaugment!r} '
        'are both set: timm turns ColorJitter off under RandAugment, so set one of them '
        '(color_jitter=0 or randaugment=\'\').')
  crop_seed, flip_seed = split_seed(seed, 2)
  sample_box = lambda h, w: tf.stack(samplers[crop](crop_seed, h, w))
  image = decode_and_resize(image_bytes, sample_box, size, decode=decode)
  if flip:
    image = flip_image(image, flip_seed)
  # Their own seeds, so that turning either on leaves the crops and flips unchanged.
  if spec is not None:
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    image = randaugment_lib.rand_augment(
        image, tf.random.experimental.stateless_fold_in(seed, 3), spec,
        interpolation=randaugment_interpolation)
  else:
    image = jitter_color(image, tf.random.experimental.stateless_fold_in(seed, 2),
                         color_jitter)
  return normalize_image(image, dtype)


def preprocess_test(image_bytes, size: int, crop_pct: float = 0.875, dtype=tf.float32,
                    decode: str = 'fast', resize: str = 'shorter',
                    interpolation: str = 'bilinear', crop_mode: str = 'center',
                    resize_size: int = 0, margin: int = 32):
  """Resize to S = floor(size / crop_pct) (or resize_size), central size x size crop (K_test).

  Args:
    decode: 'fast' or 'exact' (see decode_and_resize); the box of the original image
      equivalent to the crop is resized once. Frames that pad ('border', 'official') always
      decode the whole image (resize_into).
    resize: 'shorter' (the shorter side to S, torchvision's Resize(S) as the paper says) or
      'official' (the FixRes repository's: the height to S, black columns when a portrait
      comes out narrower than size; always an exact decode), see resize_official.
    interpolation: PIL's antialiased resampling filter, a name of INTERPOLATIONS
      (torchvision's Resize(interpolation=...), timm's per-weight 'interpolation').
    crop_mode: 'center', 'squash', 'border' or 'margin' (see test_frame).
    resize_size: S in pixels, whatever size (torchvision's ResNet-50 V2 weights: 232 for
      crop 224); 0 for floor(size / crop_pct).
    margin: the 'margin' mode's pixels (flax and big_vision: 32).

  Returns:
    `dtype` [size, size, 3], ImageNet-normalised.
  """
  frame = test_geometry(size, crop_pct, resize, crop_mode, resize_size, margin)
  return normalize_image(
      view_frame(image_bytes, frame, size, crop_mode, resize, decode, interpolation), dtype)


def test_geometry(size: int, crop_pct: float = 0.875, resize: str = 'shorter',
                  crop_mode: str = 'center', resize_size: int = 0,
                  margin: int = 32) -> Callable:
  """(height, width) -> the test transform's frame (test_frame), its arguments checked."""
  _check_crop_pct(crop_pct)
  _check_resize(resize)
  if crop_mode not in TEST_CROP_MODES:
    raise ValueError(f'Unknown test crop mode {crop_mode!r}: use one of {TEST_CROP_MODES} '
                     '(config.data.test_crop_mode).')
  if resize == 'official' and crop_mode != 'center':
    raise ValueError(f"resize='official' is the 'center' mode's resize, not {crop_mode!r}'s.")
  if resize_size and crop_mode in ('center', 'squash') and resize_size < size:
    raise ValueError(f'resize_size={resize_size} is below the crop {size}: use a resize '
                     'size >= every K_test (config.data.test_resize_size), or 0.')
  return lambda h, w: test_frame(h, w, size, crop_pct, crop_mode, resize_size, margin, resize)


def view_frame(image_bytes, sample_frame: Callable, size: int, crop_mode: str = 'center',
               resize: str = 'shorter', decode: str = 'fast', interpolation: str = 'bilinear',
               sample_shift: Callable = lambda h, w: 0, edit_whole: Optional[Callable] = None):
  """The size x size output window of `sample_frame` (test_geometry), RGB in [0, 255]:
  resampled from the window's box in the original image, with the filter's context around
  it (resize then crop) except in 'margin' mode (crop then resize, as flax); the frames
  that pad, and `edit_whole` (see resize_into), go through resize_into."""
  _check_interpolation(interpolation)
  if resize == 'official' or crop_mode == 'border' or edit_whole is not None:
    fill = BORDER_FILL if crop_mode == 'border' else (0, 0, 0)
    return resize_into(image_bytes, sample_frame, size, fill, interpolation, sample_shift,
                       edit_whole)
  sample_box = lambda h, w: frame_box(h, w, sample_frame(h, w), size, sample_shift(h, w))
  return decode_and_resize(image_bytes, sample_box, size, context=crop_mode != 'margin',
                           decode=decode, interpolation=interpolation)


def preprocess_finetune(image_bytes, seed, size: int, crop_pct: float = 0.875,
                        augment: str = 'flip', dtype=tf.float32, decode: str = 'fast',
                        resize: str = 'shorter', interpolation: str = 'bilinear',
                        crop_mode: str = 'center', resize_size: int = 0, margin: int = 32):
  """The FixRes fine-tuning input: the test transform at K_test, lightly augmented.

  Args:
    augment: a name of augmentations.FINETUNE_AUGMENTS: 'flip' (horizontal flip), 'v2'
      (the official v2 recipe, in its order: resize, flip, colour jitter 0.05 on the whole
      resized image, then the randomly shifted central crop; the whole image is decoded),
      'v2_crop' (the same augmentations after the crop: the contrast uses the crop's mean
      grey, and only the crop's window is resampled) or 'none' (FixRes v1).
    decode, resize, interpolation, crop_mode, resize_size, margin: as preprocess_test.

  Returns:
    `dtype` [size, size, 3], ImageNet-normalised.
  """
  spec = augmentations.finetune_augment(augment)
  frame = test_geometry(size, crop_pct, resize, crop_mode, resize_size, margin)
  if spec.whole_first and crop_mode == 'margin':
    raise ValueError(f"augment={augment!r} jitters the whole resized image, which the "
                     "'margin' crop mode never makes (it crops first): use augment='v2_crop'.")
  shift_seed, flip_seed, color_seed = split_seed(seed, 3)
  if spec.shift:
    frame = _v2_crop_frame(frame, size)

  def shift(h, w):
    return sample_v2_shift(shift_seed, h, w, size, frame=frame(h, w)) if spec.shift else 0

  def augment_image(image):
    if spec.flip:
      image = flip_image(image, flip_seed)
    return jitter_color(image, color_seed, spec.jitter)

  if spec.whole_first:
    image = view_frame(image_bytes, frame, size, crop_mode, resize, decode, interpolation,
                       shift, edit_whole=augment_image)
  else:
    image = augment_image(view_frame(image_bytes, frame, size, crop_mode, resize, decode,
                                     interpolation, shift))
  return normalize_image(image, dtype)


def _v2_crop_frame(sample_frame: Callable, size: int) -> Callable:
  """`sample_frame` with transforms_v2's own CenterCrop corner: round((side - size) / 2)
  also when the side is narrower than size (half to even: 3 missing columns pad 2 on the
  left, where torchvision's CenterCrop pads 1)."""
  def frame(height, width):
    new_h, new_w, top, left = tf.unstack(sample_frame(height, width))
    corner = lambda side, at: tf.where(side < size, tf.round((side - size) / 2), at)
    return tf.stack([new_h, new_w, corner(new_h, top), corner(new_w, left)])
  return frame


def _check_resize(resize: str) -> None:
  if resize not in TEST_RESIZES:
    raise ValueError(f'Unknown test resize {resize!r}: use one of {TEST_RESIZES} '
                     '(config.data.test_resize).')


def _check_crop_pct(crop_pct):
  if not 0 < crop_pct <= 1:
    raise ValueError(f'crop_pct={crop_pct} must be in (0, 1]: the central crop is that '
                     'fraction of the resized shorter side (0.875 = 224/256).')
