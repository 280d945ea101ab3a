"""data/randaugment.py and parse_randaugment against timm's own RandAugment (PIL ops)."""

import importlib.util
import io
import pathlib
import random
import re

import matplotlib.cbook
import numpy as np
from PIL import Image
import pytest
from scipy import stats
import tensorflow as tf

from fixres_jax import augmentations
from fixres_jax.data import preprocess
from fixres_jax.data import randaugment


def load_timm_auto_augment():
  """timm.data.auto_augment, timm's own file, loaded alone: `import timm` imports torch and
  registers every model (seconds), and this module needs only PIL and numpy."""
  timm_spec = importlib.util.find_spec('timm')
  if timm_spec is None:  # Not a skip: CI installs timm, and parity must be checked there.
    raise ImportError('tests/test_randaugment.py needs timm: '
                      'pip install -r requirements-torch.txt')
  path = pathlib.Path(timm_spec.origin).parent / 'data' / 'auto_augment.py'
  spec = importlib.util.spec_from_file_location('timm_auto_augment', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


timm_aa = load_timm_auto_augment()

BILINEAR = {'resample': Image.BILINEAR, 'fillcolor': randaugment.FILL}
SPECS = ('rand-m6-mstd0.5-inc1', 'rand-m9-mstd0.5', 'rand-m7-n3-mstd1.0-inc1',
         'rand-m9-mstd101', 'rand-m15-mmax20-mstd2-p0.7')


def photo_bytes() -> bytes:
  return open(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False), 'rb').read()


@pytest.fixture(scope='module')
def photo():
  """A 96 x 80 crop of a real photograph (portrait: rotations by 90 degrees are affine)."""
  image = Image.open(io.BytesIO(photo_bytes())).convert('RGB')
  return np.asarray(image)[200:296, 150:230]


def ours(op, image, *args):
  return op(tf.constant(image, tf.float32), *args).numpy()


def theirs(op, image, *args, **kwargs):
  return np.asarray(op(Image.fromarray(image), *args, **kwargs), np.float32)


LUT_CASES = [('auto_contrast', ()), ('equalize', ()), ('invert', ()),
             ('posterize', (1,)), ('posterize', (3,)), ('posterize', (7,)), ('posterize', (8,)),
             ('solarize', (0,)), ('solarize', (77,)), ('solarize', (179,)), ('solarize', (256,)),
             ('solarize_add', (0,)), ('solarize_add', (66,)), ('solarize_add', (128,))]


@pytest.mark.parametrize('name,args', LUT_CASES)
def test_lut_ops_equal_timms(photo, name, args):
  # Also on a low-contrast copy, where auto_contrast and equalize have work to do.
  for image in (photo, (photo * 0.6 + 50).astype(np.uint8)):
    expected = theirs(getattr(timm_aa, name), image, *args)
    np.testing.assert_array_equal(ours(getattr(randaugment, name), image, *args), expected)


def test_posterize_to_zero_bits_is_black(photo):
  # Pillow 13 rejects 0 bits, so timm raises; older Pillow (and this module) give 0.
  with pytest.raises(ValueError):
    theirs(timm_aa.posterize, photo, 0)
  for bits in (0, -2):
    assert not ours(randaugment.posterize, photo, bits).any()


def assert_close_to_pil(actual, expected):
  """Max |difference| <= 1 grey level and >= 99% of the values equal (all equal, measured
  on this photo with Pillow 13: the float32 blends and float64 bilinear follow PIL's C)."""
  difference = np.abs(actual - expected)
  equal = (difference == 0).mean()
  assert difference.max() <= 1 and equal >= 0.99, (difference.max(), equal)
  np.testing.assert_array_equal(actual, expected)  # Tighter than needed, as measured.


# 0.1 and 1.9 bound the plain levels, 0 and 2.35 the increasing ones (with mmax > 10).
@pytest.mark.parametrize('name', ['color', 'contrast', 'brightness', 'sharpness'])
@pytest.mark.parametrize('factor', [0.0, 0.1, 0.55, 1.0, 1.36, 1.9, 2.35])
def test_enhance_ops_match_timms(photo, name, factor):
  assert_close_to_pil(ours(getattr(randaugment, name), photo, factor),
                      theirs(getattr(timm_aa, name), photo, factor))


AFFINE_CASES = ([('rotate', d) for d in (-30.0, -13.5, 7.2, 27.0, 45.0, 90.0, 180.0)]
                + [(op, f) for op in ('shear_x', 'shear_y') for f in (-0.3, -0.117, 0.05, 0.27)]
                + [(op, p) for op in ('translate_x_rel', 'translate_y_rel')
                   for p in (-0.45, -0.123, 0.01, 0.2)])


@pytest.mark.parametrize('name,arg', AFFINE_CASES)
def test_affine_ops_match_timms_bilinear(photo, name, arg):
  actual = ours(getattr(randaugment, name), photo, arg)
  assert_close_to_pil(actual, theirs(getattr(timm_aa, name), photo, arg, **BILINEAR))
  assert (actual == randaugment.FILL).all(-1).any() or arg == 180.0  # The fill shows.


# Each op, a rotation PIL makes exactly (90), and shifts by whole pixels (-0.45 of 80) and not.
BICUBIC_CASES = [('rotate', -13.5), ('rotate', 45.0), ('rotate', 90.0), ('shear_x', -0.117),
                 ('shear_y', 0.27), ('translate_x_rel', -0.45), ('translate_x_rel', -0.123),
                 ('translate_y_rel', -0.45)]


@pytest.mark.parametrize('name,arg', BICUBIC_CASES)
def test_affine_ops_match_timms_bicubic(photo, name, arg):
  """PIL's BICUBIC transform (cubic convolution, a = -1)."""
  op = getattr(randaugment, name)
  actual = ours(op, photo, arg, randaugment.FILL, True)
  assert_close_to_pil(actual, theirs(getattr(timm_aa, name), photo, arg,
                                     resample=Image.BICUBIC, fillcolor=randaugment.FILL))
  # The filters differ wherever a source point falls between pixels.
  side = photo.shape[1] if name == 'translate_x_rel' else photo.shape[0]
  whole_pixels = name.startswith('translate') and float(arg * side).is_integer()
  bilinear = ours(op, photo, arg)
  assert np.array_equal(actual, bilinear) == (whole_pixels or arg in (90.0, 180.0))


def test_random_interpolation_draws_either_filter_per_op(photo):
  """timm's 'random': each op picks BILINEAR or BICUBIC with probability 1/2 (random.choice
  of _RANDOM_INTERPOLATION); the other draws are those of the fixed filters."""
  spec = augmentations.parse_randaugment('rand-m9-n2-mstd0')
  ds = tf.data.Dataset.range(2000).map(lambda i: tf.stack([i, tf.constant(11, tf.int64)]))
  draws = next(iter(ds.map(lambda s: randaugment.sample_bicubic(s, 2, 'random')).batch(2000)))
  draws = draws.numpy()
  assert stats.binomtest(draws.sum(), draws.size, 0.5).pvalue > 1e-3
  assert (draws[:, 0] == draws[:, 1]).mean() == pytest.approx(0.5, abs=0.05)
  assert randaugment.sample_bicubic(tf.constant([0, 11]), 2, 'bicubic') is True
  # Images whose one applied layer is an affine op, bilinear in some, bicubic in others:
  # each is that op with the drawn filter.
  names = randaugment.op_names(spec)
  index, applied, _, _ = sample_many(spec, 200)
  draws = draws[:200]
  affine = np.isin(np.array(names)[index], AFFINE_NAMES) & applied
  single = affine.sum(1) == 1
  picks = [np.flatnonzero(single & ((draws & affine).any(1) == bicubic))[:3]
           for bicubic in (False, True)]
  seeds = tf.constant([[i, 11] for i in np.concatenate(picks)], tf.int64)
  image = tf.constant(photo[:40, :40], tf.float32)
  for seed in seeds:
    actual = randaugment.rand_augment(image, seed, spec, interpolation='random')
    layers = randaugment.sample_layers(seed, spec)
    bicubic = randaugment.sample_bicubic(seed, 2, 'random').numpy()
    expected = image
    for i, (op, on, magnitude, negate) in enumerate(zip(*layers)):
      if on:
        expected = randaugment.apply_op(expected, names[op], magnitude, negate,
                                        bicubic=bool(bicubic[i]))
    np.testing.assert_array_equal(actual, expected)
  with pytest.raises(ValueError, match='randaugment_interpolation'):
    randaugment.rand_augment(image, seeds[0], spec, interpolation='nearest')


AFFINE_NAMES = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


@pytest.mark.parametrize('name,arg', [('rotate', 45.0), ('translate_x_rel', -0.123),
                                      ('sharpness', 1.9), ('auto_contrast', None)])
def test_ops_in_tf_function_graphs_equal_eager(photo, name, arg):
  """Grappler rewrites tf.function graphs (constant push-down, reordered broadcast sums):
  the ops are written so that the rounding stays PIL's."""
  op = getattr(randaugment, name)
  image = tf.constant((photo * 0.7 + 30).astype(np.uint8), tf.float32)
  args = () if arg is None else (tf.constant(arg, tf.float64),)
  signature = [tf.TensorSpec(photo.shape, tf.float32)] + [tf.TensorSpec([], tf.float64)] * len(args)
  in_graph = tf.function(op, input_signature=signature)(image, *args)
  np.testing.assert_array_equal(in_graph, op(image, *args))
  if name in ('rotate', 'translate_x_rel'):  # and the bicubic filter's float64 sums
    bicubic = lambda image, a: op(image, a, bicubic=True)
    in_graph = tf.function(bicubic, input_signature=signature)(image, *args)
    np.testing.assert_array_equal(in_graph, bicubic(image, *args))


def test_fill_is_timms_imagenet_mean():
  assert randaugment.FILL == (124, 116, 104)


def timm_level(name, magnitude, seed):
  """timm's arguments for `name` at `magnitude`, its random negation drawn after seed(seed)."""
  level_fn = timm_aa.LEVEL_TO_ARG[name]
  hparams = dict(timm_aa._HPARAMS_DEFAULT)  # pylint: disable=protected-access
  random.seed(seed)
  return level_fn(magnitude, hparams) if level_fn else ()


@pytest.mark.parametrize('name', sorted(set(randaugment.OPS + randaugment.INCREASING_OPS)))
def test_level_functions_equal_timms(name):
  negations = set()
  for magnitude in [*range(11), 2.5, 7.5, 0.37, 9.99, 13, 15.5, 20]:
    for seed in range(3):
      expected = timm_level(name, magnitude, seed)
      random.seed(seed)
      negate = random.random() > 0.5  # timm's _randomly_negate
      negations.add(negate)
      actual = randaugment.LEVELS[name](tf.constant(magnitude, tf.float64), negate)
      assert len(actual) == len(expected)
      for a, e in zip(actual, expected):
        assert a.dtype.is_integer == isinstance(e, int), (name, magnitude)
        assert a.numpy() == e, (name, magnitude, negate, a.numpy(), e)
  assert negations == {True, False}


def test_op_lists_are_timms():
  # pylint: disable=protected-access
  assert list(randaugment.OPS) == timm_aa._RAND_TRANSFORMS
  assert list(randaugment.INCREASING_OPS) == timm_aa._RAND_INCREASING_TRANSFORMS
  for name in randaugment.OP_TABLE:
    assert randaugment.OP_TABLE[name][0].__name__ == timm_aa.NAME_TO_OP[name].__name__


@pytest.mark.parametrize('spec', SPECS + (
    'rand', 'rand-n1-m3-p0.25', 'rand-inc0-m10', 'rand-mstd1e3', 'rand-m4-mmax7-n0'))
def test_parse_randaugment_reads_timms_strings_as_timm(spec):
  parsed = augmentations.parse_randaugment(spec)
  reference = timm_aa.rand_augment_transform(spec, {})
  assert parsed.num_layers == reference.num_layers
  assert tuple(op.name for op in reference.ops) == randaugment.op_names(parsed)
  for op in reference.ops:
    assert (op.magnitude, op.prob) == (parsed.magnitude, parsed.prob)
    assert op.magnitude_std == parsed.magnitude_std
    assert (op.magnitude_max or 10) == parsed.magnitude_max  # timm's None is 10.


def assert_names(spec, section):
  """parse_randaugment(spec) raises, naming `section` after the config field, with an example."""
  pattern = rf"config\.data\.randaugment\): .*{re.escape(section)}.*'rand-m6-mstd0\.5-inc1'"
  with pytest.raises(ValueError, match=pattern):
    augmentations.parse_randaugment(spec)


def test_parse_randaugment_empty_is_off():
  assert augmentations.parse_randaugment('') is None


@pytest.mark.parametrize('spec,section', [
    ('rnd-m9', 'rnd'), ('rand-m9-x3', 'x3'), ('rand-m9.5', 'm9.5'), ('rand-n2.5', 'n2.5'),
    ('rand-mmax12.5', 'mmax12.5'), ('rand-m9-inc1x', 'inc1x')])
def test_parse_randaugment_rejects_what_timm_rejects(spec, section):
  with pytest.raises((AssertionError, ValueError)):
    timm_aa.rand_augment_transform(spec, {})
  assert_names(spec, section)


@pytest.mark.parametrize('spec,section', [
    ('rand-m9-foo', 'foo'), ('rand-mstdinf', 'mstdinf'), ('rand-m9-', "''"), ('rand-m', "'m'"),
    ('rand-m9-m7', 'm7'), ('rand-mstd0.5-mstd1', 'mstd1'), ('rand-tweights', 'tweights'),
    ('rand-p1.5', 'p=1.5'), ('rand-mmax0', 'mmax=0')])
def test_parse_randaugment_rejects_what_timm_silently_ignores(spec, section):
  timm_aa.rand_augment_transform(spec, {})  # Accepted: ignored, overridden or clamped.
  assert_names(spec, section)


def augment_eagerly(image, seeds, spec):
  image = tf.constant(image, tf.float32)
  return np.stack([randaugment.rand_augment(image, seed, spec).numpy() for seed in seeds])


@pytest.mark.parametrize('spec', SPECS)
def test_rand_augment_is_a_function_of_the_seed(photo, spec):
  spec = augmentations.parse_randaugment(spec)
  seeds = np.array([[i, 5] for i in range(6)], np.int64)
  augmented = augment_eagerly(photo, seeds, spec)
  np.testing.assert_array_equal(augment_eagerly(photo, seeds[:2], spec), augmented[:2])
  assert augmented.shape == (6, *photo.shape)
  assert (augmented == np.round(augmented)).all()
  assert augmented.min() >= 0 and augmented.max() <= 255
  distinct = {a.tobytes() for a in augmented}
  assert len(distinct) >= 4, len(distinct)  # Different seeds, different augmentations.


def test_rand_augment_in_tf_data_equals_eager(photo):
  """Graph mode, with the increasing op list and several layers (see also the next test)."""
  spec = augmentations.parse_randaugment('rand-m7-n3-mstd1.0-inc1')
  seeds = np.array([[i, 5] for i in range(6)], np.int64)
  image = tf.constant(photo, tf.float32)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda seed: randaugment.rand_augment(image, seed, spec))
  np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())),
                                augment_eagerly(photo, seeds, spec))


@pytest.mark.slow  # a graph of every op with both filters: seconds to build
def test_random_interpolation_in_tf_data_equals_eager(photo):
  spec = augmentations.parse_randaugment('rand-m9-n2-mstd0.5')
  seeds = np.array([[i, 5] for i in range(6)], np.int64)
  image = tf.constant(photo[:40, :40], tf.float32)
  augment = lambda seed: randaugment.rand_augment(image, seed, spec, interpolation='random')
  in_graph = tf.data.Dataset.from_tensor_slices(seeds).map(augment)
  np.testing.assert_array_equal(np.stack(list(in_graph.as_numpy_iterator())),
                                np.stack([augment(seed) for seed in seeds]))


def test_level_functions_in_graph_mode_equal_eager():
  names = sorted(randaugment.LEVELS)
  magnitudes = np.array([0.0, 3.3, 7.5, 10.0, 15.0])

  def levels(magnitude, negate):
    return [randaugment.LEVELS[name](magnitude, negate) for name in names]

  for negate in (False, True):
    in_graph = tf.function(levels)(tf.constant(magnitudes), tf.constant(negate))
    for name, graph_args in zip(names, in_graph):
      for i, magnitude in enumerate(magnitudes):
        eager_args = randaugment.LEVELS[name](tf.constant(magnitude, tf.float64), negate)
        assert [a.numpy()[i] for a in graph_args] == [a.numpy() for a in eager_args], name


def sample_many(spec, num_seeds):
  """sample_layers for seeds (i, 11), i < num_seeds, inside tf.data: four [N, n] arrays."""
  ds = tf.data.Dataset.range(num_seeds).map(
      lambda i: randaugment.sample_layers(tf.stack([i, tf.constant(11, tf.int64)]), spec))
  return [np.asarray(x) for x in next(iter(ds.batch(num_seeds)))]


def test_sample_layers_has_timms_distributions():
  spec = augmentations.parse_randaugment('rand-m6-n2-mstd0.5-p0.3')
  index, applied, magnitude, negate = sample_many(spec, 3000)
  assert index.shape == (3000, 2)
  # Ops uniform, with replacement (np.random.choice without weights).
  counts = np.bincount(index.ravel(), minlength=15)
  assert stats.chisquare(counts).pvalue > 1e-3, counts
  assert (index[:, 0] == index[:, 1]).mean() == pytest.approx(1 / 15, abs=0.015)
  # Applied with probability p, negated with probability 1/2, magnitude ~ N(6, 0.5).
  assert applied.mean() == pytest.approx(0.3, abs=0.02)
  assert negate.mean() == pytest.approx(0.5, abs=0.02)
  assert magnitude.mean() == pytest.approx(6, abs=0.03)
  assert magnitude.std() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize('spec,low,high,mean', [
    ('rand-m9-mstd101', 0, 9, 4.5),  # uniform in [0, m]
    ('rand-m9-mstd3', 0, 10, None),  # clipped to [0, 10]
    ('rand-m15-mmax12-mstd1', 10, 12, 12),  # m above mmax: mostly clipped to it
    ('rand-m15-mmax20-mstd1', 10, 20, 15)])  # m above 10: allowed by mmax
def test_sample_layers_magnitude_noise_and_clipping(spec, low, high, mean):
  magnitude = sample_many(augmentations.parse_randaugment(spec), 1000)[2]
  assert magnitude.min() >= low and magnitude.max() <= high
  if mean is not None:
    assert magnitude.mean() == pytest.approx(mean, abs=0.25)
  if 'mstd3' in spec:  # Both clips are hit.
    assert (magnitude == 0).any() and (magnitude == 10).any()


def test_unapplied_layers_are_the_identity(photo):
  """About 1 - p of the images come back unchanged, exactly those whose layer was not
  applied: on this image every op at magnitude 7 changes something."""
  image = (photo[:48, :40] * 0.8 + 20).astype(np.uint8)  # Not full-range: autocontrast works.
  spec = augmentations.parse_randaugment('rand-m7-n1')
  for name in randaugment.op_names(spec):
    for negate in (False, True):
      augmented = randaugment.apply_op(tf.constant(image, tf.float32), name, 7.0, negate)
      assert not np.array_equal(augmented.numpy(), image), name
  seeds = np.array([[i, 3] for i in range(80)], np.int64)
  unchanged = (augment_eagerly(image, seeds, spec) == image).all(axis=(1, 2, 3))
  applied = np.array([randaugment.sample_layers(s, spec)[1].numpy()[0] for s in seeds])
  np.testing.assert_array_equal(unchanged, ~applied)
  assert stats.binomtest(unchanged.sum(), len(seeds), 0.5).pvalue > 1e-3


def test_preprocess_train_applies_rand_augment_after_the_same_crop_and_flip(monkeypatch):
  monkeypatch.setattr(preprocess, 'normalize_image', lambda image, dtype: image)  # [0, 255]
  data = photo_bytes()
  spec_string = 'rand-m9-mstd0.5-inc1'
  spec = augmentations.parse_randaugment(spec_string)
  augmented_any = False
  for seed in tf.constant([[i, 9] for i in range(4)], tf.int64):
    plain = preprocess.preprocess_train(data, seed, 48).numpy()
    never = preprocess.preprocess_train(data, seed, 48, randaugment='rand-m9-p0').numpy()
    augmented = preprocess.preprocess_train(data, seed, 48, randaugment=spec_string)
    # Rounded as timm's uint8 crop; otherwise the same crop and flip.
    np.testing.assert_array_equal(never, np.clip(np.round(plain), 0, 255))
    expected = randaugment.rand_augment(
        tf.constant(never), tf.random.experimental.stateless_fold_in(seed, 3), spec)
    np.testing.assert_array_equal(augmented, expected)
    augmented_any |= not np.array_equal(augmented, never)
  assert augmented_any


def test_preprocess_train_passes_the_randaugment_interpolation(monkeypatch):
  monkeypatch.setattr(preprocess, 'normalize_image', lambda image, dtype: image)  # [0, 255]
  spec_string = 'rand-m9-n3-mstd0.5'
  seed = tf.constant([2, 9], tf.int64)
  never = preprocess.preprocess_train(photo_bytes(), seed, 48, randaugment='rand-m9-p0')
  augmented = preprocess.preprocess_train(photo_bytes(), seed, 48, randaugment=spec_string,
                                          randaugment_interpolation='bicubic')
  expected = randaugment.rand_augment(
      never, tf.random.experimental.stateless_fold_in(seed, 3),
      augmentations.parse_randaugment(spec_string), interpolation='bicubic')
  np.testing.assert_array_equal(augmented, expected)


def test_preprocess_train_refuses_color_jitter_with_randaugment():
  with pytest.raises(ValueError, match='config.data.color_jitter.*config.data.randaugment'):
    preprocess.preprocess_train(photo_bytes(), tf.constant([0, 0]), 32, color_jitter=0.4,
                                randaugment='rand-m9-mstd0.5')
  with pytest.raises(ValueError, match='config.data.randaugment'):
    preprocess.preprocess_train(photo_bytes(), tf.constant([0, 0]), 32, randaugment='rand-x1')
