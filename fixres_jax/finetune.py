"""FixRes fine-tuning at K_test: the second jitted step and its loop.

Everything is frozen except (a) the running statistics of the last BatchNorm before global
pooling, which normalises with batch statistics during fine-tuning, and (b) the classifier,
trained by SGD (optionally also the last BN's scale and bias: config.finetune.train_bn_affine).
Only the trainable subset is differentiated, so XLA drops the backbone's backward pass and a
step costs about one forward pass.
"""

import functools
from typing import Any, Sequence, Tuple

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from fixres_jax import checkpoint
from fixres_jax import parallel
from fixres_jax import train


def trainable_names(last_bn_path: Tuple[str, str], train_bn_affine: bool) -> Tuple[str, ...]:
  """'/'-joined names of the parameters fine-tuning trains."""
  names = ('fc/kernel', 'fc/bias')
  if train_bn_affine:
    names += tuple('/'.join(last_bn_path + (p,)) for p in ('scale', 'bias'))
  return names


def split_params(params: Any, names: Sequence[str]) -> Tuple[dict, dict]:
  """The whole tree flattened ({path tuple: array}) and the trainable subset (nested)."""
  flat = traverse_util.flatten_dict(params)
  keys = [tuple(name.split('/')) for name in names]
  return flat, traverse_util.unflatten_dict({k: flat[k] for k in keys})


def merge_params(flat: dict, trainable: dict) -> dict:
  """The whole tree with the trainable subset replaced."""
  return traverse_util.unflatten_dict({**flat, **traverse_util.flatten_dict(trainable)})


def create_learning_rate_fn(cfg, steps_per_epoch: int, global_batch: int) -> optax.Schedule:
  """The official schedule: lr scaled by global_batch / 512, x0.1 every lr_decay_epochs."""
  return optax.exponential_decay(
      cfg.base_lr * global_batch / 512, transition_steps=max(int(cfg.lr_decay_epochs *
                                                                 steps_per_epoch), 1),
      decay_rate=0.1, staircase=True)


def finetune_step(state: train.TrainState, batch: dict, trainable: Sequence[str],
                  last_bn_path: Tuple[str, str]):
  """One FixRes step: SGD on the trainable subset, running statistics of the last BN.

  Every other parameter and BN statistic is returned bit-identical. state.opt_state
  belongs to the trainable subset only.
  """
  flat, params = split_params(state.params, trainable)

  def loss_fn(params):
    full = merge_params(flat, params)
    logits, updates = state.apply_fn({'params': full, 'batch_stats': state.batch_stats},
                                     batch['image'], finetune=True, mutable=['batch_stats'])
    loss = train.cross_entropy(logits, batch['label']).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = state.tx.update(grads, state.opt_state, params)
  params = optax.apply_updates(params, updates)
  block, bn = last_bn_path
  batch_stats = dict(state.batch_stats)
  batch_stats[block] = dict(batch_stats[block], **{bn: new_stats[block][bn]})
  state = state.replace(step=state.step + 1, opt_state=opt_state, batch_stats=batch_stats,
                        params=merge_params(flat, params))
  top1 = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state, {'loss': loss, 'top1': top1}


def create_finetune_state(model, variables: dict, cfg, learning_rate, names) -> train.TrainState:
  """A TrainState holding every variable, with optimiser state for `names` only."""
  tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                   optax.sgd(learning_rate, momentum=cfg.momentum))
  _, params = split_params(variables['params'], names)
  return train.TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply,
                          params=variables['params'], batch_stats=variables['batch_stats'],
                          tx=tx, opt_state=tx.init(params))


def finetune(config, workdir: str, dataset, mesh, variables: dict) -> dict:
  """The 'finetune' stage: FixRes fine-tuning at config.finetune.test_res on the train split.

  Args:
    variables: the trained model's {'params', 'batch_stats'}.

  Returns:
    the fine-tuned variables.
  """
  if config.finetune.mode == 'cached':
    from fixres_jax import cached_finetune  # it builds on this module
    return cached_finetune.finetune_cached(config, workdir, dataset, mesh, variables)
  from fixres_jax.data import pipeline  # only the loop, not the step, needs TensorFlow
  cfg = config.finetune
  model = train.create_model(config, dataset.num_classes, bn_group_size=cfg.bn_group_size)
  names = trainable_names(model.last_bn_path, cfg.train_bn_affine)
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config.data.train_split, cfg.batch_size,
                                             config.data.num_shards)
  total_steps = int(cfg.num_epochs * steps_per_epoch)
  learning_rate = create_learning_rate_fn(cfg, steps_per_epoch, cfg.batch_size)
  state = create_finetune_state(model, checkpoint.to_host(variables), cfg, learning_rate, names)
  state = parallel.replicate(state, mesh)

  manager = checkpoint.create_manager(epath.Path(workdir) / 'checkpoints' / 'finetune',
                                      max_to_keep=config.checkpoint.max_to_keep)
  state = checkpoint.restore_latest(manager, state)
  start_step = int(state.step)

  step_fn = jax.jit(functools.partial(finetune_step, trainable=names,
                                      last_bn_path=model.last_bn_path), donate_argnums=0)
  batches = parallel.prefetch_to_devices(pipeline.train_batches(
      dataset, config.data.train_split, cfg.test_res, cfg.batch_size, config.seed + 1,
      start_step=start_step, transform='finetune', crop_pct=config.data.crop_pct,
      augment=cfg.augment, decode=config.data.decode, resize=config.data.test_resize,
      **pipeline.train_options(config)), mesh)
  logging.info('FixRes fine-tuning %s for %d steps at %d px.', names, total_steps, cfg.test_res)
  state = train.run_steps('finetune', config, workdir, state, step_fn, batches, total_steps,
                          cfg.batch_size, learning_rate, manager)
  manager.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}
