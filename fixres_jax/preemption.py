"""Preemption: SIGTERM asks the running stage to checkpoint and exit cleanly.

One process: a Python signal handler records SIGTERM (and SIGINT) and the loop stops after
the current step.

Several processes: every process must stop at the same step, whichever of them got the
signal. jax.distributed.initialize starts jax's preemption sync manager, whose notifier owns
SIGTERM at the C level and reports a notice to the coordination service, which tells every
process. `multihost_utils.reached_preemption_sync_point` then turns True on all processes at
one common step. A Python SIGTERM handler would replace that notifier, so none is installed
then; and orbax's own calls to the sync point are turned off (checkpoint.CheckpointManager),
as they would shift the agreed step.
"""

import itertools
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job


class Preempted(Exception):
  """Raised after the stage has saved its checkpoint at `step`."""

  def __init__(self, stage: str, step: int):
    super().__init__(f'{stage} stage preempted at step {step}; its checkpoint is saved. '
                     'Re-run the same command to resume.')
    self.step = step


# The sync manager agrees on "one call after the furthest process's last call number" and
# compares that with each later number it is given, once per process lifetime. Numbering the
# calls across the whole process (not by stage step, which restarts per stage and starts past
# 0 on resume) makes that agreed number reachable, at the same step, on every process.
_CALLS = itertools.count(1)


class PreemptionGuard:
  """Decides, once per step, whether the loop should checkpoint and stop."""

  def __init__(self):
    self.requested = threading.Event()
    self.multiprocess = jax.process_count() > 1
    self._synced = self.multiprocess and has_sync_manager()
    self._previous = {}
    if not self.multiprocess and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self.requested.set()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop; call it after every step, on every process."""
    if not self.multiprocess:
      return self.requested.is_set()
    if not self._synced:
      return False
    if multihost_utils.reached_preemption_sync_point(next(_CALLS)):
      logging.warning('A process received a preemption notice: every process stops at step '
                      '%d.', step)
      return True
    return False

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def has_sync_manager() -> bool:
  """Whether jax.distributed started its preemption sync manager (warns when not)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  if distributed.global_state.preemption_sync_manager is not None:
    return True
  logging.warning('jax_enable_preemption_service is off: a SIGTERM will not stop the %d '
                  'processes at a common step, so nothing is saved on preemption beyond the '
                  'periodic checkpoints.', jax.process_count())
  return False
