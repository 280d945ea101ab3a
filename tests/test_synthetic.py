"""The embedded dataset: a real tfds builder, deterministic, with size-dependent textures."""

import dataclasses
import hashlib
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fixres_jax.data import synthetic
from fixres_jax.data.synthetic import render


def _read_jpegs(builder, split):
  """{file_name: (jpeg bytes, label)} of a whole split, read through tfds."""
  ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  return {ex['file_name'].decode(): (ex['image'], int(ex['label']))
          for ex in tfds.as_numpy(ds)}


def _build(data_dir, seed, num_train=12, num_validation=6):
  config = synthetic.FixresSyntheticConfig(
      name=f'seed{seed}', num_train=num_train, num_validation=num_validation, seed=seed)
  builder = tfds.builder('fixres_synthetic', config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def test_tiny_builds_and_reads_back_like_any_tfds_dataset(synthetic_data_dir):
  builder = tfds.builder('fixres_synthetic/tiny', data_dir=synthetic_data_dir)
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == 256
  assert builder.info.features['label'].names == list(synthetic.CLASS_NAMES)
  examples = _read_jpegs(builder, 'validation')
  assert sorted(examples) == [f'validation/{i:08d}.jpg' for i in range(100)]
  assert {label for _, label in examples.values()} == set(range(synthetic.NUM_CLASSES))

  shapes = []
  for jpeg, _ in examples.values():
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == 'JPEG' and image.mode == 'RGB'
    shapes.append(image.size[::-1])
  heights, widths = np.array(shapes).T
  short, aspect = np.minimum(heights, widths), widths / heights
  low, high = render.DEFAULT_STYLE.short_side
  assert short.min() >= low and short.max() <= high
  assert short.max() - short.min() > 40  # varied sizes
  assert np.all((aspect > 0.74) & (aspect < 1.34))
  assert (aspect < 0.9).sum() > 10 and (aspect > 1.1).sum() > 10  # portrait and landscape

  # The default decoder gives uint8 images of the stored size, as for imagenet2012.
  decoded = next(iter(tfds.as_numpy(builder.as_dataset(split='train').take(1))))
  assert decoded['image'].dtype == np.uint8 and decoded['image'].shape[2] == 3


def test_builds_are_deterministic_and_seeded(tmp_path, synthetic_data_dir):
  first = _read_jpegs(_build(tmp_path / 'a', seed=0), 'train')
  again = _read_jpegs(_build(tmp_path / 'b', seed=0), 'train')
  other = _read_jpegs(_build(tmp_path / 'c', seed=1), 'train')
  assert first == again  # byte-identical JPEGs and labels
  assert all(first[name][0] != other[name][0] for name in first)
  # An example depends on (seed, split, index) only, not on the split's size: the 12
  # examples are the first 12 of the 'tiny' config (also seed 0).
  tiny = _read_jpegs(tfds.builder('fixres_synthetic/tiny', data_dir=synthetic_data_dir),
                     'train')
  assert all(tiny[name] == first[name] for name in first)


def _fundamental_frequency(weights):
  """Cycles per pixel of the lowest 2-D Fourier component with a quarter of the peak power."""
  power = np.abs(np.fft.fft2(weights - weights.mean())) ** 2
  radius = np.hypot(np.fft.fftfreq(weights.shape[0])[:, None],
                    np.fft.fftfreq(weights.shape[1])[None, :])
  return float(radius[power >= power.max() / 4].min())


@pytest.mark.parametrize('name', [n for n in synthetic.CLASS_NAMES if n != 'blobs'])
def test_texture_period_scales_with_object_size(name):
  """A texture has a fixed number of cycles per object: twice the size, half the frequency."""
  label = synthetic.CLASS_NAMES.index(name)
  obj = render.sample_object(np.random.default_rng(label), label, 300, 300)
  obj = dataclasses.replace(obj, cycles=4.0)
  y = np.arange(-256, 256, dtype=np.float32)[:, None]
  x = np.arange(-256, 256, dtype=np.float32)[None, :]
  frequencies = []
  for size in (48.0, 96.0, 192.0):
    sized = dataclasses.replace(obj, shape=dataclasses.replace(obj.shape, size=size))
    frequencies.append(_fundamental_frequency(render.texture(sized, y, x, rng=None)))
  np.testing.assert_allclose(frequencies[0] / frequencies[1], 2, rtol=0.12)
  np.testing.assert_allclose(frequencies[1] / frequencies[2], 2, rtol=0.12)
  # The fundamental is within a factor 1.5 of one cycle per period.
  assert 1 / 1.5 < frequencies[1] * (96.0 / 4) < 1.5


def test_blob_texture_scales_with_object_size():
  """The random 'blobs' pattern changes colour about as often per object at any size."""
  label = synthetic.CLASS_NAMES.index('blobs')
  obj = render.sample_object(np.random.default_rng(0), label, 300, 300)
  changes = []
  for size in (64.0, 256.0):
    sized = dataclasses.replace(obj, shape=dataclasses.replace(obj.shape, size=size))
    n = int(size)
    grid = np.arange(n, dtype=np.float32)
    weights = render.texture(sized, grid[:, None], grid[None, :], np.random.default_rng(1))
    changes.append(np.abs(np.diff(weights > 0.5, axis=1)).sum() / n)  # per row, per object
  np.testing.assert_allclose(changes[0], changes[1], rtol=0.35)


def test_objects_fill_the_configured_range_of_sizes():
  rng = np.random.default_rng(0)
  relative = []
  for label in range(200):
    height, width = render.sample_image_size(rng)
    obj = render.sample_object(rng, label % synthetic.NUM_CLASSES, height, width)
    relative.append(obj.shape.size / min(height, width))
    cy, cx = obj.shape.center
    assert 0 <= cy <= height and 0 <= cx <= width
  low, high = render.DEFAULT_STYLE.object_size
  assert low <= min(relative) < low + 0.1 * (high - low)
  assert high - 0.1 * (high - low) < max(relative) <= high


def test_colour_does_not_give_the_class_away(synthetic_data_dir):
  """A nearest-centroid classifier on colour statistics stays near chance (10%)."""
  builder = tfds.builder('fixres_synthetic/tiny', data_dir=synthetic_data_dir)

  def colour_features(split):
    ds = tfds.as_numpy(builder.as_dataset(split=split))
    rows = [(np.concatenate([ex['image'].mean((0, 1)), ex['image'].std((0, 1))]), ex['label'])
            for ex in ds]
    return np.array([f for f, _ in rows]), np.array([l for _, l in rows])

  train_x, train_y = colour_features('train')
  test_x, test_y = colour_features('validation')
  centroids = np.stack([train_x[train_y == c].mean(0) for c in range(synthetic.NUM_CLASSES)])
  predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert np.mean(predicted == test_y) < 0.3


def test_render_example_is_a_photo_sized_uint8_image():
  image, obj = render.render_example(np.random.default_rng(3), 4)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  low, high = render.DEFAULT_STYLE.short_side
  assert low <= min(image.shape[:2]) <= high
  assert obj.label == 4 and obj.period == pytest.approx(obj.shape.size / obj.cycles)
  assert render.DEFAULT_STYLE.cycles[0] <= obj.cycles <= render.DEFAULT_STYLE.cycles[1]
  decoded = np.asarray(Image.open(io.BytesIO(render.encode_jpeg(image, quality=95))))
  assert decoded.shape == image.shape
  assert np.abs(decoded.astype(int) - image).mean() < 6


def test_bad_inputs_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='tiny'):
    synthetic.prepare('huge')
  with pytest.raises(ValueError, match='at least one example per split'):
    _build(tmp_path, seed=0, num_validation=0)
  with pytest.raises(ValueError, match='label must be in'):
    render.sample_object(np.random.default_rng(0), 10, 200, 200)


# sha256 over the JPEG bytes of the first FINGERPRINT_EXAMPLES examples of each split, per
# builder config. The bytes come from NumPy's generators (the scene) and Pillow (resizing
# and its libjpeg-turbo encoder): a new NumPy or Pillow that would silently change the
# embedded dataset, and so every accuracy in the docs, fails here instead. When a change is
# meant (render.py edited, a pinned version bumped on purpose), bump FixresSynthetic.VERSION
# (prepared copies on disk are otherwise reused) and replace the digest.
FINGERPRINT_EXAMPLES = 4
DATA_FINGERPRINTS = {
    'default': 'd516a075cb6252fd555d874f683f4bf1f5344ef8c7438e959d9ef3d5dc8a1e1c',
    'reproduce': 'd516a075cb6252fd555d874f683f4bf1f5344ef8c7438e959d9ef3d5dc8a1e1c',
    'small': 'd516a075cb6252fd555d874f683f4bf1f5344ef8c7438e959d9ef3d5dc8a1e1c',
    'tiny': 'd516a075cb6252fd555d874f683f4bf1f5344ef8c7438e959d9ef3d5dc8a1e1c',
    'shift_noise': '8c79e86433aeaa77eef241eb9b8e3436f3945663a8a4f3a36b8bd59c2d2b4978',
    'shift_jpeg': 'bff081d92541babecb09e2875dd64a0f14d2dbc42130b844170b98111c5a6575',
    'shift_blur': '633f6df0bb09f425d49c39089cee00497b75e9655ad9399f41ed34024a075c76',
    'shift_small': '5380ef9408d533118114715a97e56641e5e6420a6cee0afd8fc9c64854603d61',
}


def _fingerprint(config) -> str:
  digest = hashlib.sha256()
  for split in ('train', 'validation') if config.num_train else ('validation',):
    for index in range(FINGERPRINT_EXAMPLES):
      digest.update(synthetic.generate_example(config.seed, split, index, config.shift)['image'])
  return digest.hexdigest()


@pytest.mark.parametrize('config', synthetic.FixresSynthetic.BUILDER_CONFIGS,
                         ids=lambda c: c.name)
def test_generated_bytes_are_pinned(config):
  assert _fingerprint(config) == DATA_FINGERPRINTS[config.name], (
      f'fixres_synthetic/{config.name} generates different JPEG bytes than before (NumPy '
      f'{np.__version__}, Pillow {Image.__version__}). Install the locked versions '
      '(requirements.lock); if the change is meant, bump FixresSynthetic.VERSION and update '
      'DATA_FINGERPRINTS.')


def test_shifts_draw_the_same_scenes_with_one_range_changed():
  """A shifted validation image is the default one's scene and class under other conditions."""
  def scene(index, style):
    rng = np.random.default_rng([0, 1, index])
    image, obj = render.render_example(rng, index % synthetic.NUM_CLASSES, style)
    return image, obj

  def sharpness(jpeg):
    grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert('L'), np.float64)
    return np.abs(np.diff(grey, axis=1)).mean()

  for index in range(3):
    plain, plain_obj = scene(index, render.DEFAULT_STYLE)
    for name in ('noise', 'jpeg', 'blur'):
      image, obj = scene(index, render.SHIFTS[name])
      assert obj.shape == plain_obj.shape and obj.cycles == plain_obj.cycles
    _, small = scene(index, render.SHIFTS['small'])
    assert small.shape.size < plain_obj.shape.size and small.cycles == plain_obj.cycles
    np.testing.assert_array_equal(small.colors, plain_obj.colors)
    default = synthetic.generate_example(0, 'validation', index)
    shifted = {n: synthetic.generate_example(0, 'validation', index, n) for n in render.SHIFTS}
    assert all(ex['label'] == default['label'] for ex in shifted.values())
    assert len(shifted['jpeg']['image']) < len(default['image'])  # coarser quantisation
    assert sharpness(shifted['blur']['image']) < 0.8 * sharpness(default['image'])
    assert sharpness(shifted['noise']['image']) > 1.2 * sharpness(default['image'])


def test_a_shift_config_is_a_validation_split_of_the_default_scenes(tmp_path):
  config = synthetic.FixresSyntheticConfig(name='shift_test', num_train=0, num_validation=4,
                                           shift='blur')
  builder = tfds.builder('fixres_synthetic', config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert set(builder.info.splits) == {'validation'}
  shifted = _read_jpegs(builder, 'validation')
  for name, (jpeg, label) in shifted.items():
    index = int(name.split('/')[1].split('.')[0])
    assert jpeg == synthetic.generate_example(0, 'validation', index, 'blur')['image']
    assert label == index % synthetic.NUM_CLASSES
