"""Tests of the apparent-object-size maths and its command line."""

import subprocess
import sys

import numpy as np
import pytest

from fixres_jax import resolution


def test_plain_model_matches_closed_form():
  samples = 400_000
  closed_form = 2 / 3 * (1 - 0.08**1.5) / (1 - 0.08)  # E[sqrt(U)], U uniform in [0.08, 1].
  assert resolution.expected_sigma_plain() == pytest.approx(closed_form)
  monte_carlo = resolution.expected_sigma('plain', samples=samples)
  standard_error = 0.2 / np.sqrt(samples)  # sd(sqrt(U)) < 0.2.
  assert abs(monte_carlo - closed_form) < 4 * standard_error
  result = resolution.recommend_test_res(224, sampler='plain', samples=samples)
  assert result['test_over_train'] == pytest.approx(0.875 / closed_form, abs=2e-3)  # 1.236


def test_rejection_and_image_shape_shift_sigma():
  # torchvision's own RandomResizedCrop measured 0.636 on 500 x 375 images (DESIGN.md).
  sigma = resolution.expected_sigma('torchvision', samples=100_000)
  assert sigma == pytest.approx(0.636, abs=0.004)
  assert sigma < resolution.expected_sigma_plain()
  # Elongated images make most draws miss and fall back to a small central crop.
  assert resolution.expected_sigma('torchvision', [(100, 1000)], samples=20_000) < 0.4


def test_inception_sampler_gives_smaller_crops():
  inception = resolution.expected_sigma('inception', samples=2_000)
  torchvision = resolution.expected_sigma('torchvision', samples=2_000)
  assert inception < torchvision - 0.03


def test_numpy_twin_fallback_is_the_clamped_central_crop():
  boxes = resolution.sample_crops_torchvision(np.random.default_rng(0), 60, 1000, 20)
  np.testing.assert_array_equal(boxes, [[0, (1000 - 80) // 2, 60, 80]] * 20)
  heights = np.array([375, 60])
  widths = np.array([500, 1000])
  boxes = resolution.sample_crops_torchvision(np.random.default_rng(0), heights, widths, 2)
  assert (boxes[:, :2] + boxes[:, 2:] <= np.stack([heights, widths], 1)).all()


@pytest.mark.parametrize('train_res,multiple', [(128, 8), (224, 8), (160, 32), (100, 1)])
def test_recommend_test_res_rounds_to_the_multiple(train_res, multiple):
  result = resolution.recommend_test_res(train_res, samples=20_000, multiple=multiple)
  assert result['test_res'] % multiple == 0
  assert abs(result['test_res'] - result['test_res_exact']) <= multiple / 2
  exact = 0.875 * train_res / result['expected_sigma']
  assert result['test_res_exact'] == pytest.approx(exact)
  assert result['ratio_at_test_res']['mean'] == pytest.approx(
      result['test_res'] / result['test_res_exact'])
  quantiles = list(result['ratio_at_train_res'].values())[1:]
  assert quantiles == sorted(quantiles)
  # Measured on the shorter side, a 4:3 image needs a lower K_test by sqrt(4/3).
  assert result['test_res_shorter_side'] == pytest.approx(exact / np.sqrt(4 / 3), rel=1e-3)


def test_aspect_option_is_an_image_shape():
  assert resolution.shape_from_aspect(4 / 3) == (375, 500)
  assert resolution.shape_from_aspect(0.5) == (750, 375)
  by_aspect = resolution.recommend_test_res(128, aspect=4 / 3, samples=10_000)
  by_shape = resolution.recommend_test_res(128, image_shapes=[(375, 500)], samples=10_000)
  assert by_aspect == by_shape


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='sampler'):
    resolution.expected_sigma('random')
  with pytest.raises(ValueError, match='multiple'):
    resolution.recommend_test_res(128, multiple=0)
  with pytest.raises(ValueError, match='WIDTHxHEIGHT'):
    resolution.parse_image_sizes(['500'])
  np.testing.assert_array_equal(resolution.parse_image_sizes(['500x375', '90X100']),
                                [[375, 500], [100, 90]])


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'fixres_jax.resolution', *args],
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_prints_the_recommendation():
  result = run_cli('--train_res=128', '--samples=20000', '--image_size=500x375')
  assert result.returncode == 0, result.stderr
  expected = resolution.recommend_test_res(128, image_shapes=[(375, 500)], samples=20_000)
  assert f"recommended K_test (multiple of the rounding step): {expected['test_res']}" in (
      result.stdout)
  assert f"E[sigma] = E[sqrt(area)] = {expected['expected_sigma']:.4f}" in result.stdout
  result = run_cli('--train_res=128', '--aspect=4/3', '--image_size=500x375')
  assert result.returncode != 0 and 'at most one' in result.stderr


def test_image_shapes_from_a_tfds_dataset(synthetic_data_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  shapes = resolution.read_image_shapes('fixres_synthetic/tiny', 'validation', max_images=5,
                                        data_dir=synthetic_data_dir)
  ds = tfds.load('fixres_synthetic/tiny', split='validation', data_dir=synthetic_data_dir)
  decoded = [tf.shape(ex['image'])[:2].numpy() for ex in ds.take(5)]
  np.testing.assert_array_equal(shapes, decoded)
