"""Default transforms at a size, for tests that call the pipelines directly."""

import functools

from fixres_jax.data import preprocess


def train_at(size: int):
  """(image bytes, seed) -> the default train transform's image at K_train = size."""
  return functools.partial(preprocess.preprocess_train, size=size)


def eval_at(size: int):
  """image bytes -> the default test transform's image at K_test = size."""
  return functools.partial(preprocess.preprocess_test, size=size)
