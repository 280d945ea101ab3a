"""Apparent object size maths (FixRes, Sec. 3): which test resolution matches a train one.

A train crop of area fraction s of an H x W image, resized to K_train, shows an object of
r pixels at r * K_train / (sigma * sqrt(H W)), sigma = sqrt(s). The test transform (shorter
side to K_test / crop_pct, central crop) shows it at r * (K_test / crop_pct) / sqrt(H W)
(taking sqrt(H W) for the shorter side, exact for square images). Test over train:

    ratio = sigma * K_test / (crop_pct * K_train),

so objects look alike on average when K_test* = crop_pct * K_train / E[sigma].

E[sigma] depends on the crop sampler and on the images' shapes:
  'plain'        area uniform in [0.08, 1], nothing rejected: E[sigma] = 0.708 (closed form
                 below), K_test* = 1.236 K_train at crop_pct 0.875.
  'torchvision'  RandomResizedCrop, the sampler FixRes (and fixres_jax's default pipeline)
                 uses: crops that do not fit are redrawn, which favours small ones, and after
                 10 misses it falls back to a central crop. 0.636 on 500 x 375 images.
  'inception'    tf.image.sample_distorted_bounding_box (flax, big_vision): 0.581.

The torchvision sampler here is a vectorised NumPy twin of
fixres_jax.data.preprocess.sample_crop_torchvision, tested against it; the inception sampler
runs the pipeline's own TF code (TensorFlow is imported only then).

  python -m fixres_jax.resolution --train_res=128 [--crop_pct=0.875] [--samples=200000]
      [--sampler=torchvision] [--aspect=4/3 | --image_size=500x375,640x480 | --dataset=NAME]
"""

import fractions
import math
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from fixres_jax import errors

SAMPLERS = ('torchvision', 'inception', 'plain')
DEFAULT_IMAGE_SHAPE = (375, 500)  # (height, width): ImageNet's most common shape.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def sample_crops_torchvision(rng: np.random.Generator, height, width, n: int,
                             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             attempts: int = 10) -> np.ndarray:
  """torchvision's RandomResizedCrop.get_params for n crops at once.

  Args:
    rng: NumPy generator.
    height, width: image size, scalars or arrays of shape [n].
    n: number of crops.

  Returns:
    int64 [n, 4]: offset_y, offset_x, crop_height, crop_width.
  """
  height = np.broadcast_to(np.asarray(height, np.int64), (n,))
  width = np.broadcast_to(np.asarray(width, np.int64), (n,))
  area = (height * width)[:, None] * rng.uniform(*scale, size=(n, attempts))
  aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, attempts)))
  w = np.round(np.sqrt(area * aspect))
  h = np.round(np.sqrt(area / aspect))
  fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
  first = np.argmax(fits, axis=1)  # The first attempt that fits (0 if none does).
  any_fits = fits.any(axis=1)
  rows = np.arange(n)
  # Fall-back: the whole image with its aspect ratio clamped to `ratio`, centred.
  in_ratio = width / height
  fallback_h = np.where(in_ratio < ratio[0], np.round(width / ratio[0]), height)
  fallback_w = np.where(in_ratio > ratio[1], np.round(height * ratio[1]), width)
  crop_h = np.where(any_fits, h[rows, first], fallback_h).astype(np.int64)
  crop_w = np.where(any_fits, w[rows, first], fallback_w).astype(np.int64)
  offset_y = np.where(any_fits, rng.integers(0, height - crop_h + 1), (height - crop_h) // 2)
  offset_x = np.where(any_fits, rng.integers(0, width - crop_w + 1), (width - crop_w) // 2)
  return np.stack([offset_y, offset_x, crop_h, crop_w], axis=1)


def sample_crops_inception(seed: int, height, width, n: int) -> np.ndarray:
  """n crops of the pipeline's inception sampler (TensorFlow), like sample_crops_torchvision."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  heights = np.broadcast_to(np.asarray(height, np.int32), (n,))
  widths = np.broadcast_to(np.asarray(width, np.int32), (n,))

  def sample(index, h, w):
    return tf.stack(preprocess.sample_crop_inception(tf.stack([seed, index]), h, w))

  ds = tf.data.Dataset.from_tensor_slices((tf.range(n, dtype=tf.int64), heights, widths))
  ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE).batch(8192)
  return np.concatenate(list(ds.as_numpy_iterator())).astype(np.int64)


def sample_crops_plain(rng: np.random.Generator, n: int, scale=(0.08, 1.0)) -> np.ndarray:
  """The paper's idealised model: n area fractions uniform in `scale`, none rejected."""
  return rng.uniform(*scale, size=n)


def crop_area_fractions(boxes: np.ndarray, height, width) -> np.ndarray:
  """Area of each [offset_y, offset_x, h, w] box as a fraction of its image's area."""
  return boxes[:, 2] * boxes[:, 3] / (np.asarray(height) * np.asarray(width))


def sample_area_fractions(sampler: str, n: int, image_shapes=None, seed: int = 0):
  """n crop area fractions s from `sampler`, each on an image drawn from `image_shapes`.

  Args:
    sampler: one of SAMPLERS.
    image_shapes: [m, 2] (height, width) rows, drawn uniformly; default 375 x 500.

  Returns:
    (area fractions [n], the (height, width) each crop was drawn on [n, 2]).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f'Unknown sampler {sampler!r}: use one of {SAMPLERS}.')
  shapes = np.asarray(DEFAULT_IMAGE_SHAPE if image_shapes is None else image_shapes, np.int64)
  shapes = shapes.reshape(-1, 2)
  if shapes.size == 0 or (shapes <= 0).any():
    raise ValueError(f'image_shapes must be positive (height, width) rows, got {shapes[:4]}.')
  rng = np.random.default_rng(seed)
  shapes = shapes[rng.integers(0, len(shapes), size=n)]
  height, width = shapes.T
  if sampler == 'plain':
    return sample_crops_plain(rng, n), shapes
  if sampler == 'torchvision':
    boxes = sample_crops_torchvision(rng, height, width, n)
  else:
    boxes = sample_crops_inception(seed, height, width, n)
  return crop_area_fractions(boxes, height, width), shapes


def expected_sigma_plain(scale=(0.08, 1.0)) -> float:
  """Closed form of E[sqrt(s)], s uniform in `scale`: (2/3)(b^1.5 - a^1.5) / (b - a)."""
  a, b = scale
  return 2 / 3 * (b**1.5 - a**1.5) / (b - a)


def expected_sigma(sampler: str = 'torchvision', image_shapes=None, samples: int = 200_000,
                   seed: int = 0) -> float:
  """Monte Carlo E[sigma], sigma = sqrt(crop area fraction)."""
  areas, _ = sample_area_fractions(sampler, samples, image_shapes, seed)
  return float(np.sqrt(areas).mean())


def object_size_ratio(sigma, train_res: int, test_res: float, crop_pct: float = 0.875):
  """Apparent object size at test over train time: sigma * K_test / (crop_pct * K_train)."""
  return np.asarray(sigma) * test_res / (crop_pct * train_res)


def shape_from_aspect(aspect: float, shorter: int = DEFAULT_IMAGE_SHAPE[0]):
  """(height, width) of an image of aspect ratio width / height and the given shorter side."""
  if aspect >= 1:
    return shorter, round(shorter * aspect)
  return round(shorter / aspect), shorter


def recommend_test_res(train_res: int, crop_pct: float = 0.875, sampler: str = 'torchvision',
                       image_shapes=None, aspect: Optional[float] = None,
                       samples: int = 200_000, multiple: int = 8, seed: int = 0) -> dict:
  """The test resolution whose apparent object sizes match training's, on average.

  Args:
    train_res: K_train.
    crop_pct: the test transform's central crop fraction.
    sampler: the train crop sampler, one of SAMPLERS.
    image_shapes: [m, 2] (height, width) of the dataset's images (or a sample of them).
    aspect: width / height, used when image_shapes is None; default: 500 x 375 images.
    multiple: round K_test* to a multiple of this.

  Returns:
    A dict: expected_area, expected_sigma, test_res_exact (crop_pct * K_train / E[sigma]),
    test_res (rounded), quantiles of the object size ratio at K_test = K_train and at
    K_test = test_res, and test_res_shorter_side (K_test* when the ratio is measured on
    the shorter side of non-square images, see recommend_test_res's comment; None for
    'plain').
  """
  if multiple < 1:
    raise ValueError(f'multiple={multiple} must be a positive integer (8 is usual).')
  if image_shapes is None and aspect is not None:
    image_shapes = [shape_from_aspect(aspect)]
  areas, shapes = sample_area_fractions(sampler, samples, image_shapes, seed)
  sigma = np.sqrt(areas)
  mean_sigma = float(sigma.mean())
  exact = crop_pct * train_res / mean_sigma
  # The test transform scales the shorter side, not sqrt(H W): on a non-square image the
  # ratio gains a factor sqrt(longer / shorter), which the paper's formula leaves out.
  elongation = np.sqrt(shapes.max(axis=1) / shapes.min(axis=1))
  test_res = max(multiple, multiple * round(exact / multiple))

  def quantiles(k_test):
    values = np.quantile(object_size_ratio(sigma, train_res, k_test, crop_pct), QUANTILES)
    return {f'q{round(100 * q):02d}': round(float(v), 4) for q, v in zip(QUANTILES, values)}

  return {
      'sampler': sampler, 'train_res': train_res, 'crop_pct': crop_pct, 'samples': samples,
      'expected_area': float(areas.mean()), 'expected_sigma': mean_sigma,
      'test_res_exact': exact, 'test_over_train': exact / train_res, 'test_res': test_res,
      'test_res_shorter_side': (None if sampler == 'plain' else
                                crop_pct * train_res / float((sigma * elongation).mean())),
      'ratio_at_train_res': {'mean': float(mean_sigma / crop_pct), **quantiles(train_res)},
      'ratio_at_test_res': {
          'mean': float(object_size_ratio(mean_sigma, train_res, test_res, crop_pct)),
          **quantiles(test_res)},
  }


def read_image_shapes(dataset: str, split: str = 'train', max_images: int = 2000,
                      data_dir: Optional[str] = None, image_key: str = 'image') -> np.ndarray:
  """(height, width) of up to `max_images` images of a prepared tfds dataset.

  Reads JPEG headers only (tf.image.extract_jpeg_shape); other formats are decoded.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except ValueError as e:  # tfds's DatasetNotFoundError, a malformed name
    raise errors.NotFoundError(f'--dataset={dataset!r}: {str(e).splitlines()[0]}') from None
  if not builder.is_prepared():
    raise errors.NotFoundError(
        f'tfds dataset {dataset!r} is not prepared in {builder.data_dir}: prepare it first '
        '(see README), or pass --aspect / --image_size instead.')
  source = sources.TfdsSource(builder, image_key=image_key)
  return sources.read_image_shapes(source, split, max_images)


def parse_image_sizes(sizes: Sequence[str]) -> np.ndarray:
  """['500x375', ...] (WIDTHxHEIGHT) -> [m, 2] (height, width)."""
  shapes = []
  for size in sizes:
    try:
      width, height = (int(v) for v in size.lower().split('x'))
    except ValueError:
      raise ValueError(f'--image_size {size!r} is not WIDTHxHEIGHT, e.g. 500x375.') from None
    shapes.append((height, width))
  return np.array(shapes, np.int64)


def format_report(result: dict, shapes_note: str) -> str:
  """A readable report of recommend_test_res's result."""
  k_train, k_test = result['train_res'], result['test_res']
  lines = [
      f"FixRes test resolution for K_train = {k_train}, crop_pct = {result['crop_pct']}",
      f"  sampler: {result['sampler']} ({result['samples']:,} crops; images: {shapes_note})",
      f"  E[area] = {result['expected_area']:.4f}   E[sigma] = E[sqrt(area)] = "
      f"{result['expected_sigma']:.4f}",
      f"  K_test* = crop_pct * K_train / E[sigma] = {result['test_res_exact']:.1f} "
      f"({result['test_over_train']:.3f} x K_train)",
      f"  recommended K_test (multiple of the rounding step): {k_test}",
  ]
  if result['test_res_shorter_side'] is not None:
    lines.append(
        f"  (measuring object size on the shorter side, as the test resize does, rather than "
        f"sqrt(H W): K_test* = {result['test_res_shorter_side']:.1f})")
  lines += [
      '',
      '  apparent object size, test over train: sigma * K_test / (crop_pct * K_train)',
      '  K_test    mean     ' + '  '.join(f'{k:>6s}' for k in result['ratio_at_test_res']
                                          if k != 'mean'),
  ]
  for name, k in (('train', k_train), ('rec.', k_test)):
    row = result['ratio_at_train_res' if name == 'train' else 'ratio_at_test_res']
    values = '  '.join(f'{v:6.3f}' for q, v in row.items() if q != 'mean')
    lines.append(f'  {k:4d} ({name:5s}) {row["mean"]:.3f}    {values}')
  return '\n'.join(lines)


def define_flags():
  flags.DEFINE_integer('train_res', None, 'Train resolution K_train.', required=True)
  flags.DEFINE_float('crop_pct', 0.875, 'Central crop fraction of the test transform.')
  flags.DEFINE_enum('sampler', 'torchvision', SAMPLERS, 'Train crop sampler.')
  flags.DEFINE_integer('samples', 200_000, 'Monte Carlo crops.')
  flags.DEFINE_integer('multiple', 8, 'Round the recommended K_test to a multiple of this.')
  flags.DEFINE_integer('seed', 0, 'Monte Carlo seed.')
  flags.DEFINE_string('aspect', None, 'Image aspect ratio width/height, e.g. 4/3.')
  flags.DEFINE_list('image_size', None, 'Image sizes WIDTHxHEIGHT, e.g. 500x375,640x480.')
  flags.DEFINE_string('dataset', None, 'A prepared tfds dataset to read image sizes from.')
  flags.DEFINE_string('split', 'train', 'Split of --dataset.')
  flags.DEFINE_integer('max_images', 2000, 'Images of --dataset to read sizes from.')
  flags.DEFINE_string('data_dir', None, 'tfds data dir of --dataset.')


def main(argv):
  del argv
  f = flags.FLAGS
  if sum(v is not None for v in (f.aspect, f.image_size, f.dataset)) > 1:
    raise app.UsageError('Give at most one of --aspect, --image_size, --dataset.')
  shapes, aspect = None, None
  note = f'{DEFAULT_IMAGE_SHAPE[1]}x{DEFAULT_IMAGE_SHAPE[0]}'
  if f.aspect is not None:
    try:
      aspect = float(fractions.Fraction(f.aspect))
    except (ValueError, ZeroDivisionError):
      raise app.UsageError(f'--aspect={f.aspect!r}: give WIDTH/HEIGHT or a number, e.g. '
                           '4/3 or 1.333.') from None
    note = f'aspect {f.aspect}'
  elif f.image_size:
    try:
      shapes = parse_image_sizes(f.image_size)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    note = ', '.join(f.image_size)
  elif f.dataset:
    shapes = read_image_shapes(f.dataset, f.split, f.max_images, f.data_dir)
    note = f'{len(shapes)} sizes from {f.dataset}:{f.split}'
  if f.sampler == 'plain':
    note = 'any (the plain model ignores shapes)'
  result = recommend_test_res(f.train_res, f.crop_pct, f.sampler, shapes, aspect, f.samples,
                              f.multiple, f.seed)
  print(format_report(result, note))
  if f.sampler == 'plain':
    print(f'  closed form: E[sigma] = {expected_sigma_plain():.4f}, K_test* = '
          f'{f.crop_pct * f.train_res / expected_sigma_plain():.1f}')


if __name__ == '__main__':
  define_flags()
  errors.run_tool(main)
