"""8 fake CPU devices for sharding tests; set before jax is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# The triton bundled with torch segfaults when its extension loads after TensorFlow's; the
# converter tests and the TF pipeline tests share this process, so load it first when present.
try:
  import torch  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
  import triton  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
except ImportError:
  pass

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module', autouse=True)
def clear_jax_caches():
  """Frees each test file's compiled programs: one process runs the whole suite."""
  yield
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory):
  """The embedded dataset's 'tiny' config, built once per test session."""
  from fixres_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp('tfds')
  synthetic.prepare('tiny', data_dir=str(data_dir))
  return str(data_dir)


@pytest.fixture
def tiny_config(synthetic_data_dir):
  """tests/tiny_config.py reading the session's fixres_synthetic/tiny."""
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.data_dir = synthetic_data_dir
  return config


@pytest.fixture
def tiny_dataset(tiny_config):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.load_dataset(tiny_config)
