"""Training at K_train: train state, train_step, eval_step and the training loop."""

import functools
import re
import time
from typing import Any, Callable, Optional

from absl import logging
from etils import epath
from flax import traverse_util
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import metrics as metrics_lib
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import preemption


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the BatchNorm running statistics."""
  batch_stats: Any = None


def create_model(config, num_classes: int, bn_group_size: Optional[int] = None):
  """config.model's network; BatchNorm groups of config.model.bn_group_size unless given."""
  m = config.model
  return models.create_model(m.name, num_classes, dtype=m.dtype,
                             zero_init_residual=m.zero_init_residual,
                             stage_sizes=m.stage_sizes, block=m.block,
                             num_filters=m.num_filters,
                             bn_group_size=m.bn_group_size if bn_group_size is None
                             else bn_group_size)


def init_variables(model, image_size: int, seed: int) -> dict:
  """Random variables for `model` (on the host)."""
  init = jax.jit(functools.partial(model.init, train=False))
  return dict(init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3))))


def create_learning_rate_fn(cfg, steps_per_epoch: int, global_batch: int) -> optax.Schedule:
  """Linear scaling rule (base_lr per 256 images), linear warmup, then cosine or step decay."""
  peak = cfg.base_lr * global_batch / 256
  warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
  total_steps = int(cfg.num_epochs * steps_per_epoch)
  if cfg.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
  elif cfg.schedule == 'step':
    boundaries = {int(e * steps_per_epoch) - warmup_steps: cfg.lr_decay_factor
                  for e in cfg.lr_decay_epochs}
    decay = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise errors.ConfigError(f"config.train.schedule={cfg.schedule!r}: use 'cosine' or 'step'.")
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params: Any, exclude: tuple) -> Any:
  """True for parameters that get weight decay: those whose path matches no `exclude` regex."""
  patterns = [re.compile(p) for p in exclude]
  flat = traverse_util.flatten_dict(params, sep='/')
  return traverse_util.unflatten_dict(
      {k: not any(p.search(k) for p in patterns) for k in flat}, sep='/')


def create_optimizer(cfg, learning_rate: optax.Schedule, params: Any
                     ) -> optax.GradientTransformation:
  """SGD with momentum and masked (decoupled from the loss) L2 weight decay."""
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay,
                                mask=weight_decay_mask(params, tuple(cfg.no_decay))),
      optax.sgd(learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  targets = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict, label_smoothing: float = 0.0):
  """One SGD step on a (sharded) global batch; every BN uses and updates batch statistics."""
  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  top1 = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state, {'loss': loss, 'top1': top1}


def eval_step(apply_fn: Callable, variables: dict, batch: dict) -> dict:
  """Masked metric sums over a global batch, in inference mode.

  Returns sums (not means) so that padded examples (mask 0) count for nothing and partial
  results add up exactly: correct top-1/top-5, loss, number of images, and the fraction of
  exactly-zero pooled features (after the final ReLU and global average pooling).
  """
  logits, features = apply_fn(variables, batch['image'], train=False, return_features=True)
  mask, labels = batch['mask'], batch['label']
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  correct5 = jnp.any(top5 == labels[:, None], axis=-1)
  return {
      'correct1': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      'correct5': jnp.sum(correct5 * mask),
      'loss': jnp.sum(cross_entropy(logits, labels) * mask),
      'zero_fraction': jnp.sum(jnp.mean(features == 0, axis=-1) * mask),
      'count': jnp.sum(mask),
  }


def evaluate(apply_fn: Callable, variables: dict, batches, mesh, eval_fn=None) -> dict:
  """Runs eval_step over every batch and returns top1, top5, loss, zero_fraction, num_images."""
  eval_fn = eval_fn or jax.jit(functools.partial(eval_step, apply_fn))
  totals = None
  for batch in parallel.prefetch_to_devices(batches, mesh):
    sums = eval_fn(variables, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  count = totals['count']
  return {'top1': totals['correct1'] / count, 'top5': totals['correct5'] / count,
          'loss': totals['loss'] / count, 'zero_fraction': totals['zero_fraction'] / count,
          'num_images': int(round(count))}


def load_initial_variables(config, model, image_size: int) -> dict:
  """Random variables, or config.init_from's (with a fresh head if config.init_head is off)."""
  variables = init_variables(model, image_size, config.seed)
  if not config.init_from:
    return variables
  loaded = checkpoint.load_variables(config.init_from)
  if not config.init_head:
    loaded['params'] = dict(loaded['params'], fc=variables['params']['fc'])
  check_same_shapes(variables, loaded, config.init_from)
  return loaded


def check_variables(model, variables: dict, source: str) -> None:
  """Checks loaded variables against the model's shapes, without allocating the model."""
  expected = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)))
  check_same_shapes(dict(expected), variables, source)


def check_same_shapes(expected: dict, loaded: dict, source: str) -> None:
  """Raises a clear error when loaded variables do not fit the configured model."""
  want = traverse_util.flatten_dict(expected, sep='/')
  got = traverse_util.flatten_dict(loaded, sep='/')
  problems = [f'{k}: missing' for k in want if k not in got]
  problems += [f'{k}: unexpected' for k in got if k not in want]
  problems += [f'{k}: checkpoint {got[k].shape} vs model {want[k].shape}'
               for k in want if k in got and got[k].shape != want[k].shape]
  if problems:
    hint = ''
    if any(p.startswith('params/fc/') for p in problems):
      hint = ('\nThe classifier differs (another number of classes?): set '
              'config.init_head=False to start with a new head.')
    raise errors.ConfigError(f'{source} does not fit config.model:\n  ' + '\n  '.join(problems[:20])
                     + hint)


def train_and_evaluate(config, workdir: str, dataset, mesh) -> dict:
  """The 'train' stage: trains at config.train.image_size, resuming from the last checkpoint.

  Returns:
    the final variables {'params', 'batch_stats'} (replicated on the mesh).
  """
  from fixres_jax.data import pipeline  # only the loop, not the steps, needs TensorFlow
  cfg = config.train
  model = create_model(config, dataset.num_classes)
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config.data.train_split, cfg.batch_size,
                                             config.data.num_shards, config.data.ra_len_factor,
                                             config.data.ra_repetitions)
  total_steps = int(cfg.num_epochs * steps_per_epoch)
  learning_rate = create_learning_rate_fn(cfg, steps_per_epoch, cfg.batch_size)
  variables = load_initial_variables(config, model, cfg.image_size)
  tx = create_optimizer(cfg, learning_rate, variables['params'])
  state = TrainState.create(apply_fn=model.apply, params=variables['params'],
                            batch_stats=variables['batch_stats'], tx=tx)
  state = parallel.replicate(state, mesh)

  manager = checkpoint.create_manager(epath.Path(workdir) / 'checkpoints' / 'train',
                                      max_to_keep=config.checkpoint.max_to_keep)
  state = checkpoint.restore_latest(manager, state)
  start_step = int(state.step)

  p_train_step = jax.jit(functools.partial(train_step, label_smoothing=cfg.label_smoothing),
                         donate_argnums=0)
  batches = parallel.prefetch_to_devices(pipeline.train_batches(
      dataset, config.data.train_split, cfg.image_size, cfg.batch_size, config.seed,
      start_step=start_step, crop=config.data.crop, **pipeline.train_options(config),
      **recipe_options(config)), mesh)
  logging.info('Training %d steps (%d per epoch) at %d px, global batch %d, on %d devices.',
               total_steps, steps_per_epoch, cfg.image_size, cfg.batch_size, jax.device_count())
  eval_every = int(cfg.eval_every_epochs * steps_per_epoch) if cfg.eval_every_epochs else 0
  state = run_steps(
      'train', config, workdir, state, p_train_step, batches, total_steps, cfg.batch_size,
      learning_rate, manager, eval_every=eval_every,
      evaluate_fn=lambda state: evaluate_state(config, state, dataset, mesh))
  manager.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


def recipe_options(config) -> dict:
  """train_batches' options of the train stage only: jitter, decoding, repeated augmentation
  with the copies of an image spread over the BatchNorm groups."""
  data, group_size = config.data, config.model.bn_group_size
  num_shards = data.num_shards or jax.process_count()
  groups = config.train.batch_size // group_size // num_shards if group_size else 1
  return dict(color_jitter=data.color_jitter, decode=data.train_decode,
              repetitions=data.ra_repetitions, len_factor=data.ra_len_factor,
              groups=max(groups, 1))


def evaluate_state(config, state: TrainState, dataset, mesh) -> dict:
  """Validation metrics at the training resolution, prefixed 'val_'."""
  from fixres_jax.data import pipeline
  batches = pipeline.eval_batches(dataset, config.data.eval_split, config.train.image_size,
                                  config.sweep.batch_size, **pipeline.eval_options(config))
  result = evaluate(state.apply_fn, {'params': state.params, 'batch_stats': state.batch_stats},
                    batches, mesh)
  return {f'val_{k}': v for k, v in result.items()}


def all_finite(tree) -> bool:
  """Whether every floating-point number in `tree` is finite (one device reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


def check_finite(value: float, step: int, checkpoint_dir, what: str = 'training loss') -> None:
  if not np.isfinite(value):
    raise FloatingPointError(
        f'The {what} is {value} at step {step}. The last good checkpoint in '
        f'{checkpoint_dir} is kept; lower the learning rate or check the data.')


def run_steps(stage: str, config, workdir, state, step_fn: Callable, batches, total_steps: int,
              global_batch: int, learning_rate: optax.Schedule, manager,
              eval_every: int = 0, evaluate_fn: Optional[Callable] = None):
  """The loop shared by the train and finetune stages.

  Runs step_fn from state.step to total_steps; logs every config.train.log_every_steps;
  checkpoints every config.checkpoint.every_steps, at the end, and on SIGTERM (then raises
  preemption.Preempted); evaluates with evaluate_fn every eval_every steps and at the end.

  Returns:
    the final state.
  """
  start_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, stage)
  progress = metrics_lib.Progress(total_steps, global_batch, start_step)
  guard = preemption.PreemptionGuard()
  # A few steps after the start, once compiled: config.train.profile_steps of them.
  trace = metrics_lib.TraceWindow(writer.local_dir('profile', stage), start_step + 3,
                                  config.train.profile_steps)
  try:
    for step in range(start_step + 1, total_steps + 1):
      trace.before_step(step)
      with jax.profiler.StepTraceAnnotation(stage, step_num=step):  # step times in profiles
        state, step_metrics = run_step(step_fn, state, next(batches), global_batch)
      trace.after_step(step, state)
      save = step % config.checkpoint.every_steps == 0 or step == total_steps
      if save or step % config.train.log_every_steps == 0:
        summary = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        check_finite(summary['loss'], step, manager.directory)  # never save a NaN state
      if step % config.train.log_every_steps == 0 or step == total_steps:
        summary.update(progress.update(step), lr=float(learning_rate(step - 1)))
        writer.write(step, summary, line=progress.line(step, summary))
      if evaluate_fn and eval_every and step % eval_every == 0 and step != total_steps:
        writer.write(step, evaluate_fn(state))
      if save:
        # The loss is that of the parameters before the step: check what is about to be saved.
        if not all_finite((state.params, state.batch_stats)):
          check_finite(float('nan'), step, manager.directory, what='model (a parameter)')
        checkpoint.save_state(manager, step, state)
        writer.sync()  # a remote workdir's metrics, up to this checkpoint
      if guard.should_stop(step):
        if step not in manager.all_steps():  # a periodic save may have just written it
          checkpoint.save_state(manager, step, state, force=True)
        manager.wait_until_finished()
        raise preemption.Preempted(stage, step)
    if evaluate_fn and start_step < total_steps:
      writer.write(total_steps, evaluate_fn(state))
  finally:
    manager.wait_until_finished()
    writer.close()
    guard.close()
  return state


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
