"""Tests of the resolution-separated transforms and the crop samplers (TensorFlow, CPU)."""

import io
import math

import numpy as np
from PIL import Image
import pytest
from scipy import stats
import tensorflow as tf

from fixres_jax import resolution
from fixres_jax.data import preprocess

MEAN = np.array(preprocess.MEAN_RGB, np.float32)
STD = np.array(preprocess.STDDEV_RGB, np.float32)


def make_image(height, width, seed=0):
  """A smooth but detailed RGB image: a one-pixel shift changes it visibly."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  image = np.full((height, width, 3), 128, np.float32)
  for _ in range(12):
    fy, fx = rng.uniform(0.005, 0.12, 2) * rng.choice([-1, 1], 2)
    image += np.sin(fy * y + fx * x + rng.uniform(0, 6.3))[..., None] * rng.uniform(-20, 20, 3)
  return np.clip(image, 0, 255).astype(np.uint8)


def encode(array, fmt='JPEG', mode=None, **kwargs):
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def denormalize(image):
  return np.asarray(tf.cast(image, tf.float32)) * STD + MEAN


def reference_test_transform(image, size, crop_pct=0.875, shift_x=0):
  """torchvision's Resize(int(size / crop_pct)) + CenterCrop(size), with PIL (as FixRes)."""
  height, width = image.shape[:2]
  short = math.floor(size / crop_pct)
  if height <= width:
    new_h, new_w = short, int(short * width / height)
  else:
    new_h, new_w = int(short * height / width), short
  resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2)) + shift_x
  return np.asarray(resized.crop((left, top, left + size, top + size)), np.float32)


@pytest.mark.parametrize('height,width,size', [
    (375, 500, 224), (500, 375, 160), (333, 333, 224), (241, 719, 96), (1000, 700, 96)])
def test_test_transform_matches_resize_then_center_crop(height, width, size):
  data = encode(make_image(height, width), quality=95)
  decoded = tf.io.decode_jpeg(data, channels=3).numpy()  # Same pixels as ours: geometry only.
  ours = denormalize(preprocess.preprocess_test(data, size))
  error = np.abs(ours - reference_test_transform(decoded, size)).mean()
  shifted = np.abs(ours - reference_test_transform(decoded, size, shift_x=1)).mean()
  assert ours.shape == (size, size, 3)
  assert error < 1.5, error  # 0-255 scale; the (1000, 700, 96) case decodes at 1/4 scale.
  assert error < shifted / 2, (error, shifted)  # A one-pixel offset would show.


def sample_tf_crops(sampler, height, width, n, seed=0):
  """n crops of a TF sampler, drawn inside tf.data (graph mode), as int [n, 4]."""
  ds = tf.data.Dataset.range(n).map(
      lambda i: tf.stack(sampler(tf.stack([tf.constant(seed, tf.int64), i]), height, width)),
      num_parallel_calls=tf.data.AUTOTUNE)
  return next(iter(ds.batch(n))).numpy()


SHAPES = [(375, 500), (500, 375), (300, 300), (100, 1000), (1000, 90), (60, 1000)]


@pytest.mark.parametrize('height,width', SHAPES)
def test_torchvision_sampler_matches_numpy_twin(height, width):
  n = 3000
  ours = sample_tf_crops(preprocess.sample_crop_torchvision, height, width, n)
  twin = resolution.sample_crops_torchvision(np.random.default_rng(1), height, width, n)
  for column in (0, 1):  # Offsets within the image.
    assert (ours[:, column] >= 0).all()
    assert (ours[:, column] + ours[:, column + 2] <= (height, width)[column]).all()
  for statistic in (lambda c: c[:, 2] * c[:, 3] / (height * width),  # Area fraction.
                    lambda c: c[:, 3] / c[:, 2]):  # Aspect ratio.
    a, b = statistic(ours), statistic(twin)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # Every crop is the fall-back.
      assert a[0] == b[0]
    else:
      assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_train_crop_areas_and_fallback():
  crops = sample_tf_crops(preprocess.sample_crop_torchvision, 375, 500, 2000)
  areas = crops[:, 2] * crops[:, 3] / (375 * 500)
  # Rounding w and h to integers can take a crop a hair under the 0.08 target.
  assert areas.min() >= 0.075 and areas.max() <= 1.0
  assert areas.min() < 0.1 and areas.max() > 0.9
  # No 4:3..3:4 crop of >= 8% fits a 60 x 1000 strip: the central crop at aspect 4/3.
  crops = sample_tf_crops(preprocess.sample_crop_torchvision, 60, 1000, 50)
  np.testing.assert_array_equal(crops, [[0, (1000 - 80) // 2, 60, 80]] * 50)
  crops = sample_tf_crops(preprocess.sample_crop_torchvision, 1000, 60, 50)  # Tall: 3/4.
  np.testing.assert_array_equal(crops, [[(1000 - 80) // 2, 0, 80, 60]] * 50)


def test_inception_sampler_is_a_different_distribution():
  n = 3000
  inception = sample_tf_crops(preprocess.sample_crop_inception, 375, 500, n)
  twin = resolution.sample_crops_torchvision(np.random.default_rng(0), 375, 500, n)
  area_inception = inception[:, 2] * inception[:, 3] / (375 * 500)
  area_torchvision = twin[:, 2] * twin[:, 3] / (375 * 500)
  assert area_inception.mean() < area_torchvision.mean() - 0.03
  assert stats.ks_2samp(area_inception, area_torchvision).pvalue < 1e-6
  assert ((inception[:, :2] >= 0) & (inception[:, :2] + inception[:, 2:] <= (375, 500))).all()


@pytest.mark.parametrize('ratio', [2, 4, 8])
def test_decode_and_crop_window_is_in_scaled_coordinates(ratio):
  data = encode(make_image(375, 500))
  scaled = tf.io.decode_jpeg(data, channels=3, ratio=ratio).numpy()
  assert scaled.shape[:2] == (math.ceil(375 / ratio), math.ceil(500 / ratio))
  window = [3, 5, scaled.shape[0] // 2, scaled.shape[1] // 2]
  crop = tf.io.decode_and_crop_jpeg(data, window, channels=3, ratio=ratio).numpy()
  np.testing.assert_array_equal(crop, scaled[3:3 + window[2], 5:5 + window[3]])


@pytest.mark.parametrize('box,size,ratio', [
    ((101.0, 37.0, 700.0, 650.0), 160, 4),  # A train crop, 4x the target.
    ((13.0, 250.0, 520.0, 600.0), 224, 2),
    ((30.5, 20.25, 930.3, 680.7), 80, 8)])  # Fractional, like a test crop's window.
def test_downscaled_decode_keeps_the_crop_geometry(box, size, ratio):
  data = encode(make_image(1000, 900, seed=3), quality=95)
  assert preprocess.DCT_RATIOS[int(preprocess.select_dct_ratio(box[2], box[3], size))] == ratio
  fast = preprocess.decode_and_resize_jpeg(data, box, size).numpy()
  full = preprocess.decode_and_resize_jpeg(data, box, size, dct_scaling=False).numpy()
  shifted_box = (box[0] + 2 * ratio, *box[1:])  # Off by two pixels of the scaled image.
  shifted = preprocess.decode_and_resize_jpeg(data, shifted_box, size).numpy()
  error = np.abs(fast - full).mean()
  assert error < 2.5, error
  assert error < np.abs(shifted - full).mean() / 2


def test_every_format_decodes_to_rgb():
  rgb = make_image(200, 300)
  expected = denormalize(preprocess.preprocess_test(encode(rgb, quality=95), 96))
  for data in (encode(rgb, 'PNG'), encode(rgb, 'BMP'), encode(rgb, 'GIF'),
               encode(rgb, mode='CMYK', quality=95)):
    image = denormalize(preprocess.preprocess_test(data, 96))
    assert image.shape == (96, 96, 3)
    assert np.abs(image - expected).mean() < 6  # GIF's 256-colour palette is the worst.
  grey = denormalize(preprocess.preprocess_test(encode(rgb, mode='L'), 96))
  assert grey.shape == (96, 96, 3)
  np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)


def test_transforms_are_deterministic_per_seed():
  data = encode(make_image(375, 500))
  seed, other = tf.constant([7, 1], tf.int64), tf.constant([7, 2], tf.int64)
  for transform in (lambda s: preprocess.preprocess_train(data, s, 64),
                    lambda s: preprocess.preprocess_train(data, s, 64, crop='inception'),
                    lambda s: preprocess.preprocess_finetune(data, s, 64, augment='v2')):
    first, again, different = transform(seed), transform(seed), transform(other)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - different).mean() > 0.01


def test_eager_and_tf_data_agree():
  encoded = [encode(make_image(375, 500)), encode(make_image(120, 90), 'PNG')]

  def transform(data, seed):
    return (preprocess.preprocess_train(data, seed, 48),
            preprocess.preprocess_test(data, 48),
            preprocess.preprocess_finetune(data, seed, 56, augment='v2'))

  seeds = np.array([[i, 5] for i in range(len(encoded))], np.int64)
  ds = tf.data.Dataset.from_tensor_slices((encoded, seeds)).map(transform)
  for (data, seed), in_graph in zip(zip(encoded, seeds), ds):
    for eager, graph in zip(transform(tf.constant(data), tf.constant(seed)), in_graph):
      np.testing.assert_allclose(eager, graph, atol=1e-5)


def test_output_dtype_and_normalisation():
  grey = np.full((100, 150, 3), MEAN.round().astype(np.uint8))
  data = encode(grey, 'PNG')
  image = preprocess.preprocess_train(data, tf.constant([0, 0]), 32, dtype=tf.bfloat16)
  assert image.dtype == tf.bfloat16 and image.shape == (32, 32, 3)
  assert np.abs(tf.cast(image, tf.float32).numpy()).max() < 0.02  # The mean maps to 0.


def test_finetune_variants():
  data = encode(make_image(300, 450))
  test = preprocess.preprocess_test(data, 64).numpy()
  seed = tf.constant([3, 4])
  np.testing.assert_array_equal(preprocess.preprocess_finetune(data, seed, 64, augment='none'),
                                test)
  flips = {bool(np.array_equal(preprocess.preprocess_finetune(data, tf.constant([i, 0]), 64),
                               test[:, ::-1])) for i in range(8)}
  assert flips == {True, False}  # Either the test image or its mirror, both occur.


def test_v2_shift_spans_the_width():
  # Resized to 73 x 109 (floor(64 / 0.875) = 73): the central crop's left offset is 22.
  ds = tf.data.Dataset.range(500).map(
      lambda i: preprocess.sample_v2_shift(tf.stack([i, 9]), 300, 450, 64))
  shifts = next(iter(ds.batch(500))).numpy()
  assert shifts.min() == -22 and shifts.max() == 22
  boxes = [preprocess.central_crop_box(300, 450, 64, shift_x=s).numpy() for s in (-22, 22)]
  scale = 450 / 109
  np.testing.assert_allclose([boxes[0][1], boxes[1][1] + boxes[1][3]], [0, 108 * scale],
                             rtol=1e-6)
  # A square image resizes to 73 x 73: shifts of at most round((73 - 64) / 2) = 4.
  assert abs(int(preprocess.sample_v2_shift(tf.constant([0, 1]), 300, 300, 64))) <= 4


def test_color_jitter_is_weak_and_in_range():
  image = tf.constant(make_image(40, 60), tf.float32)
  seed = tf.constant([1, 2])
  np.testing.assert_allclose(preprocess.jitter_color(image, seed, strength=0.0), image,
                             atol=1e-3)
  jittered = preprocess.jitter_color(image, seed).numpy()
  change = np.abs(jittered - image.numpy())
  assert 0 < change.mean() < 0.1 * 255 and jittered.min() >= 0 and jittered.max() <= 255


def test_bad_arguments_are_named():
  data = encode(make_image(64, 64))
  with pytest.raises(ValueError, match='crop'):
    preprocess.preprocess_train(data, tf.constant([0, 0]), 32, crop='random')
  with pytest.raises(ValueError, match='augment'):
    preprocess.preprocess_finetune(data, tf.constant([0, 0]), 32, augment='mixup')
  with pytest.raises(ValueError, match='crop_pct'):
    preprocess.preprocess_test(data, 32, crop_pct=1.5)


def test_color_jitter_is_torchvision_colorjitter():
  """Random order, factors uniform in [1 - x, 1 + x]; each op as torchvision's on float
  tensors, and as PIL's ImageEnhance (what the official recipe ran) up to uint8 rounding."""
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.transforms import functional as TF  # pylint: disable=g-import-not-at-top
  from PIL import ImageEnhance  # pylint: disable=g-import-not-at-top
  image = make_image(40, 52)
  torch_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
  pil_ops = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  orders, factors = set(), []
  for i in range(30):
    seed = tf.constant([i, 7])
    order, factor = (t.numpy() for t in preprocess.sample_jitter(seed, 0.3, 0.3, 0.3))
    ours = preprocess.jitter_color(tf.constant(image, tf.float32), seed, 0.3).numpy()
    tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
    pil = Image.fromarray(image)
    for op in order:
      tensor = torch_ops[op](tensor, float(factor[op]))
      pil = pil_ops[op](pil).enhance(float(factor[op]))
    np.testing.assert_allclose(ours, tensor.permute(1, 2, 0).numpy() * 255, atol=0.05)
    # PIL truncates to uint8 after each of the three ops (and rounds the mean grey level).
    pil_error = np.abs(ours - np.asarray(pil, np.float32))
    assert pil_error.max() <= 4 and pil_error.mean() < 2
    orders.add(tuple(order))
    factors.append(factor)
  assert len(orders) == 6  # every order of the three ops occurs
  factors = np.array(factors)
  assert factors.min() >= 0.7 and factors.max() <= 1.3
  assert stats.kstest(factors.ravel(), 'uniform', args=(0.7, 0.6)).pvalue > 1e-3


def test_train_jitter_keeps_crops_and_flips():
  data = encode(make_image(120, 160), quality=95)
  seed = tf.constant([3, 4])
  plain = denormalize(preprocess.preprocess_train(data, seed, 48))
  jittered = denormalize(preprocess.preprocess_train(data, seed, 48, color_jitter=0.3))
  assert not np.allclose(plain, jittered, atol=1)
  # Brightness, contrast, saturation: the jittered image is a per-pixel colour map of the
  # same crop, so the grey-level ordering of pixels mostly survives.
  grey = lambda x: x @ np.array([0.299, 0.587, 0.114])
  assert stats.spearmanr(grey(plain).ravel(), grey(jittered).ravel())[0] > 0.9


def reference_official_transform(image, size):
  """The official FixRes test transform with PIL: Resize(int(256 / 224 * size)) setting the
  HEIGHT (width int(S * w / h)), then torchvision's CenterCrop, black padding included."""
  height, width = image.shape[:2]
  short = int((256 / 224) * size)
  new_w = int(short * width / height)
  resized = np.asarray(Image.fromarray(image).resize((new_w, short), Image.BILINEAR),
                       np.float32)
  top = int(round((short - size) / 2))
  out = np.zeros((size, size, 3), np.float32)
  if new_w >= size:
    left = int(round((new_w - size) / 2))
    return resized[top:top + size, left:left + size]
  pad = (size - new_w) // 2
  out[:, pad:pad + new_w] = resized[top:top + size]
  return out


@pytest.mark.parametrize('height,width,size,black', [
    (500, 375, 224, 32), (375, 500, 224, 0), (333, 333, 160, 0), (640, 427, 128, 31),
    (900, 300, 96, 60)])
def test_official_resize_matches_the_official_transform(height, width, size, black):
  data = encode(make_image(height, width), quality=95)
  decoded = tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE').numpy()
  ours = denormalize(preprocess.preprocess_test(data, size, resize='official'))
  expected = reference_official_transform(decoded, size)
  np.testing.assert_allclose(ours, expected, atol=1.5)
  is_black = np.all(np.abs(ours) < 1e-3, axis=(0, 2))
  assert is_black.sum() == black  # the black columns, left and right
  if black:
    assert is_black[:black // 2].all() and is_black[-(black - black // 2):].all()
  # 'shorter' never pads; on portraits the two differ, elsewhere they agree.
  shorter = denormalize(preprocess.preprocess_test(data, size, decode='exact'))
  assert np.all(np.abs(shorter) > 1e-3, axis=(0, 2)).any()
  assert (height > width) == (not np.allclose(ours, shorter, atol=1.5))


def test_official_resize_in_finetuning():
  data = encode(make_image(500, 375), quality=95)
  seed = tf.constant([1, 1])
  test = preprocess.preprocess_test(data, 224, resize='official').numpy()
  none = preprocess.preprocess_finetune(data, seed, 224, augment='none', resize='official')
  np.testing.assert_array_equal(none, test)
  v2 = preprocess.preprocess_finetune(data, seed, 224, augment='v2', resize='official')
  assert v2.shape == (224, 224, 3)


@pytest.mark.parametrize('name', ['as shipped', 'transposed', ' 2x '])
def test_exact_decoding_matches_torchvision_on_real_photos(name):
  """>= 45 dB against PIL decode + torchvision Resize + CenterCrop at every K_test; the
  fast path (DCT-scaled windows) is measurably further away where it scales."""
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  photos = {k: v for k, v in decode.real_photos().items() if name in k}
  rows = decode.measure_psnr(photos)
  assert len(rows) == len(decode.RESOLUTIONS)
  for row in rows:
    assert row['exact_db'] >= 45, row
    assert row['exact_db'] >= row['fast_db'] - 0.5, row
  assert min(r['fast_db'] for r in rows) < 40  # DCT scaling shows at some K


def test_exact_decoding_equals_the_fast_path_without_scaling():
  data = encode(make_image(200, 300), quality=95)
  for size in (160, 224):  # crops smaller than 2x: no DCT scaling, only the IDCT differs
    exact = denormalize(preprocess.preprocess_test(data, size, decode='exact'))
    fast = denormalize(preprocess.preprocess_test(data, size, decode='fast'))
    assert np.abs(exact - fast).mean() < 1.0
  with pytest.raises(ValueError, match='decode'):
    preprocess.preprocess_test(data, 32, decode='pil')
  with pytest.raises(ValueError, match='resize'):
    preprocess.preprocess_test(data, 32, resize='longer')


@pytest.mark.parametrize('interpolation', ['bicubic', 'lanczos'])
def test_filters_match_pil_on_a_real_photo(interpolation):
  """PIL's antialiased bicubic and Lanczos (torchvision's Resize on PIL images, timm's
  evaluation) to >= 50 dB, downscaling (64) and near scale 1 (448); the bilinear output is
  not that close to PIL's filter, so the test tells the filters apart."""
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  photos = {k: v for k, v in decode.real_photos().items() if 'as shipped' in k}
  for row in decode.measure_filters(photos, (64, 448), (interpolation,)):
    assert row['exact_db'] >= 50, row
  data = next(iter(photos.values()))
  reference = decode.torchvision_test_transform(data, 64, interpolation=interpolation)
  assert decode.psnr(decode.ours(data, 64, 'exact'), reference) < 45


@pytest.mark.parametrize('interpolation', preprocess.INTERPOLATIONS)
def test_decoded_window_holds_every_filter_tap(interpolation):
  """The test transform decodes a window around the crop: wide enough for each filter's
  support at the downscale factor, it equals resizing the whole decoded image."""
  data = encode(make_image(300, 400), quality=95)
  box = preprocess.central_crop_box(300, 400, 40)  # a 7.5x downscale
  window = preprocess.decode_and_resize_jpeg(data, box, 40, context=True, dct_scaling=False,
                                             interpolation=interpolation).numpy()
  whole = preprocess.resize_box(tf.io.decode_jpeg(data, channels=3), box, 40,
                                interpolation).numpy()
  np.testing.assert_allclose(window, whole, atol=0.05)
  assert whole.min() >= 0 and whole.max() <= 255


def test_interpolation_reaches_test_and_finetune_transforms():
  data = encode(make_image(200, 260), quality=95)
  bilinear = preprocess.preprocess_test(data, 48, decode='exact').numpy()
  bicubic = preprocess.preprocess_test(data, 48, decode='exact', interpolation='bicubic')
  assert not np.allclose(bilinear, bicubic, atol=1e-2)
  finetune = preprocess.preprocess_finetune(data, tf.constant([0, 1]), 48, augment='none',
                                            decode='exact', interpolation='bicubic')
  np.testing.assert_array_equal(finetune, bicubic)
  official = preprocess.preprocess_test(data, 48, resize='official', interpolation='bicubic')
  np.testing.assert_allclose(official, bicubic, atol=1e-4)  # a landscape: the same pixels
  with pytest.raises(ValueError, match='interpolation'):
    preprocess.preprocess_test(data, 48, interpolation='hamming')


@pytest.mark.slow
def test_filters_match_pil_at_every_test_resolution():
  """docs/DECODE.md's filter table: >= 50 dB at every K_test in 64-448 on every photo."""
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  rows = decode.measure_filters(decode.real_photos())
  assert len(rows) == 3 * len(decode.FILTERS) * len(decode.RESOLUTIONS)
  assert min(r['exact_db'] for r in rows) >= 50, min(rows, key=lambda r: r['exact_db'])


def real_photo(name='as shipped'):
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  return next(v for k, v in decode.real_photos().items() if name in k)


def psnr_against(reference, data, size, **kwargs):
  """PSNR (dB) of preprocess_test (exact decode) against `reference`, [0, 255] HWC."""
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  ours = decode.denormalize(preprocess.preprocess_test(data, size, decode='exact',
                                                       **kwargs).numpy())
  return decode.psnr(ours, np.asarray(reference, np.float64))


@pytest.mark.parametrize('photo', ['as shipped', 'transposed'])
def test_resize_size_matches_torchvision_v2_weights(photo):
  """torchvision's ResNet-50 IMAGENET1K_V2 transform (resize 232, crop 224: the sizes read
  from the weights) on the uint8 tensor, as ImageClassification does."""
  from torchvision.models import ResNet50_Weights  # pylint: disable=g-import-not-at-top
  from torchvision.transforms import functional as F  # pylint: disable=g-import-not-at-top
  transform = ResNet50_Weights.IMAGENET1K_V2.transforms()
  (resize,), (crop,) = transform.resize_size, transform.crop_size
  assert (resize, crop) == (232, 224)
  data = real_photo(photo)
  tensor = F.pil_to_tensor(Image.open(io.BytesIO(data)).convert('RGB'))
  tensor = F.center_crop(F.resize(tensor, [resize], transform.interpolation, antialias=True),
                         [crop])
  reference = tensor.permute(1, 2, 0).numpy()
  assert psnr_against(reference, data, crop, resize_size=resize) >= 50
  assert psnr_against(reference, data, crop) < 40  # resize 256 (crop_pct 0.875) is not it


def timm_eval(data, size, **kwargs):
  """timm's eval transform (transforms_factory.transforms_imagenet_eval) as uint8 HWC."""
  from timm.data import transforms_factory  # pylint: disable=g-import-not-at-top
  transform = transforms_factory.transforms_imagenet_eval(size, normalize=False, **kwargs)
  return transform(Image.open(io.BytesIO(data)).convert('RGB')).permute(1, 2, 0).numpy()


@pytest.mark.parametrize('photo', ['as shipped', 'transposed'])
@pytest.mark.parametrize('mode,crop_pct', [('center', 0.95), ('squash', 0.875),
                                           ('border', 0.875), ('border', 1.0)])
def test_crop_modes_match_timm(photo, mode, crop_pct):
  data = real_photo(photo)
  reference = timm_eval(data, 224, crop_pct=crop_pct, crop_mode=mode, interpolation='bicubic')
  kwargs = dict(crop_pct=crop_pct, crop_mode=mode, interpolation='bicubic')
  assert psnr_against(reference, data, 224, **kwargs) >= 50
  others = {'center': 'squash', 'squash': 'center', 'border': 'center'}
  assert psnr_against(reference, data, 224, **{**kwargs, 'crop_mode': others[mode]}) < 40
  if mode == 'border':  # the shorter side comes out below 224: lines of the mean colour
    short = round(math.floor(224 / crop_pct) * 512 / 600)
    fill = np.all(reference == preprocess.BORDER_FILL, axis=2)
    lines = fill.all(axis=0) if photo == 'as shipped' else fill.all(axis=1)
    assert lines.sum() == 224 - short and lines[0] and lines[-1]


def flax_margin_reference(data, size, margin=32, interpolation=Image.BILINEAR):
  """flax's and big_vision's central crop (float32 arithmetic, as their TF code), cropped
  from the PIL image and resized with PIL."""
  image = Image.open(io.BytesIO(data)).convert('RGB')
  width, height = image.size
  side = int(np.float32(size / (size + margin)) * np.float32(min(height, width)))
  top, left = (height - side + 1) // 2, (width - side + 1) // 2
  crop = image.crop((left, top, left + side, top + side))
  return np.asarray(crop.resize((size, size), interpolation))


@pytest.mark.parametrize('photo', ['as shipped', 'transposed'])
@pytest.mark.parametrize('size', [96, 224])
def test_margin_mode_matches_flax_geometry(photo, size):
  data = real_photo(photo)
  reference = flax_margin_reference(data, size)
  assert psnr_against(reference, data, size, crop_mode='margin') >= 50
  bicubic = flax_margin_reference(data, size, interpolation=Image.BICUBIC)
  assert psnr_against(bicubic, data, size, crop_mode='margin', interpolation='bicubic') >= 50
  # The crop fraction moves with K: 224 / 256 (crop_pct's 0.875) at 224, 96 / 128 at 96.
  assert (psnr_against(reference, data, size) < 40) == (size == 96)


def test_crop_modes_in_finetuning_and_fast_decoding():
  data = real_photo()
  for mode in preprocess.TEST_CROP_MODES:
    test = preprocess.preprocess_test(data, 96, crop_mode=mode, decode='exact')
    none = preprocess.preprocess_finetune(data, tf.constant([1, 2]), 96, augment='none',
                                          crop_mode=mode, decode='exact')
    np.testing.assert_array_equal(none, test)
    fast = preprocess.preprocess_test(data, 96, crop_mode=mode, decode='fast')
    assert np.abs(denormalize(fast) - denormalize(test)).mean() < 3, mode
    v2 = preprocess.preprocess_finetune(data, tf.constant([1, 2]), 96, augment='v2_crop',
                                        crop_mode=mode)
    assert v2.shape == (96, 96, 3)
  with pytest.raises(ValueError, match='crop mode'):
    preprocess.preprocess_test(data, 96, crop_mode='random')
  with pytest.raises(ValueError, match='resize_size'):
    preprocess.preprocess_test(data, 96, resize_size=90)


def reference_v2(data, seed, size, pil_jitter=False):
  """FixRes's transforms_v2 'val_train' with PIL and torchvision, given our draws: Resize
  (height to int(256 / 224 * size), bilinear), RandomHorizontalFlip, ColorJitter(0.05) on
  the whole resized image (torchvision's float ops, or PIL's ImageEnhance as the official
  run on PIL images), then its CenterCrop shifted by the jitter."""
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.transforms import functional as TF  # pylint: disable=g-import-not-at-top
  from PIL import ImageEnhance  # pylint: disable=g-import-not-at-top
  shift_seed, flip_seed, color_seed = preprocess.split_seed(seed, 3)
  image = Image.open(io.BytesIO(data)).convert('RGB')
  width, height = image.size
  short = int((256 / 224) * size)
  new_w = int(short * width / height)
  image = image.resize((new_w, short), Image.BILINEAR)
  if preprocess.flip_image(tf.constant([[[0.0], [1.0]]]), flip_seed).numpy()[0, 0, 0] == 1:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  order, factors = (t.numpy() for t in preprocess.sample_jitter(color_seed, 0.05, 0.05, 0.05))
  if pil_jitter:
    for op in order:
      enhance = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op]
      image = enhance(image).enhance(float(factors[op]))
    array = np.asarray(image, np.float64)
  else:
    tensor = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    for op in order:
      tensor = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)[op](
          tensor, float(factors[op]))
    array = tensor.permute(1, 2, 0).numpy().astype(np.float64) * 255
  top, left = int(round((short - size) / 2)), int(round((new_w - size) / 2))
  if left > 0:
    left += int(preprocess.sample_v2_shift(shift_seed, height, width, size,
                                           resize='official'))
  out = np.zeros((size, size, 3))  # PIL's crop pads a narrow image with black
  kept = array[top:top + size, max(left, 0):left + size]
  out[:, max(-left, 0):max(-left, 0) + kept.shape[1]] = kept
  return out


@pytest.mark.parametrize('photo', ['as shipped', 'transposed', 'bright sides'])
def test_v2_finetuning_is_the_official_order(photo):
  """'v2' flips and jitters the whole resized image before the shifted crop, as
  transforms_v2; 'v2_crop' (the same augmentations after the crop) is not those pixels:
  a flip mirrors where the shifted crop lands, and the contrast uses the crop's mean grey,
  which the bright sides outside the crop pull away from the image's."""
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  if photo == 'bright sides':
    array = make_image(120, 300)
    array[:, :60] = array[:, -60:] = 250
    data = encode(array, quality=95)
  else:
    data = real_photo(photo)
  worst_crop_first = math.inf
  for i in range(4):
    seed = tf.constant([i, 5])
    reference = reference_v2(data, seed, 96)
    ours = {augment: decode.denormalize(preprocess.preprocess_finetune(
        data, seed, 96, augment=augment, resize='official', decode='exact').numpy())
            for augment in ('v2', 'v2_crop')}
    assert decode.psnr(ours['v2'], reference) >= 50, i
    # PIL rounds to uint8 after each op (and rounds the mean grey): within 4 grey levels.
    pil_error = np.abs(np.round(ours['v2']) - reference_v2(data, seed, 96, pil_jitter=True))
    assert pil_error.max() <= 4 and pil_error.mean() < 2, i
    worst_crop_first = min(worst_crop_first, decode.psnr(ours['v2_crop'], reference))
  if photo != 'as shipped':  # the portrait has no room to shift and its crop is most of it
    assert worst_crop_first < 45


def test_v2_order_needs_a_resized_image():
  data = encode(make_image(80, 100))
  with pytest.raises(ValueError, match="augment='v2_crop'"):
    preprocess.preprocess_finetune(data, tf.constant([0, 0]), 48, augment='v2',
                                   crop_mode='margin')
  for mode in ('center', 'squash', 'border'):
    for augment in ('v2', 'v2_crop'):
      image = preprocess.preprocess_finetune(data, tf.constant([0, 1]), 48, augment=augment,
                                             crop_mode=mode)
      assert image.shape == (48, 48, 3)
