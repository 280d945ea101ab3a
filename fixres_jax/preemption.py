"""Stopping on a signal: SIGTERM (a preemption) or SIGINT (Ctrl-C) ends the run cleanly.

One process: main installs, once, handlers that record the signal in STOP, the process-wide
record that a stop was requested. Once set it stays set, so nothing after it starts new
work. The run looks at it where it can end cleanly: after every step of a stage loop (which
then checkpoints its step and raises Preempted, PreemptionGuard), before each stage and
before each evaluation pass (check_stop raises Stopped); main exits with 128 + the signal
(143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once (KeyboardInterrupt).

Several processes: every process must stop at the same point, whichever of them got the
signal. jax.distributed.initialize starts jax's preemption sync manager, whose notifier owns
SIGTERM at the C level and reports a notice to the coordination service, which tells every
process. `multihost_utils.reached_preemption_sync_point` then turns True on all processes at
one common call of stop_requested, which every process makes at the same points. A Python
SIGTERM handler would replace that notifier, so none is installed then; and orbax's own
calls to the sync point are turned off (checkpoint.CheckpointManager), as they would shift
the agreed call.
"""

import functools
import itertools
import signal
import threading
from typing import Optional

from absl import logging
import jax
from jax.experimental import multihost_utils

EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """Raised where a requested stop ends the run, once what could be saved is saved."""

  def __init__(self, message: str):
    super().__init__(message)
    self.exit_code = STOP.exit_code()  # read now: a library-owned guard clears STOP after


class Preempted(Stopped):
  """Raised after the stage has saved its checkpoint at `step`."""

  def __init__(self, stage: str, step: int):
    super().__init__(f'{stage} stage preempted at step {step}; its checkpoint is saved. '
                     'Re-run the same command to resume.')
    self.step = step


class StopRequest:
  """The process-wide record that a stop was requested, and by which signal."""

  def __init__(self):
    self.signum: Optional[int] = None

  def record(self, signum: int) -> None:
    if self.signum is None:  # the first signal decides the exit code
      self.signum = signum

  def is_set(self) -> bool:
    return self.signum is not None

  def exit_code(self) -> int:
    """128 + the signal, as a shell reports a process the signal ended."""
    return 128 + (self.signum or signal.SIGTERM)

  def clear(self) -> None:
    self.signum = None


STOP = StopRequest()
_PREVIOUS = {}  # signal -> the handler install_handlers replaced

# The sync manager agrees on "one call after the furthest process's last call number" and
# compares that with each later number it is given, once per process lifetime. Numbering the
# calls across the whole process (not by stage step, which restarts per stage and starts past
# 0 on resume) makes that agreed number reachable, at the same call, on every process.
_CALLS = itertools.count(1)


def install_handlers() -> bool:
  """Records SIGTERM and SIGINT in STOP from now on; whether this call installed the handlers.

  Installs nothing with several processes (jax's notifier owns SIGTERM), off the main thread
  (Python allows handlers only there) or when they are installed already.
  """
  if (_PREVIOUS or jax.process_count() > 1
      or threading.current_thread() is not threading.main_thread()):
    return False
  for sig in SIGNALS:
    _PREVIOUS[sig] = signal.signal(sig, _record_signal)
  return True


def uninstall_handlers() -> None:
  """Gives back the handlers install_handlers replaced."""
  for sig, handler in _PREVIOUS.items():
    signal.signal(sig, handler)
  _PREVIOUS.clear()


def _record_signal(signum, frame):
  del frame
  if STOP.is_set() and signum == signal.SIGINT:
    raise KeyboardInterrupt  # Ctrl-C twice: the user will not wait for a clean stop
  again = ' (Ctrl-C again stops at once)' if signum == signal.SIGINT else ''
  logging.warning('Received signal %d: saving what can be saved and stopping%s.', signum,
                  again)
  STOP.record(signum)


def stop_requested() -> bool:
  """Whether the run should stop now.

  With several processes this asks the preemption sync point: call it on every process at
  the same points (every process runs the same stages, steps and evaluations).
  """
  if not STOP.is_set() and jax.process_count() > 1 and has_sync_manager():
    if multihost_utils.reached_preemption_sync_point(next(_CALLS)):
      logging.warning('A process received a preemption notice: every process stops here.')
      STOP.record(signal.SIGTERM)
  return STOP.is_set()


def check_stop(before: str) -> None:
  """Raises Stopped when a stop was requested; `before` names the work it keeps from starting.

  Call it where ending loses nothing: between stages, before an evaluation pass.
  """
  if stop_requested():
    raise Stopped(f'Stopped by signal {STOP.signum} before {before}; what finished is '
                  'saved. Re-run the same command to resume.')


class PreemptionGuard:
  """Decides, once per step, whether the step loop should checkpoint and stop.

  Without main's handlers (the library called directly), it installs them for the loop's
  length, and forgets the request when the loop ends: the Preempted it led to carries it.
  """

  def __init__(self):
    self._own_handlers = install_handlers()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop; call it after every step, on every process."""
    del step  # Preempted names it
    return stop_requested()

  def close(self) -> None:
    if self._own_handlers:
      uninstall_handlers()
      STOP.clear()
      self._own_handlers = False


@functools.cache
def has_sync_manager() -> bool:
  """Whether jax.distributed started its preemption sync manager (warns once when not)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  if distributed.global_state.preemption_sync_manager is not None:
    return True
  logging.warning('jax_enable_preemption_service is off: a SIGTERM will not stop the %d '
                  'processes at a common step, so nothing is saved on preemption beyond the '
                  'periodic checkpoints.', jax.process_count())
  return False
