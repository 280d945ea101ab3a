"""Checkpoints: orbax CheckpointManager for resumable stages, plain variables for imports.

Two kinds of directories:
  * a stage directory (e.g. WORKDIR/checkpoints/train) managed by orbax's CheckpointManager:
    numbered steps holding the whole train state (params, batch_stats, opt_state, step). Orbax
    writes each step to a temporary directory and renames it when complete, so a kill during
    a write never leaves a checkpoint that is picked up half-written.
  * a variables directory ({'params', 'batch_stats'} only), written by the PyTorch converter.

`load_variables` reads either, so any stage can start from any of them (config.init_from).
Every process calls save and restore: orbax coordinates multi-host writes itself.
"""

from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fixres_jax import errors

VARIABLES_ITEM = 'variables'


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
  """Resumes from the manager's latest step, or returns `state` when there is none."""
  if manager.latest_step() is None:
    return state
  state = restore_state(manager, state)
  logging.info('Resumed from %s at step %d.', manager.directory, manager.latest_step())
  return state


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
    with ocp.CheckpointManager(path, item_handlers=ocp.StandardCheckpointHandler()) as manager:
      step = manager.latest_step()
      if step is None:
        raise errors.NotFoundError(
            f'No checkpoint in {path}: config.init_from must be a directory written by '
            '`python -m fixres_jax.convert` or a checkpoint directory of a finished stage '
            '(e.g. WORKDIR/checkpoints/train).')
      target = _local_target(manager.item_metadata(step))
      tree = manager.restore(step, args=ocp.args.StandardRestore(target))
  # A train stage that kept an EMA of its weights hands on the EMA (stage.trained_variables).
  source = tree['ema'] if tree.get('ema') else tree
  return to_host({'params': source['params'], 'batch_stats': source['batch_stats']})


def _local_target(metadata) -> Any:
  """Restore target: the saved shapes and dtypes, on this process's first device."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                      dict(metadata))


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
