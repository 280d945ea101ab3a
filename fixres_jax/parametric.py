"""Parametric adaptation (FixRes, Section 4): a scalar map of the pooled features, no training.

After the final ReLU and global average pooling, the nonzero features of a network are well
described by a Fréchet law, i.e. a generalised extreme value (GEV) distribution with a positive
shape xi, fixed at 0.3 as in the paper. Fitting one to the features the classifier was trained
on and one at K_test, and sending test features through F_train^{-1}(F_test(f)), makes them
look like the former. Both fits use held-out training images (config.sweep.parametric_split).

The target law (config.sweep.parametric_target, TARGETS):
  'train_transform' (the default): the paper's, whose Fréchet fits compare the pooled
    features of the network in train mode (the training augmentation: RandomResizedCrop and
    flip at K_train), the features its classifier was fitted to, with those in test mode at
    K_test. The images go through config.data's train transform at K_train (each image's crop
    drawn from config.seed), the network in inference mode (running BatchNorm statistics).
  'test_transform': the central crop at K_train (the test transform), where the map is the
    identity at K_train: it aligns K_test with the trained network tested at K_train, not with
    what the classifier saw in training.
The source law is always the test transform at K_test, fitted on the same images.

Both laws share the shape, so a GEV is loc + scale * Z with the same Z, and the quantile map is
affine: f -> a f + b with a = scale_train / scale_test, b = loc_train - a loc_test. That is
the paper's "scalar transformation after pooling": one (a, b) for every channel.

Exact zeros (a channel that fired nowhere in the image) are a point mass that no continuous law
describes: the fits use the nonzero features only, and zeros stay zero. Moving them to b would
shift every logit by b * sum(kernel rows of the silent channels), an artefact of the fit rather
than a property of the image; and the fraction of zeros, which the map cannot change, is
reported separately (stats.json). Mapped values below zero are clipped to zero, the range of
a ReLU.

Fits work on histograms (binned maximum likelihood), so the features never leave the device:
the sweep's jitted step accumulates the histogram.

scipy.stats.genextreme writes the shape as c = -xi (c < 0 is the heavy-tailed Fréchet case).
"""

import dataclasses
from typing import Tuple

import jax.numpy as jnp
import numpy as np
from scipy import optimize
from scipy import stats

SHAPE = 0.3  # xi, the paper's fixed Fréchet shape.
IDENTITY = (np.float32(1.0), np.float32(0.0))  # (a, b): the features as they are.
TRAIN_TRANSFORM, TEST_TRANSFORM = 'train_transform', 'test_transform'
TARGETS = (TRAIN_TRANSFORM, TEST_TRANSFORM)  # config.sweep.parametric_target


@dataclasses.dataclass(frozen=True)
class GevFit:
  """A GEV law: loc + scale * Z, Z standard GEV of shape xi (scipy: c = -xi)."""
  loc: float
  scale: float
  shape: float = SHAPE

  def cdf(self, x):
    return stats.genextreme.cdf(x, -self.shape, self.loc, self.scale)

  def ppf(self, q):
    return stats.genextreme.ppf(q, -self.shape, self.loc, self.scale)

  def rvs(self, size, seed=0):
    return stats.genextreme.rvs(-self.shape, self.loc, self.scale, size=size,
                                random_state=np.random.default_rng(seed))


def bin_bounds(edges: np.ndarray) -> np.ndarray:
  """The bounds of the len(edges) + 1 bins of a positive histogram: [0, edges..., inf]."""
  return np.concatenate([[0.0], np.asarray(edges, np.float64), [np.inf]])


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Counts of positive values in the bins of bin_bounds(edges), as the sweep step counts."""
  values = np.asarray(values)
  values = values[values > 0]
  return np.bincount(np.searchsorted(edges, values), minlength=len(edges) + 1)


def fit_gev(edges: np.ndarray, counts: np.ndarray, shape: float = SHAPE) -> GevFit:
  """Maximum likelihood location and scale of a GEV of fixed shape, from binned positives.

  Each bin has probability F(hi) - F(lo) under the whole law, so a law that puts mass below
  zero, where no value lies, pays for it. (Conditioning on x > 0 instead, i.e. dividing by
  1 - F(0), is ill-posed when the density peaks near zero, as pooled features often do: the fit
  runs off to a far-left, tiny-scale law whose power-law tail alone covers the data.)

  Args:
    edges: increasing bin edges (the bins are those of bin_bounds(edges)).
    counts: [len(edges) + 1] counts, e.g. from histogram().
    shape: xi, the fixed shape.

  Returns:
    the fitted GevFit.
  """
  counts = np.asarray(counts, np.float64)
  if counts.shape != (len(edges) + 1,) or counts.sum() < 2 or (counts > 0).sum() < 2:
    raise ValueError(f'Cannot fit a distribution to {int(counts.sum())} values in '
                     f'{int((counts > 0).sum())} bins: evaluate more images (a larger '
                     'config.sweep.parametric_split).')
  bounds = bin_bounds(edges)
  used = counts > 0

  def negative_log_likelihood(theta):
    probabilities = np.diff(GevFit(theta[0], np.exp(theta[1]), shape).cdf(bounds))
    return -np.sum(counts[used] * np.log(np.maximum(probabilities[used], 1e-300)))

  start = fit_gev_quantiles(edges, counts, shape)
  result = optimize.minimize(negative_log_likelihood, [start.loc, np.log(start.scale)],
                             method='Nelder-Mead',
                             options={'xatol': 1e-6, 'fatol': 1e-6, 'maxiter': 2000})
  return GevFit(float(result.x[0]), float(np.exp(result.x[1])), shape)


def fit_gev_quantiles(edges: np.ndarray, counts: np.ndarray, shape: float = SHAPE) -> GevFit:
  """A GEV through the histogram's quartiles: the starting point of fit_gev."""
  quartiles = histogram_quantiles(edges, counts, (0.25, 0.5, 0.75))
  standard = GevFit(0.0, 1.0, shape).ppf([0.25, 0.5, 0.75])
  scale = max((quartiles[2] - quartiles[0]) / (standard[2] - standard[0]), 1e-12)
  return GevFit(float(quartiles[1] - scale * standard[1]), float(scale), shape)


def histogram_quantiles(edges: np.ndarray, counts: np.ndarray, quantiles,
                        zeros: float = 0.0) -> np.ndarray:
  """Quantiles of a histogram of positive values plus `zeros` exact zeros.

  Interpolates geometrically inside the (log-spaced) bins, linearly in the first bin
  [0, edges[0]]; the last bin [edges[-1], inf) answers edges[-1].
  """
  counts = np.asarray(counts, np.float64)
  cumulative = np.concatenate([[0.0], np.cumsum(counts)]) + zeros
  total = cumulative[-1]
  bounds = bin_bounds(edges)
  values = []
  for q in np.atleast_1d(quantiles):
    rank = q * total
    if rank <= zeros:
      values.append(0.0)
      continue
    i = min(int(np.searchsorted(cumulative, rank, side='left')) - 1, len(counts) - 1)
    i = max(i, 0)
    fraction = (rank - cumulative[i]) / max(counts[i], 1e-300)
    lo, hi = bounds[i], bounds[i + 1]
    if i == 0:
      values.append(lo + fraction * (hi - lo))
    elif np.isinf(hi):
      values.append(lo)
    else:
      values.append(lo * (hi / lo)**fraction)
  return np.array(values)


def quantile_map(source: GevFit, target: GevFit) -> Tuple[np.float32, np.float32]:
  """(a, b) such that a f + b = F_target^{-1}(F_source(f)), exact for equal shapes."""
  if source.shape != target.shape:
    raise ValueError(f'The quantile map is affine only between equal shapes, got '
                     f'{source.shape} and {target.shape}.')
  a = target.scale / source.scale
  return np.float32(a), np.float32(target.loc - a * source.loc)


def adapt_features(features: jnp.ndarray, a, b) -> jnp.ndarray:
  """Nonzero features f -> max(a f + b, 0); exact zeros stay zero. (1, 0) is the identity."""
  return jnp.where(features > 0, jnp.maximum(a * features + b, 0), features)
