"""Which library lines reach the console: the pieces main.quiet_library_logs puts together.

Without --library_logs, fixres_jax.main shows the project's own lines and, from the libraries,
warnings and errors only. Hidden: every INFO line of an installed library (tfds's two lines per
tf.data.Dataset it builds, that is every epoch; jax probing for a TPU; orbax's per-save lines),
tfds's warning that a dataset about to be generated has no dataset_info.json yet, and the lines
TensorFlow's import writes through absl's C++ log. Importing this module changes nothing.
"""

import contextlib
import importlib
import importlib.util
import logging
import os
import site
import sys
import sysconfig
import tempfile
from typing import Sequence

# Library warnings that tell a user of this project nothing.
HARMLESS_WARNINGS = (
    'has no dataset_info.json',  # tfds, before generating a fixres_synthetic config
)
# What `import tensorflow` writes to stderr through absl's C++ log. TF_CPP_MIN_LOG_LEVEL does
# not reach these (TensorFlow 2.19 and later).
TENSORFLOW_IMPORT_LINES = (
    'All log messages before absl::InitializeLog() is called are written to STDERR',
    'oneDNN custom operations are on',
)


def library_dirs() -> tuple:
  """Where installed libraries live: the standard library and every site-packages."""
  paths = sysconfig.get_paths()
  dirs = {paths[key] for key in ('stdlib', 'platstdlib', 'purelib', 'platlib')}
  dirs.update(site.getsitepackages() + [site.getusersitepackages()])
  return tuple(os.path.join(d, '') for d in sorted(dirs))


_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '')
_LIBRARY_DIRS = library_dirs()


def is_library_file(path: str) -> bool:
  """Whether `path` is an installed library's code (fixres_jax's own is not, wherever it is)."""
  return path.startswith(_LIBRARY_DIRS) and not path.startswith(_PACKAGE_DIR)


def keep_record(record: logging.LogRecord) -> bool:
  """A logging filter: False for a library's line below WARNING or a harmless warning."""
  if not is_library_file(record.pathname):
    return True
  if record.levelno < logging.WARNING:
    return False
  try:
    message = record.getMessage()
  except (TypeError, ValueError):  # a malformed call: logging reports it when it formats
    return True
  return not any(text in message for text in HARMLESS_WARNINGS)


@contextlib.contextmanager
def stderr_lines_dropped(texts: Sequence[str]):
  """Runs the block with file descriptor 2 captured, then writes the captured lines back to
  stderr, but those containing one of `texts`: native code writes to fd 2 directly, past any
  Python logging filter."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines(keepends=True)
      sys.stderr.write(''.join(l for l in lines if not any(text in l for text in texts)))
      sys.stderr.flush()


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow, if installed and not imported yet, without its import-time lines.

  Imported here, early, so that later imports (the input pipeline's) find it loaded.
  """
  if 'tensorflow' in sys.modules or importlib.util.find_spec('tensorflow') is None:
    return
  with stderr_lines_dropped(TENSORFLOW_IMPORT_LINES):
    importlib.import_module('tensorflow')
