"""Parametric adaptation: GEV fits from histograms, the quantile map, the adapted head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fixres_jax import evaluate
from fixres_jax import models
from fixres_jax import parametric

EDGES = evaluate.HISTOGRAM_EDGES


@pytest.mark.parametrize('loc,scale', [(1.0, 0.2), (0.5, 0.1), (3.0, 1.5)])
def test_fit_gev_recovers_location_and_scale(loc, scale):
  samples = parametric.GevFit(loc, scale).rvs(50_000, seed=1)
  fit = parametric.fit_gev(EDGES, parametric.histogram(samples, EDGES))
  # Standard errors are ~0.5% at this sample size; the 7.5%-wide bins add little.
  assert fit.loc == pytest.approx(loc, rel=0.02)
  assert fit.scale == pytest.approx(scale, rel=0.02)
  assert fit.shape == parametric.SHAPE


def test_histogram_matches_numpy_searchsorted_bins():
  values = np.array([0.0, 0.0, 1e-6, EDGES[0], EDGES[10], 0.5, 2e3])
  counts = parametric.histogram(values, EDGES)
  assert counts.sum() == 5  # zeros are not counted
  assert counts[0] == 2 and counts[10] == 1 and counts[-1] == 1


def test_histogram_quantiles_within_a_bin_of_numpy():
  values = np.concatenate([np.zeros(3_000), parametric.GevFit(1.0, 0.2).rvs(20_000, seed=2)])
  counts = parametric.histogram(values, EDGES)
  zeros = np.sum(values == 0)
  quantiles = (0.05, 0.2, 0.5, 0.9, 0.99)
  got = parametric.histogram_quantiles(EDGES, counts, quantiles, zeros=zeros)
  want = np.quantile(values, quantiles)
  assert got[0] == 0.0 and want[0] == 0.0  # 13% zeros
  bin_ratio = EDGES[1] / EDGES[0]
  np.testing.assert_array_less(got[1:], want[1:] * bin_ratio)
  np.testing.assert_array_less(want[1:], got[1:] * bin_ratio)


def test_quantile_map_sends_one_law_onto_the_other():
  source, target = parametric.GevFit(0.4, 0.15), parametric.GevFit(1.0, 0.3)
  a, b = parametric.quantile_map(source, target)
  x = source.rvs(5_000, seed=3)
  # The affine map is the quantile map F_target^{-1}(F_source(x)) ...
  inside = (x > source.ppf(1e-6)) & (x < source.ppf(1 - 1e-6))
  np.testing.assert_allclose(a * x[inside] + b, target.ppf(source.cdf(x[inside])), rtol=1e-4)
  # ... so mapped samples follow the target law (and did not before).
  assert stats.kstest(a * x + b, target.cdf).pvalue > 0.01
  assert stats.kstest(x, target.cdf).pvalue < 1e-6


def test_map_between_fitted_laws_matches_the_distributions():
  source, target = parametric.GevFit(0.4, 0.15), parametric.GevFit(1.0, 0.3)
  fits = [parametric.fit_gev(EDGES, parametric.histogram(law.rvs(50_000, seed=s), EDGES))
          for s, law in ((4, source), (5, target))]
  a, b = parametric.quantile_map(*fits)
  mapped = a * source.rvs(5_000, seed=6) + b
  assert stats.kstest(mapped, target.cdf).statistic < 0.03


def test_fit_gev_rejects_an_empty_histogram():
  with pytest.raises(ValueError, match='parametric_split'):
    parametric.fit_gev(EDGES, np.zeros(len(EDGES) + 1))


def test_adapt_features_keeps_zeros_and_identity_is_exact():
  features = jnp.array([[0.0, 0.1, 1.0, 7.5]])
  np.testing.assert_array_equal(parametric.adapt_features(features, *parametric.IDENTITY),
                                features)
  np.testing.assert_allclose(parametric.adapt_features(features, 2.0, -0.5),
                             [[0.0, 0.0, 1.5, 14.5]])


def test_apply_head_is_the_model_classifier():
  model = models.create_model('resnet', 5, stage_sizes=(1, 1), num_filters=8)
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images)

  @jax.jit
  def logits_both_ways(variables):
    logits, features = model.apply(variables, images, return_features=True)
    return logits, models.apply_head(model, variables['params'][model.HEAD], features)

  np.testing.assert_allclose(*logits_both_ways(variables), rtol=1e-6, atol=1e-6)
