"""What the train and finetune stages share: the train state, its setup (replicated on the
mesh, the stage's checkpoint manager, the last checkpoint restored) and the step loop."""

import dataclasses
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence, Tuple

from absl import logging
from etils import epath
from flax import traverse_util
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fixres_jax import checkpoint
from fixres_jax import metrics as metrics_lib
from fixres_jax import parallel
from fixres_jax import preemption


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the BatchNorm running statistics, and optionally an exponential
  moving average of the variables ({'params', 'batch_stats'}, None when off)."""
  batch_stats: Any = None
  ema: Any = None


def split_params(params: Any, names: Sequence[str]) -> Tuple[dict, dict]:
  """The whole tree flattened ({path tuple: array}) and the subset `names` (nested)."""
  flat = traverse_util.flatten_dict(params)
  keys = [tuple(name.split('/')) for name in names]
  return flat, traverse_util.unflatten_dict({k: flat[k] for k in keys})


def merge_params(flat: dict, subset: dict) -> dict:
  """The whole tree with the subset replaced."""
  return traverse_util.unflatten_dict({**flat, **traverse_util.flatten_dict(subset)})


def create_train_state(model, variables: dict, tx: optax.GradientTransformation,
                       trainable: Optional[Sequence[str]] = None, ema: bool = False
                       ) -> TrainState:
  """A TrainState holding every variable, with optimiser state for every parameter, or for
  the '/'-joined names `trainable` only (FixRes fine-tuning); with `ema`, an EMA of the
  variables starting from them."""
  params = variables['params']
  opt_params = params if trainable is None else split_params(params, trainable)[1]
  average = None
  if ema:  # copies: a donated state must not hold one buffer twice
    average = jax.tree.map(jnp.copy, {'params': params, 'batch_stats': variables['batch_stats']})
  return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params,
                    batch_stats=variables['batch_stats'], tx=tx, opt_state=tx.init(opt_params),
                    ema=average)


def trained_variables(state: TrainState) -> dict:
  """What a stage hands on: the EMA of the variables when it keeps one (as timm keeps its EMA
  model), else the variables."""
  if state.ema is not None:
    return state.ema
  return {'params': state.params, 'batch_stats': state.batch_stats}


def update_subset(state: TrainState, names: Sequence[str], loss_fn: Callable):
  """One optimiser step on the parameters `names` only; the others come back bit-identical.

  Only the subset is differentiated, so XLA drops the backward pass of the rest.

  Args:
    loss_fn: full params -> (loss, aux).

  Returns:
    (the state with new params, opt_state and step; loss; aux).
  """
  flat, params = split_params(state.params, names)
  (loss, aux), grads = jax.value_and_grad(
      lambda p: loss_fn(merge_params(flat, p)), has_aux=True)(params)
  updates, opt_state = state.tx.update(grads, state.opt_state, params)
  params = optax.apply_updates(params, updates)
  state = state.replace(step=state.step + 1, opt_state=opt_state,
                        params=merge_params(flat, params))
  return state, loss, aux


def open_stage(name: str, workdir, mesh, state: TrainState, max_to_keep: int):
  """The stage's state on the mesh, restored from its last checkpoint if there is one.

  Returns:
    (state, the stage's CheckpointManager under WORKDIR/checkpoints/NAME).
  """
  manager = checkpoint.create_manager(epath.Path(workdir) / 'checkpoints' / name,
                                      max_to_keep=max_to_keep)
  return checkpoint.restore_latest(manager, parallel.replicate(state, mesh)), manager


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How often the loop logs and checkpoints, how many steps it profiles (0: none), and how
  many checkpoints the manager keeps."""
  log_every: int
  checkpoint_every: int
  profile_steps: int = 0
  max_to_keep: int = 2


def stage_cadence(cfg, checkpoint_cfg) -> Cadence:
  """The cadence a stage's config (config.train or config.finetune) and config.checkpoint
  ask for."""
  return Cadence(cfg.log_every_steps, checkpoint_cfg.every_steps, cfg.profile_steps,
                 checkpoint_cfg.max_to_keep)


@dataclasses.dataclass(frozen=True)
class StageData:
  """What a stage reads, handed to it by recipe.py: stages never open the input pipeline.

  Attributes:
    name: the dataset's name (part of the cached mode's fingerprint).
    num_classes: its number of classes.
    steps_per_epoch: the stage's global steps per epoch.
    batches: start step -> the stage's endless host batches from there.
    eval_batches: () -> the validation batches at K_train (the train stage's evaluation).
    num_pass_batches: the cached mode's passes: batches in one pass over the fine-tuning set.
    pass_batches: start batch -> that pass's host batches from there (the test transform at
      K_test, every example once, padded and masked).
  """
  name: str
  num_classes: int
  steps_per_epoch: int
  batches: Callable[[int], Iterator[dict]]
  eval_batches: Optional[Callable[[], Iterator[dict]]] = None
  num_pass_batches: int = 0
  pass_batches: Optional[Callable[[int], Iterator[dict]]] = None


@dataclasses.dataclass(frozen=True)
class Stage:
  """What makes a stage particular; run_stage does the rest.

  Attributes:
    name: its checkpoints go to WORKDIR/checkpoints/NAME, its metrics are tagged with it.
    state: its initial host state; the stage's last checkpoint, if any, replaces it.
    step_fn: jitted (state, device batch) -> (state, metrics).
    total_steps: where the stage ends.
    global_batch: images per step.
    learning_rate: the schedule, for the log lines.
    cadence: how often it logs and checkpoints.
    eval_every: steps between evaluations with evaluate_fn (0: at the end only).
    evaluate_fn: state -> metrics, or None.
  """
  name: str
  state: TrainState
  step_fn: Callable
  total_steps: int
  global_batch: int
  learning_rate: optax.Schedule
  cadence: Cadence
  eval_every: int = 0
  evaluate_fn: Optional[Callable] = None


def run_stage(stage: Stage, workdir, mesh, prepare: Callable) -> TrainState:
  """The skeleton of every stage: restores its last checkpoint; unless that is the last
  step, runs its steps from there; closes its checkpoints.

  Args:
    prepare: (restored state) -> (the state to train, its device batches from its step);
      called only when steps remain, so a finished stage reads no data.

  Returns:
    the final state.
  """
  state, manager = open_stage(stage.name, workdir, mesh, stage.state,
                              stage.cadence.max_to_keep)
  if int(state.step) < stage.total_steps:
    state, batches = prepare(state)
    state = run_steps(stage.name, workdir, state, stage.step_fn, batches, stage.total_steps,
                      stage.global_batch, stage.learning_rate, manager, stage.cadence,
                      stage.eval_every, stage.evaluate_fn)
  manager.close()
  return state


def host_batches_on(mesh, batches_from: Callable[[int], Iterator]) -> Callable:
  """run_stage's `prepare` for a stage fed by host batches: they start at the restored
  state's step and are prefetched onto the mesh."""
  return lambda state: (state, parallel.prefetch_to_devices(batches_from(int(state.step)),
                                                            mesh))


def all_finite(tree) -> bool:
  """Whether every floating-point number in `tree` is finite (one device reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


def check_finite(value: float, step: int, checkpoint_dir, what: str = 'training loss') -> None:
  if not np.isfinite(value):
    raise FloatingPointError(
        f'The {what} is {value} at step {step}. The last good checkpoint in '
        f'{checkpoint_dir} is kept; lower the learning rate or check the data.')


def run_steps(stage: str, workdir, state, step_fn: Callable, batches, total_steps: int,
              global_batch: int, learning_rate: optax.Schedule, manager, cadence: Cadence,
              eval_every: int = 0, evaluate_fn: Optional[Callable] = None):
  """The loop shared by the train and finetune stages.

  Runs step_fn from state.step to total_steps; logs every cadence.log_every steps the mean
  of the metrics since the last log;
  checkpoints every cadence.checkpoint_every steps, at the end, and when a stop is requested
  (SIGTERM, SIGINT: then raises preemption.Preempted, also when the request stops an
  evaluation); evaluates with evaluate_fn every eval_every steps and at the end. A disk that
  fills up while checkpointing raises errors.OutOfSpaceError, the earlier steps intact.

  Returns:
    the final state.
  """
  preemption.check_stop(f'the {stage} steps')
  start_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, stage)
  progress = metrics_lib.Progress(total_steps, global_batch, start_step)
  guard = preemption.PreemptionGuard()
  # A few steps after the start, once compiled: cadence.profile_steps of them.
  trace = metrics_lib.TraceWindow(writer.local_dir('profile', stage), start_step + 3,
                                  cadence.profile_steps)
  window = MetricWindow()
  full_disk = checkpoint.explain_out_of_space(manager.directory, checkpoint.tree_bytes(state),
                                              cadence.max_to_keep)
  try:
    with full_disk:  # a save's error may surface at a later save, or when waiting for it
      try:
        for step in range(start_step + 1, total_steps + 1):
          trace.before_step(step)
          with jax.profiler.StepTraceAnnotation(stage, step_num=step):  # step times in profiles
            state, step_metrics = run_step(step_fn, state, next(batches), global_batch)
          trace.after_step(step, state)
          window.add(step_metrics)
          save = step % cadence.checkpoint_every == 0 or step == total_steps
          if save or step % cadence.log_every == 0:
            summary = window.mean()
            check_finite(summary['loss'], step, manager.directory)  # never save a NaN state
          if step % cadence.log_every == 0 or step == total_steps:
            summary.update(progress.update(step), lr=float(learning_rate(step - 1)))
            writer.write(step, summary, line=progress.line(step, summary))
            window = MetricWindow()
          if evaluate_fn and eval_every and step % eval_every == 0 and step != total_steps:
            writer.write(step, evaluate_or_stop(evaluate_fn, stage, step, state, manager))
          if save:
            # The loss is that of the parameters before the step: check what is about to be saved.
            if not all_finite((state.params, state.batch_stats)):
              check_finite(float('nan'), step, manager.directory, what='model (a parameter)')
            checkpoint.save_state(manager, step, state)
            writer.sync()  # a remote workdir's metrics, up to this checkpoint
          if guard.should_stop(step):
            stop_at(stage, step, state, manager)
        if evaluate_fn and start_step < total_steps:
          logging.info('[%s] Evaluating at step %d.', stage, total_steps)
          writer.write(total_steps, evaluate_or_stop(evaluate_fn, stage, total_steps, state,
                                                     manager))
      finally:
        manager.wait_until_finished()
  finally:
    writer.close()
    guard.close()
  return state


def stop_at(stage: str, step: int, state, manager) -> NoReturn:
  """Checkpoints `step` (unless a save holds it already) and raises preemption.Preempted."""
  if step not in manager.all_steps():  # a periodic save may have just written it
    checkpoint.save_state(manager, step, state, force=True)
  manager.wait_until_finished()
  raise preemption.Preempted(stage, step)


def evaluate_or_stop(evaluate_fn: Callable, stage: str, step: int, state, manager) -> dict:
  """evaluate_fn(state); when a stop request ends the evaluation, the state it evaluated is
  checkpointed first (stop_at), so that the stop loses no step."""
  try:
    return evaluate_fn(state)
  except preemption.Stopped:
    stop_at(stage, step, state, manager)


class MetricWindow:
  """The mean of the step metrics since the last log line: a logged loss describes every
  step it stands for, not one batch. Sums stay on the device until read."""

  def __init__(self):
    self.total, self.count = None, 0

  def add(self, metrics: dict) -> None:
    self.total = metrics if self.total is None else jax.tree.map(jnp.add, self.total, metrics)
    self.count += 1

  def mean(self) -> dict:
    return {k: float(v) / self.count for k, v in jax.device_get(self.total).items()}


def run_step(step_fn: Callable, state, batch: dict, global_batch: int):
  """Calls a jitted step, turning device out-of-memory into advice on the batch size."""
  try:
    return step_fn(state, batch)
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise MemoryError(out_of_memory_advice(global_batch, jax.device_count())) from e


def out_of_memory_advice(global_batch: int, device_count: int) -> str:
  per_device = global_batch // device_count
  smaller = max(per_device // 2, 1)
  return (f'Out of device memory with {per_device} images per device (global batch '
          f'{global_batch} on {device_count} devices). Try {smaller} per device: '
          f'--config.train.batch_size={smaller * device_count} (and finetune.batch_size), '
          "or --config.model.dtype=bfloat16. The linear scaling rule adapts the learning rate.")
