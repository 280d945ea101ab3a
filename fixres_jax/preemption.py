"""Preemption: SIGTERM (or SIGINT) asks the running stage to checkpoint and exit cleanly."""

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


class PreemptionGuard:
  """Records SIGTERM/SIGINT instead of dying mid-step.

  Every process must stop at the same step, so with several processes the decision goes
  through jax's preemption sync point (which also watches the scheduler's notice).
  """

  def __init__(self):
    self.requested = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self.requested.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:  # a local signal alone would make the processes diverge
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested.is_set()

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
