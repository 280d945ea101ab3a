"""Errors a user causes and can fix: a config value, a path, a dataset not prepared.

`python -m fixres_jax.main` prints their message alone (it names the problem and the fix) and
exits with EXIT_CODE; any other exception is a bug and keeps its traceback. Each class also
subclasses the builtin it replaces, so `except ValueError` (and pytest.raises(ValueError))
still catches a ConfigError. workdir.WorkdirError is one too.
"""

EXIT_CODE = 2


class UserError(Exception):
  """The base: its message is the whole report."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that cannot work."""


class DataError(UserError, ValueError):
  """The data itself: an empty split, a label out of range, undecodable images."""


class NotFoundError(UserError, FileNotFoundError):
  """A dataset not prepared, or a folder or checkpoint that does not exist."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that exists but cannot be read (a truncated file, missing metadata)."""


def message(error: UserError) -> str:
  """The text to print: the message as written (str() of a one-argument OSError is that)."""
  return str(error.args[0]) if len(error.args) == 1 else str(error)
