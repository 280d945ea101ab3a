"""Checkpoints: orbax CheckpointManager for resumable stages, plain variables for imports.

Two kinds of directories:
  * a stage directory (e.g. WORKDIR/checkpoints/train) managed by orbax's CheckpointManager:
    numbered steps holding the whole train state (params, batch_stats, opt_state, step). Orbax
    writes each step to a temporary directory and renames it when complete, so a kill during
    a write never leaves a checkpoint that is picked up half-written.
  * a variables directory ({'params', 'batch_stats'} only), written by the PyTorch converter.

`load_variables` reads either, so any stage can start from any of them (config.init_from).
Every process calls save and restore: orbax coordinates multi-host writes itself.

A step can still be damaged after its rename (a disk or a copy that truncated a file, lost or
garbled its _METADATA). `restore_latest` then resumes from the newest step that reads and
moves the damaged ones to STAGE_DIR/damaged/STEP (with STEP.reason.txt), out of orbax's sight
but kept for inspection.
"""

import contextlib
import errno
import os
import shutil
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fixres_jax import errors

VARIABLES_ITEM = 'variables'
DAMAGED_DIR = 'damaged'  # not a step number: orbax lists nothing under it


class CheckpointManager(ocp.CheckpointManager):
  """orbax's manager, leaving jax's preemption sync point to the training loop.

  orbax asks the sync point about the step it saves, also from its finalizing thread; jax's
  sync manager remembers only the last number it was asked, so those calls would move the stop
  step that preemption.PreemptionGuard agrees on with the other processes.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


def create_manager(directory, max_to_keep: int = 3, async_save: bool = True
                   ) -> ocp.CheckpointManager:
  """An orbax CheckpointManager over `directory` (local path or gs:// URL)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save,
                                         create=True)
  return CheckpointManager(epath.Path(directory), options=options)


def has_steps(directory) -> bool:
  """Whether a stage directory holds a saved step (an interrupted start leaves it empty)."""
  directory = epath.Path(directory)
  return directory.exists() and any(p.name.isdigit() for p in directory.iterdir())


def save_state(manager: ocp.CheckpointManager, step: int, state: Any,
               force: bool = False) -> bool:
  """Saves the train state at `step` (asynchronously unless the manager is synchronous)."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_state(manager: ocp.CheckpointManager, abstract_state: Any,
                  step: Optional[int] = None) -> Any:
  """Restores the latest (or given) step into the structure and shardings of abstract_state."""
  step = manager.latest_step() if step is None else step
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Any:
  """Resumes from the newest step that reads, or returns `state` when there is none.

  Newer steps that do not read on their own are moved aside (set_aside) with a warning. A
  step that reads but does not fit `state` (another model or optimiser) raises its error:
  that is no damage, and an older step would not fit either.

  Raises:
    errors.CheckpointError: there are steps and none reads; nothing is moved then.
  """
  damaged = []
  for step in reversed(manager.all_steps()):
    restored = try_restore(manager, state, step, damaged)
    if restored is not None:
      set_aside(manager, damaged, step)
      logging.info('Resumed from %s at step %d.', manager.directory, step)
      return restored
  if damaged:
    raise errors.CheckpointError(
        f'No checkpoint in {manager.directory} can be read: '
        + '; '.join(f'step {step}: {reason}' for step, reason in damaged)
        + f'. Nothing was moved. To start this stage again, move {manager.directory} away '
        'and re-run; to resume, put an intact copy of a step back in it.')
  return state


def try_restore(manager: ocp.CheckpointManager, state: Any, step: int,
                damaged: list) -> Optional[Any]:
  """The state at `step`, or None when the step is damaged: (step, why) goes to `damaged`."""
  try:
    restored, error = restore_state(manager, state, step), None
  except Exception as e:  # pylint: disable=broad-except  (find_damage tells damage apart)
    restored, error = None, e
  if not any_process(error is not None):
    return restored
  reason = find_damage(manager.directory, step)
  if not any_process(reason is not None):
    raise error or RuntimeError(f'Another process could not restore step {step} of '
                                f'{manager.directory}; its log says why.')
  damaged.append((step, reason or 'unreadable on another process'))
  return None


def open_reader(directory) -> ocp.CheckpointManager:
  """A manager that reads a stage directory's steps as saved, whatever the target."""
  return ocp.CheckpointManager(epath.Path(directory),
                               item_handlers=ocp.StandardCheckpointHandler())


def read_step(reader: ocp.CheckpointManager, step: int) -> Any:
  """The tree saved at `step`, in its saved shapes and dtypes, on this process's first device."""
  metadata = reader.item_metadata(step)
  if metadata is None:  # what orbax returns when _METADATA is missing
    raise ValueError('its tree metadata (_METADATA) is missing')
  return reader.restore(step, args=ocp.args.StandardRestore(_local_target(metadata)))


def find_damage(directory, step: int) -> Optional[str]:
  """Why `step` of a stage directory does not read on its own, or None when it reads."""
  with open_reader(directory) as reader:
    try:
      read_step(reader, step)
    except Exception as e:  # pylint: disable=broad-except  (any failure to read is damage)
      return describe_error(e)
  return None


def describe_error(error: BaseException) -> str:
  """The first line of the innermost cause: tensorstore's own words, not orbax's wrapper."""
  for _ in range(10):  # a chain, never a cycle in practice
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  first_line = (str(error).strip().splitlines() or [''])[0]
  return f'{type(error).__name__}: {first_line[:300]}'


def set_aside(manager: ocp.CheckpointManager, damaged: list, resumed_step: int) -> None:
  """Moves the damaged steps out of the manager's sight, keeping them; warns for each."""
  if not damaged:
    return
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    for step, reason in damaged:
      kept = move_aside(directory, step, reason)
      logging.warning('Checkpoint step %d of %s does not read (%s): moved to %s. Resuming '
                      'from step %d.', step, directory, reason, kept, resumed_step)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('fixres_jax: damaged checkpoints set aside')
  manager.reload()


def move_aside(directory: epath.Path, step: int, reason: str) -> epath.Path:
  """Renames STEP to damaged/STEP (damaged/STEP.2, ... when taken), its reason beside it."""
  aside = directory / DAMAGED_DIR
  aside.mkdir(parents=True, exist_ok=True)
  name, copy = str(step), 1
  while (aside / name).exists():
    copy += 1
    name = f'{step}.{copy}'
  # Written first: on object storage a folder exists only once it holds an object.
  (aside / f'{name}.reason.txt').write_text(reason + '\n')
  (directory / str(step)).rename(aside / name)
  return aside / name


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process, so that every process takes the same branch."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def save_variables(directory, variables: dict) -> epath.Path:
  """Writes {'params', 'batch_stats'} as a standalone checkpoint (e.g. converted weights)."""
  path = epath.Path(directory) / VARIABLES_ITEM
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, dict(variables), force=True)
  return path


def load_variables(directory) -> dict:
  """Reads model variables from a converted directory or from a stage directory.

  Works whatever the number of devices or processes that wrote the checkpoint.

  Args:
    directory: a directory written by save_variables (e.g. by fixres_jax.convert) or an
      orbax CheckpointManager directory (the latest step is used).

  Returns:
    {'params': ..., 'batch_stats': ...} as host (NumPy) arrays.
  """
  path = epath.Path(directory)
  if (path / VARIABLES_ITEM).exists():
    with ocp.StandardCheckpointer() as checkpointer:
      target = _local_target(checkpointer.metadata(path / VARIABLES_ITEM).item_metadata)
      tree = checkpointer.restore(path / VARIABLES_ITEM, target)
  else:
    with open_reader(path) as reader:
      step = reader.latest_step()
      if step is None:
        raise errors.NotFoundError(
            f'No checkpoint in {path}: config.init_from must be a directory written by '
            '`python -m fixres_jax.convert` or a checkpoint directory of a finished stage '
            '(e.g. WORKDIR/checkpoints/train).')
      tree = read_latest(reader, path, step)
  # A train stage that kept an EMA of its weights hands on the EMA (stage.trained_variables).
  source = tree['ema'] if tree.get('ema') else tree
  return to_host({'params': source['params'], 'batch_stats': source['batch_stats']})


def read_latest(reader: ocp.CheckpointManager, path: epath.Path, step: int) -> Any:
  """read_step, where damage is reported alone: the stage that wrote `path` can mend it."""
  try:
    return read_step(reader, step)
  except Exception as e:  # pylint: disable=broad-except  (any failure to read is damage)
    raise errors.CheckpointError(
        f'Step {step} of {path} cannot be read ({describe_error(e)}). Re-running the stage '
        'that wrote it sets that step aside and resumes from its newest readable one.') from e


def _local_target(metadata) -> Any:
  """Restore target: the saved shapes and dtypes, on this process's first device."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                      dict(metadata))


def format_bytes(count: float) -> str:
  """'512 B', '3.2 MiB', '1.4 TiB': binary units, readable at every size."""
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
    if abs(count) < 1024 or unit == 'PiB':
      return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
    count /= 1024


def tree_bytes(tree: Any) -> int:
  """The bytes of a pytree's arrays, as a checkpoint stores them."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, 'dtype'))


def free_bytes(directory) -> Optional[int]:
  """Free space under a local directory (or its nearest existing parent); None if remote."""
  path = os.fspath(directory)
  if '://' in path:
    return None
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def is_out_of_space(error: BaseException) -> bool:
  """Whether `error`, or an error it came from, is a full disk (ENOSPC, or tensorstore's
  words for it)."""
  for _ in range(20):  # a chain, never a cycle in practice
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
    if error is None:
      return False
  return False


@contextlib.contextmanager
def explain_out_of_space(directory, step_bytes: int, max_to_keep: int):
  """Turns a full disk while checkpointing into one errors.OutOfSpaceError naming the
  directory and the space the stage's checkpoints need; other errors pass through."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless a full disk)
    if not is_out_of_space(e):
      raise
    needed = step_bytes * (max_to_keep + 1)
    free = free_bytes(directory)
    raise errors.OutOfSpaceError(
        f'No space left in {directory} while writing a checkpoint: each step takes about '
        f'{format_bytes(step_bytes)} and the stage keeps {max_to_keep} (and writes one more), '
        f'about {format_bytes(needed)} in all'
        + (f', with {format_bytes(free)} free there now' if free is not None else '')
        + '. The steps written before are intact: free some space (or lower '
        'config.checkpoint.max_to_keep, or move the workdir), then re-run the same command '
        'to resume.') from None


def estimate_bytes(model, config) -> int:
  """Disk space for the checkpoints a run keeps: the variables, the optimiser's copies of
  them (SGD's momentum, LAMB's two moments) and the EMA, per kept step and stage."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  variable_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  copies = 1 + (2 if config.train.optimizer == 'lamb' else 1) + (config.train.ema_decay > 0)
  stages = 2  # train and finetune
  return copies * variable_bytes * (config.checkpoint.max_to_keep + 1) * stages


def to_host(tree: Any) -> Any:
  """Fetches a (possibly sharded) pytree to host memory as NumPy arrays."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
