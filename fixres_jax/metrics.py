"""Metric logging: WORKDIR/metrics.jsonl, TensorBoard event files and a progress line.

Only process 0 writes; every process may call these.
"""

import datetime
import json
import os
import time

from absl import logging
from etils import epath
import jax

from fixres_jax import storage


class MetricWriter:
  """Appends {'stage', 'step', ...metrics} records to metrics.jsonl and TensorBoard.

  On a remote (gs://) workdir both are written to a local staging copy and uploaded every
  SYNC_EVERY_S seconds, at each `sync` (the training loop calls it after each checkpoint) and
  at `close`: object storage cannot append, and uploading on every write would send the whole
  file each time. A kill loses at most the records after the last checkpoint, which the
  resumed run writes again.
  """

  SYNC_EVERY_S = 60

  def __init__(self, workdir, stage: str):
    self.stage = stage
    self.enabled = jax.process_index() == 0
    self.staging = storage.Staging(workdir)  # every process's: profiles are per process
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.path = self.staging.local('metrics.jsonl')
      self.tensorboard = SummaryWriter(str(self.staging.root / 'tensorboard' / stage))

  def local_dir(self, *parts: str) -> epath.Path:
    """A local directory for WORKDIR/parts, uploaded with the metrics (e.g. profiles)."""
    return epath.Path(os.path.join(str(self.staging.root), *parts))

  def write(self, step: int, values: dict, line: str = '') -> None:
    """Records `values` at `step`; logs `line`, or the values when no line is given."""
    if not self.enabled:
      return
    record = {'stage': self.stage, 'step': int(step), **values}
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in values.items():
      if isinstance(value, (int, float)):
        self.tensorboard.add_scalar(f'{self.stage}/{name}', value, step)
    self.tensorboard.flush()
    self.staging.sync(every_s=self.SYNC_EVERY_S)
    logging.info('[%s] %s', self.stage, line or f'step {step}: ' + ', '.join(
        f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in values.items()))

  def sync(self) -> None:
    """Uploads what a remote workdir has not received yet."""
    if self.enabled:
      self.tensorboard.flush()
    self.staging.sync()

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()
    self.staging.close()


class Progress:
  """Throughput and ETA between successive calls."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int = 0):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self.last_step = start_step
    self.last_time = time.perf_counter()

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    seconds_per_step = (now - self.last_time) / max(step - self.last_step, 1)
    self.last_step, self.last_time = step, now
    return {'images_per_s': self.global_batch / seconds_per_step,
            'step_time_s': seconds_per_step,
            'eta_s': seconds_per_step * (self.total_steps - step)}

  def line(self, step: int, values: dict) -> str:
    """'step 120/1248 (10%) | 540 img/s | ETA 0:02:05 | loss 1.234 | top1 0.456'."""
    eta = datetime.timedelta(seconds=round(values['eta_s']))
    extras = ' | '.join(f'{k} {values[k]:.4g}' for k in ('loss', 'top1', 'lr') if k in values)
    return (f'step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%) | '
            f'{values["images_per_s"]:.0f} img/s | ETA {eta} | {extras}')


class TraceWindow:
  """Captures a jax.profiler trace of steps [first, first + count) into `directory`."""

  def __init__(self, directory, first: int, count: int):
    self.directory, self.first, self.last = str(directory), first, first + count
    self.active = False

  def before_step(self, step: int) -> None:
    if step == self.first and self.last > self.first:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, outputs) -> None:
    if self.active and step == self.last - 1:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      logging.info('Profile of steps %d-%d written to %s (open it with TensorBoard or '
                   'Perfetto).', self.first, self.last - 1, self.directory)
