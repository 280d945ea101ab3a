"""FixRes in JAX: train at K_train, fine-tune at K_test, sweep test resolutions."""

# First, so that every gs:// path of the package goes through fsspec (see storage.py).
from fixres_jax import storage  # pylint: disable=unused-import
