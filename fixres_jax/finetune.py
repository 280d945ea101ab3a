"""FixRes fine-tuning at K_test: the second jitted step and its loop.

Everything is frozen except (a) the running statistics of the last BatchNorm before global
pooling, which normalises with batch statistics during fine-tuning, and (b) the classifier,
trained by SGD (optionally also the last BN's scale and bias: config.finetune.train_bn_affine).
Only the trainable subset is differentiated, so XLA drops the backbone's backward pass and a
step costs about one forward pass.
"""

import functools
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import optax

from fixres_jax import checkpoint
from fixres_jax import losses
from fixres_jax import models
from fixres_jax import stage as stage_lib
from fixres_jax import train


def create_schedule_per_512(cfg, steps_per_epoch: int, global_batch: int) -> optax.Schedule:
  """The official schedule: cfg.base_lr per 512 images (scaled by global_batch / 512), x0.1
  every cfg.lr_decay_epochs."""
  return optax.exponential_decay(
      cfg.base_lr * global_batch / 512, transition_steps=max(int(cfg.lr_decay_epochs *
                                                                 steps_per_epoch), 1),
      decay_rate=0.1, staircase=True)


def create_optimizer(cfg, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """The official fine-tuning optimiser: SGD with momentum, weight decay on what it trains."""
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(learning_rate, momentum=cfg.momentum))


def create_finetune_state(model, variables: dict, cfg, learning_rate, names
                          ) -> stage_lib.TrainState:
  """A TrainState holding every variable, with optimiser state for `names` only."""
  return stage_lib.create_train_state(model, variables, create_optimizer(cfg, learning_rate),
                                      trainable=names)


def finetune_step(state: stage_lib.TrainState, batch: dict, trainable: Sequence[str],
                  last_bn_path: Sequence[str]):
  """One FixRes step: SGD on the trainable subset, running statistics of the last BN.

  Every other parameter and BN statistic is returned bit-identical. state.opt_state
  belongs to the trainable subset only.
  """
  def loss_fn(params):
    logits, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                     batch['image'], finetune=True, mutable=['batch_stats'])
    loss = losses.cross_entropy(logits, batch['label']).mean()
    return loss, (logits, updates['batch_stats'])

  state, loss, (logits, new_stats) = stage_lib.update_subset(state, trainable, loss_fn)
  batch_stats = models.set_at(state.batch_stats, last_bn_path,
                              models.get_at(new_stats, last_bn_path))
  top1 = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state.replace(batch_stats=batch_stats), {'loss': loss, 'top1': top1}


def finetune(config, workdir: str, data: stage_lib.StageData, mesh, variables: dict) -> dict:
  """The 'finetune' stage (mode 'sgd'): FixRes fine-tuning at config.finetune.test_res on the
  train split.

  Args:
    variables: the trained model's {'params', 'batch_stats'}.

  Returns:
    the fine-tuned variables.
  """
  cfg = config.finetune
  model = train.create_model(config, data.num_classes, bn_group_size=cfg.bn_group_size)
  names = models.finetuned_names(model, cfg.train_bn_affine)
  steps_per_epoch = data.steps_per_epoch
  total_steps = int(cfg.num_epochs * steps_per_epoch)
  learning_rate = create_schedule_per_512(cfg, steps_per_epoch, cfg.batch_size)
  logging.info('FixRes fine-tuning %s for %d steps at %d px.', names, total_steps, cfg.test_res)
  stage = stage_lib.Stage(
      'finetune', create_finetune_state(model, checkpoint.to_host(variables), cfg,
                                        learning_rate, names),
      jax.jit(functools.partial(finetune_step, trainable=names,
                                last_bn_path=tuple(model.last_bn_path)), donate_argnums=0),
      total_steps, cfg.batch_size, learning_rate,
      stage_lib.stage_cadence(cfg, config.checkpoint))
  state = stage_lib.run_stage(stage, workdir, mesh, stage_lib.host_batches_on(mesh,
                                                                              data.batches))
  return {'params': state.params, 'batch_stats': state.batch_stats}
