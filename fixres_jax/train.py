"""Training at K_train: the model, optimiser, train_step and the 'train' stage."""

import dataclasses
import functools
import re
from typing import Any, Optional

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import evaluate
from fixres_jax import losses
from fixres_jax import mixing
from fixres_jax import models
from fixres_jax import parametric
from fixres_jax import stage as stage_lib

# The names config.train's choice fields take; config.validate accepts exactly these.
SCHEDULES = ('cosine', 'step')  # create_schedule_per_256's decays
OPTIMIZERS = ('sgd', 'lamb')  # create_optimizer's
LOSSES = ('softmax', 'bce')  # compute_loss's: cross-entropy or timm's binary cross-entropy


def create_model(config, num_classes: int, bn_group_size: Optional[int] = None):
  """config.model's network; BatchNorm groups of config.model.bn_group_size unless given."""
  m = config.model
  return models.create_model(m.name, num_classes, dtype=m.dtype,
                             zero_init_residual=m.zero_init_residual,
                             zero_init_head=m.zero_init_head,
                             stage_sizes=m.stage_sizes, block=m.block,
                             num_filters=m.num_filters, drop_path_rate=m.drop_path_rate,
                             output_stride=m.output_stride,
                             bn_group_size=m.bn_group_size if bn_group_size is None
                             else bn_group_size)


# XLA:CPU spends most of the initialisation's compilation in LLVM, optimising the random
# number generator of every variable for a program that runs once: without its expensive
# passes it compiles in half the time to the same values (tests/test_steps.py checks).
FAST_COMPILE_CPU = {'xla_llvm_disable_expensive_passes': True}


def init_variables(model, image_size: int, seed: int) -> dict:
  """Random variables for `model` (on the host; compiled ahead of time, so not under a jax
  transformation: jax.eval_shape(model.init, ...) gives their shapes)."""
  init = jax.jit(functools.partial(model.init, train=False))
  args = (jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
  options = FAST_COMPILE_CPU if jax.default_backend() == 'cpu' else None
  return dict(init.lower(*args).compile(options)(*args))


def create_schedule_per_256(cfg, steps_per_epoch: int, global_batch: int) -> optax.Schedule:
  """Linear scaling rule (cfg.base_lr per 256 images), linear warmup, then cosine or step
  decay."""
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
    raise errors.ConfigError(f'config.train.schedule={cfg.schedule!r}: use one of {SCHEDULES}.')
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
  """cfg.optimizer: 'sgd' (momentum, masked L2 weight decay added to the gradient) or 'lamb'.

  'lamb' is timm's Lamb as the ResNet-strikes-back recipes use it: the global gradient norm
  clipped to 1, Adam moments (0.9, 0.999, eps 1e-6, bias-corrected), decoupled weight decay,
  and the layer-wise trust ratio on the parameters that are decayed (timm adapts only
  those); optax's own lamb adapts every parameter.
  """
  mask = weight_decay_mask(params, tuple(cfg.no_decay))
  if cfg.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=mask),
                       optax.sgd(learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov))
  if cfg.optimizer == 'lamb':
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
                       optax.add_decayed_weights(cfg.weight_decay, mask=mask),
                       optax.masked(optax.scale_by_trust_ratio(), mask),
                       optax.scale_by_learning_rate(learning_rate))
  raise errors.ConfigError(f'config.train.optimizer={cfg.optimizer!r}: use one of {OPTIMIZERS}.')


@dataclasses.dataclass(frozen=True)
class Objective:
  """What train_step minimises: the loss on (smoothed, optionally mixed) targets.

  Attributes:
    loss: 'softmax' (cross-entropy) or 'bce' (timm's binary cross-entropy).
    label_smoothing: timm's / optax's smoothing of the one-hot targets.
    bce_threshold: 'bce' only: targets above it become 1, the others 0 (0: off).
    mix: Mixup / CutMix (mixing.MixConfig; off by default).
    seed: the mixing's randomness, folded with the step.
  """
  loss: str = 'softmax'
  label_smoothing: float = 0.0
  bce_threshold: float = 0.0
  mix: mixing.MixConfig = mixing.MixConfig()
  seed: int = 0


def compute_loss(logits: jax.Array, labels: jax.Array, lam, objective: Objective
                 ) -> jax.Array:
  """The mean loss of a batch: on integer labels, or on the targets mixed with lam."""
  num_classes = logits.shape[-1]
  if lam is None:
    targets = losses.smooth_one_hot(labels, num_classes, objective.label_smoothing)
  else:
    targets = mixing.mix_targets(labels, num_classes, lam, objective.label_smoothing)
  if objective.loss == 'bce':
    return losses.binary_cross_entropy(logits, targets, objective.bce_threshold).mean()
  return losses.soft_cross_entropy(logits, targets).mean()


def objective(config) -> Objective:
  """config.train's Objective."""
  cfg = config.train
  mix = mixing.MixConfig(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                         prob=cfg.mix_prob, switch_prob=cfg.mix_switch_prob)
  return Objective(cfg.loss, cfg.label_smoothing, cfg.bce_threshold, mix, config.seed)


def train_step(state: stage_lib.TrainState, batch: dict,
               objective: Objective = Objective(), ema_decay: float = 0.0):
  """One optimiser step on a (sharded) global batch; every BN uses and updates batch
  statistics. With state.ema, the EMA of the weights (and of the BN statistics, as timm's
  ModelEma averages the whole state) follows with ema_decay."""
  images, lam = batch['image'], None
  key = jax.random.fold_in(jax.random.key(objective.seed), state.step)
  if objective.mix.enabled:
    images, lam = mixing.mix_images(key, images, objective.mix)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': jax.random.fold_in(key, 1)})
    return compute_loss(logits, batch['label'], lam, objective), (logits,
                                                                  updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema is not None:
    current = {'params': state.params, 'batch_stats': state.batch_stats}
    state = state.replace(ema=optax.incremental_update(current, state.ema, 1.0 - ema_decay))
  top1 = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state, {'loss': loss, 'top1': top1}


def load_initial_variables(config, model, image_size: int) -> dict:
  """Random variables, or config.init_from's (with a fresh head if config.init_head is off)."""
  variables = init_variables(model, image_size, config.seed)
  if not config.init_from:
    return variables
  loaded = checkpoint.load_variables(config.init_from)
  if not config.init_head:
    loaded['params'] = dict(loaded['params'], **{model.HEAD: variables['params'][model.HEAD]})
  check_same_shapes(variables, loaded, config.init_from, model.HEAD)
  return loaded


def check_variables(model, variables: dict, source: str) -> None:
  """Checks loaded variables against the model's shapes, without allocating the model."""
  expected = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)))
  check_same_shapes(dict(expected), variables, source, model.HEAD)


def check_same_shapes(expected: dict, loaded: dict, source: str, head: str) -> None:
  """Raises a clear error when loaded variables do not fit the configured model."""
  want = traverse_util.flatten_dict(expected, sep='/')
  got = traverse_util.flatten_dict(loaded, sep='/')
  problems = [f'{k}: missing' for k in want if k not in got]
  problems += [f'{k}: unexpected' for k in got if k not in want]
  problems += [f'{k}: checkpoint {got[k].shape} vs model {want[k].shape}'
               for k in want if k in got and got[k].shape != want[k].shape]
  if problems:
    hint = ''
    if any(p.startswith(f'params/{head}/') for p in problems):
      hint = ('\nThe classifier differs (another number of classes?): set '
              'config.init_head=False to start with a new head.')
    raise errors.ConfigError(f'{source} does not fit config.model:\n  ' + '\n  '.join(problems[:20])
                     + hint)


def train_and_evaluate(config, workdir: str, data: stage_lib.StageData, mesh) -> dict:
  """The 'train' stage: trains at config.train.image_size, resuming from the last checkpoint.

  Returns:
    the final variables {'params', 'batch_stats'} (replicated on the mesh).
  """
  cfg = config.train
  model = create_model(config, data.num_classes)
  steps_per_epoch = data.steps_per_epoch
  total_steps = int(cfg.num_epochs * steps_per_epoch)
  learning_rate = create_schedule_per_256(cfg, steps_per_epoch, cfg.batch_size)
  variables = load_initial_variables(config, model, cfg.image_size)
  eval_fn = evaluate.jit_eval_step(model)
  stage = stage_lib.Stage(
      'train', stage_lib.create_train_state(
          model, variables, create_optimizer(cfg, learning_rate, variables['params']),
          ema=cfg.ema_decay > 0),
      jax.jit(functools.partial(train_step, objective=objective(config),
                                ema_decay=cfg.ema_decay), donate_argnums=0),
      total_steps, cfg.batch_size, learning_rate,
      stage_lib.stage_cadence(cfg, config.checkpoint),
      eval_every=int(cfg.eval_every_epochs * steps_per_epoch) if cfg.eval_every_epochs else 0,
      evaluate_fn=lambda state: evaluate_state(state, data.eval_batches(), mesh, eval_fn))
  def prepare(state):  # the line tests and users wait for: restored, about to step
    state, batches = stage_lib.host_batches_on(mesh, data.batches)(state)
    logging.info('Training %d steps (%d per epoch) at %d px, global batch %d, on %d devices.',
                 total_steps, steps_per_epoch, cfg.image_size, cfg.batch_size,
                 jax.device_count())
    return state, batches

  state = stage_lib.run_stage(stage, workdir, mesh, prepare)
  return stage_lib.trained_variables(state)


def evaluate_state(state, batches, mesh, eval_fn) -> dict:
  """Validation metrics of `batches` (at the training resolution), prefixed 'val_' (and
  'val_ema_' for the EMA of the weights), both models in one pass."""
  # The identity adaptation: the program the 'auto' choice and the parametric fits use.
  entries = {'val': ({'params': state.params, 'batch_stats': state.batch_stats},
                     parametric.IDENTITY)}
  if state.ema is not None:
    entries['val_ema'] = (state.ema, parametric.IDENTITY)
  totals = evaluate.evaluate(eval_fn, entries, batches, mesh)
  return {f'{name}_{k}': v for name, t in totals.items()
          for k, v in evaluate.summarize(t['plain'])[0].items()}
