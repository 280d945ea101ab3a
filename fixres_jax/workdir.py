"""The run's working directory: checked before anything is compiled, locked while in use."""

import fcntl
import os
import shutil
from typing import Dict, Union
import uuid

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import storage

LOCK_NAME = '.lock'


class WorkdirError(errors.UserError, RuntimeError):
  """The workdir: not writable, too small, or in use by another run."""


# Allowances where the size is not known before the run: a compiled program kept in
# WORKDIR/compilation_cache, and metrics, TensorBoard events and the sweep's outputs.
COMPILED_PROGRAM_BYTES = 32 * 2**20
OUTPUT_BYTES = 16 * 2**20


def probe_writable(directory: epath.Path) -> None:
  """Creates `directory` and writes and removes a probe file there; raises OSError if not."""
  directory.mkdir(parents=True, exist_ok=True)
  probe = directory / f'.write_probe_{uuid.uuid4().hex}'
  probe.write_text('ok')
  probe.unlink()


def check_writable(workdir: epath.Path, needed_bytes: Union[int, Dict[str, int]]) -> None:
  """Fails at start, not after an epoch, when the workdir cannot hold what the run writes.

  Args:
    needed_bytes: estimated space, or {what: space} (estimate_run_bytes).
  """
  try:
    probe_writable(workdir)
  except OSError as e:
    raise WorkdirError(f'Cannot write to --workdir={workdir} ({e}): choose a writable '
                       'directory or fix its permissions.') from e
  parts = needed_bytes if isinstance(needed_bytes, dict) else {'the run': needed_bytes}
  needed = sum(parts.values())
  if '://' not in str(workdir):  # local disk
    free = shutil.disk_usage(os.fspath(workdir)).free
    if free < needed:
      fmt = checkpoint.format_bytes
      raise WorkdirError(
          f'--workdir={workdir} has {fmt(free)} free but the run writes about {fmt(needed)} '
          f'there ({", ".join(f"{what} {fmt(size)}" for what, size in parts.items())}): free '
          'some space, choose another workdir, or lower config.checkpoint.max_to_keep.')


def estimate_run_bytes(config, model, num_train_examples: int) -> Dict[str, int]:
  """What a run writes under the workdir, by kind: checkpoints, an on-disk feature cache,
  compiled programs (an allowance each) and the metrics and outputs (an allowance)."""
  from fixres_jax import augmentations  # pylint: disable=g-import-not-at-top
  from fixres_jax import cached_finetune  # pylint: disable=g-import-not-at-top
  from fixres_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  parts = {'checkpoints': checkpoint.estimate_bytes(model, config)}
  cfg = config.finetune
  if cfg.mode == 'cached' and not cfg.cache_dir and 'finetune' in config.stages:
    row = (augmentations.cached_views(cfg.augment)
           * cached_finetune.feature_size(model, config.train.image_size)
           * np.dtype(jnp.dtype(cfg.cache_dtype)).itemsize + 4)
    per_process = num_train_examples * row / jax.process_count()
    if per_process > cfg.cache_in_memory_mb * 2**20:  # else it stays in memory
      parts['feature cache'] = num_train_examples * row
  if os.environ.get('JAX_COMPILATION_CACHE_DIR') is None:
    programs = (len(config_lib.image_size_schedule(config.train)) + 2
                + len(config.sweep.resolutions) + len(cfg.auto_resolutions))
    parts['compiled programs'] = programs * COMPILED_PROGRAM_BYTES
  parts['metrics and outputs'] = OUTPUT_BYTES
  return parts


class WorkdirLock:
  """An exclusive lock on a local workdir, so that two runs never interleave in it.

  Only process 0 takes it (the processes of one run share the workdir). A remote (gs://)
  workdir is locked by storage.RemoteLock; on filesystems without flock (Lustre mounted
  noflock, NFS without lockd) the lock is skipped with a warning.
  """

  def __init__(self, workdir: epath.Path):
    self.file = None
    if jax.process_index() != 0:
      return
    if storage.is_remote(workdir):  # object storage has no flock: an object with a heartbeat
      self.file = storage.RemoteLock(workdir, LOCK_NAME, WorkdirError)
      return
    path = os.path.join(os.fspath(workdir), LOCK_NAME)
    self.file = open(path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      self.file.seek(0)
      owner = self.file.read().strip() or 'another process'
      self.file.close()
      raise WorkdirError(
          f'--workdir={workdir} is in use by {owner}. Two runs in one workdir would overwrite '
          'each other: wait for it to finish, stop it, or choose another workdir.') from e
    except OSError as e:  # e.g. Lustre mounted noflock, NFS without lockd: ENOLCK, EOPNOTSUPP
      self.file.close()
      self.file = None
      logging.warning('Not locking --workdir=%s: its filesystem does not support flock (%s). '
                      'Run one job per workdir.', workdir, e)
      return
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f'pid {os.getpid()} on {os.uname().nodename}\n')
    self.file.flush()

  def release(self) -> None:
    if isinstance(self.file, storage.RemoteLock):
      self.file.release()
      self.file = None
    if self.file is not None:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()
      self.file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def enable_compilation_cache(workdir) -> None:
  """Keeps compiled programs in WORKDIR/compilation_cache so that a resumed run skips compiling.

  jax's own JAX_COMPILATION_CACHE_DIR wins when set (a shared path, or '' to turn it off);
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS sets which compilations are worth keeping.
  """
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  jax.config.update('jax_compilation_cache_dir', str(epath.Path(workdir) / 'compilation_cache'))
