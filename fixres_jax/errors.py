"""Errors a user causes and can fix: a config value, a path, a dataset not prepared.

Every command-line tool (`python -m fixres_jax.main`, `.convert`, ...) prints their message
alone (it names the problem and the fix) and exits with EXIT_CODE (run_tool); any other
exception is a bug and keeps its traceback. Each class also
subclasses the builtin it replaces, so `except ValueError` (and pytest.raises(ValueError))
still catches a ConfigError. workdir.WorkdirError is one too.
"""

import sys
from typing import Callable, NoReturn, Optional

EXIT_CODE = 2


class UserError(Exception):
  """The base: its message is the whole report."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that cannot work."""


class DataError(UserError, ValueError):
  """The data itself: an empty split, a label out of range, undecodable images."""


class NotFoundError(UserError, FileNotFoundError):
  """A dataset not prepared, or a folder or checkpoint that does not exist."""


class OutOfSpaceError(UserError, OSError):
  """The disk under the workdir filled up: what was written before is intact."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that exists but cannot be read (a truncated file, missing metadata)."""


def message(error: UserError) -> str:
  """The text to print: the message as written (str() of a one-argument OSError is that)."""
  return str(error.args[0]) if len(error.args) == 1 else str(error)


def exit_with(text: str) -> NoReturn:
  """A user's mistake: its message alone on stderr (no traceback), exit EXIT_CODE."""
  print(f'Error: {text}', file=sys.stderr, flush=True)
  sys.exit(EXIT_CODE)


def run_tool(main: Callable, flags_parser: Optional[Callable] = None) -> None:
  """absl's app.run for a command-line tool, under the contract above: a bad or missing
  flag, a usage mistake (app.UsageError) or a UserError ends with `Error: MESSAGE`, exit 2.

  Args:
    main: the tool's main(argv).
    flags_parser: as app.run's; by default absl's parsing, its errors ending as above.
  """
  from absl import app  # pylint: disable=g-import-not-at-top  (this module stays import-free)
  from absl import flags  # pylint: disable=g-import-not-at-top

  def parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:  # absl's message names the flag
      exit_with(str(e))

  def guarded_main(argv):
    try:
      return main(argv)
    except UserError as e:
      exit_with(message(e))
    except app.UsageError as e:
      exit_with(str(e))

  app.run(guarded_main, flags_parser=flags_parser or parse_flags)
