"""8 fake CPU devices for sharding tests, cheap compilations (tests/xla_flags.py) and the
threads XLA:CPU needs for 8 devices, set before jax's backend exists; one compilation cache for
the session."""

import os
import shutil
import tempfile

import xla_flags

os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''),
                                    xla_flags.with_devices(8)]).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Threads for the 8 devices (as fixres_jax.main gives itself), inherited by every subprocess.
from fixres_jax import devices  # pylint: disable=g-import-not-at-top,wrong-import-position
devices.provision_cpu_threads()

# The triton bundled with torch segfaults when its extension loads after TensorFlow's; the
# converter tests and the TF pipeline tests share this process, so load it first when present.
try:
  import torch  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
  import triton  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
except ImportError:
  pass

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_configure(config):
  """One persistent compilation cache for the session, set before anything compiles: a
  program compiled again (a new jit of the same tiny model in another test, or after
  clear_jax_caches) is read back instead. Only this process uses it; a `fixres_jax.main`
  subprocess keeps its own workdir's cache."""
  import jax  # pylint: disable=g-import-not-at-top
  config.jax_cache_dir = tempfile.mkdtemp(prefix='fixres_jax_test_cache_')
  jax.config.update('jax_compilation_cache_dir', config.jax_cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
  shutil.rmtree(getattr(config, 'jax_cache_dir', ''), ignore_errors=True)


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
