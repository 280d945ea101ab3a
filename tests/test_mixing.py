"""Mixup / CutMix against a NumPy re-implementation of timm's Mixup, the BCE loss, LAMB."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fixres_jax import config as config_lib
from fixres_jax import losses
from fixres_jax import mixing
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import stage
from fixres_jax import train

BOTH = mixing.MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)


def timm_mix(images, lam, use_cutmix, box):
  """timm's Mixup._mix_batch on NHWC NumPy images, given its random draws."""
  x = images.copy()
  if lam == 1.0:
    return x, 1.0
  if use_cutmix:
    top, bottom, left, right = box
    x[:, top:bottom, left:right] = images[::-1][:, top:bottom, left:right]
    height, width = images.shape[1:3]
    return x, 1.0 - (bottom - top) * (right - left) / float(height * width)
  return x * lam + images[::-1] * (1.0 - lam), lam


def timm_target(labels, num_classes, lam, smoothing):
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  y = np.full((len(labels), num_classes), off)
  y[np.arange(len(labels)), labels] = on
  return y * lam + y[::-1] * (1.0 - lam)


@pytest.mark.parametrize('seed', range(6))
def test_mix_matches_timm_given_the_same_draws(seed):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(6, 20, 24, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=6)
  key = jax.random.key(seed)
  params_key, box_key = jax.random.split(key)
  lam, use_cutmix = (np.asarray(v) for v in mixing.sample_params(params_key, BOTH))
  box = [int(v) for v in mixing.cutmix_box(box_key, 20, 24, jnp.float32(lam))]
  mixed, mixed_lam = mixing.mix_images(key, jnp.asarray(images), BOTH)
  expected, expected_lam = timm_mix(images, float(lam), bool(use_cutmix), box)
  np.testing.assert_allclose(np.asarray(mixed), expected, rtol=1e-6, atol=1e-6)
  assert float(mixed_lam) == pytest.approx(expected_lam, abs=1e-6)
  np.testing.assert_allclose(mixing.mix_targets(labels, 5, mixed_lam, 0.1),
                             timm_target(labels, 5, expected_lam, 0.1), rtol=1e-6, atol=1e-7)


def test_draws_follow_the_probabilities():
  keys = jax.random.split(jax.random.key(0), 4000)
  cfg = mixing.MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3)
  lam, cut = jax.vmap(lambda k: mixing.sample_params(k, cfg))(keys)
  lam, cut = np.asarray(lam), np.asarray(cut)
  mixed = lam < 1.0
  assert mixed.mean() == pytest.approx(0.6, abs=0.03)
  assert cut[mixed].mean() == pytest.approx(0.3, abs=0.03)
  assert not cut[~mixed].any()
  # Beta(1, 1) for CutMix is uniform: mean 1/2, variance 1/12.
  assert lam[cut].mean() == pytest.approx(0.5, abs=0.03)
  assert lam[cut].var() == pytest.approx(1 / 12, abs=0.01)
  only_cutmix = mixing.MixConfig(cutmix_alpha=1.0)
  assert bool(mixing.sample_params(keys[0], only_cutmix)[1])


def test_cutmix_lambda_is_the_area_kept_after_clipping():
  images = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 16, 16, 3))
  cfg = mixing.MixConfig(cutmix_alpha=1.0)
  for seed in range(20):
    mixed, lam = mixing.mix_images(jax.random.key(seed), images, cfg)
    kept = np.mean(np.asarray(mixed)[0, :, :, 0] == 0.0)  # image 0 is zeros, image 7 sevens
    assert float(lam) == pytest.approx(kept, abs=1e-6)


def test_bce_is_timms_mean_over_logits_with_threshold():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 6)).astype(np.float32)
  targets = timm_target(np.array([0, 1, 2, 3]), 6, 0.7, 0.1).astype(np.float32)
  sigmoid = 1 / (1 + np.exp(-logits))
  bce = lambda t: -(t * np.log(sigmoid) + (1 - t) * np.log(1 - sigmoid)).mean()
  assert float(losses.binary_cross_entropy(logits, targets).mean()) == pytest.approx(
      bce(targets), rel=1e-5)
  assert float(losses.binary_cross_entropy(logits, targets, 0.2).mean()) == pytest.approx(
      bce((targets > 0.2).astype(np.float32)), rel=1e-5)


def test_lamb_adapts_only_the_decayed_parameters():
  cfg = config_lib.get_base_config().train
  cfg.optimizer, cfg.weight_decay, cfg.no_decay = 'lamb', 0.02, (r'bias$',)
  params = {'dense': {'kernel': jnp.full((3, 4), 2.0), 'bias': jnp.full(4, 0.5)}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.1), params)
  tx = train.create_optimizer(cfg, optax.constant_schedule(0.1), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step: m / sqrt(v) = 1 (eps aside). The bias is not decayed, so not rescaled
  # (a trust ratio would make it 0.5 x): -lr.
  np.testing.assert_allclose(updates['dense']['bias'], -0.1, rtol=1e-4)
  # The kernel: u = 1 + wd w, rescaled to the norm of w (2 |u| / |u|), times -lr.
  np.testing.assert_allclose(updates['dense']['kernel'], -0.1 * 2.0, rtol=1e-4)


@pytest.mark.slow  # two compilations of a train step
def test_mixed_bce_train_step_is_the_same_on_one_and_eight_devices():
  model = models.create_model('resnet', 5, stage_sizes=(1, 1), num_filters=8)
  variables = train.init_variables(model, 32, seed=0)
  cfg = config_lib.get_base_config().train
  state = stage.create_train_state(
      model, variables, train.create_optimizer(cfg, optax.constant_schedule(0.1),
                                               variables['params']))
  objective = train.Objective(loss='bce', label_smoothing=0.1, bce_threshold=0.2, mix=BOTH,
                              seed=3)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 5, size=16).astype(np.int32)}
  step_fn = jax.jit(functools.partial(train.train_step, objective=objective))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh((len(devices),), ('data',), devices=devices)
    new_state, metrics = step_fn(parallel.replicate(state, mesh),
                                 parallel.make_global_batch(batch, mesh))
    results.append((float(metrics['loss']), jax.device_get(new_state.params)))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
