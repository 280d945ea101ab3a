"""Two-pass cached FixRes fine-tuning (config.finetune.mode='cached').

Everything below the last BatchNorm is frozen, and with a deterministic fine-tuning transform
(the test transform at K_test, config.finetune.augment 'none', or it and its mirror image,
'flip') the frozen backbone computes the same tensors every epoch. So instead of num_epochs
forward passes over the fine-tuning set (the training split at K_test):

  pass 1  one streaming pass that stops at the last BN's input: its exact population mean and
          (biased) variance over every example and view. Per-batch masked moments are reduced
          over the global batch on the devices, then merged in float64 on the host (Chan's
          parallel algorithm). They become the last BN's running statistics.
  pass 2  one inference pass with those statistics: the pooled features of every example and
          view, kept per process (config.finetune.cache_dtype) in memory, or in a file under
          config.finetune.cache_dir when larger than config.finetune.cache_in_memory_mb.
  head    the classifier trained on the stored features for num_epochs, with the 'sgd' mode's
          optimiser, schedule, batch size and steps; every epoch shows each image once, in a
          random view (as the 'sgd' mode's random flip does). It costs almost nothing.

The result is the 'sgd' mode's TrainState (every variable, the population statistics in the
last BN, momentum for the head), written by the same CheckpointManager, so every other stage
uses it unchanged. One difference is deliberate: the head learns on features normalised with
the statistics it is tested with, rather than with each batch's.

Resuming: pass 1 saves its running moments (WORKDIR/feature_cache/moments_pN.json) and pass 2
flushes an on-disk cache with a progress marker every config.checkpoint.every_steps batches
(an in-memory cache is recomputed); a SIGTERM or SIGINT stops either pass at the next batch
with its progress saved. The head phase, seconds long, checkpoints at its end and
on SIGTERM only.

fit_adapter runs the same passes and head at another K_test without a stage checkpoint: the
adapter bank (config.finetune.adapter_resolutions, adapters.py) keeps only its result.
"""

import functools
import hashlib
import json
import os
import time
from typing import Callable, Iterator, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from fixres_jax import augmentations
from fixres_jax import checkpoint
from fixres_jax import finetune
from fixres_jax import losses
from fixres_jax import metrics as metrics_lib
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import preemption
from fixres_jax import stage as stage_lib
from fixres_jax import train

CACHE_DIR = 'feature_cache'  # under WORKDIR: pass 1's moments, and the features by default
CACHE_DTYPES = ('bfloat16', 'float32')  # config.finetune.cache_dtype: half the bytes, or exact


def map_views(fn: Callable, images: jax.Array, num_views: int) -> jax.Array:
  """[views, ...]: fn of the batch as the test transform gives it, and mirrored.

  One view at a time (lax.map), so the activations of only one are alive at once.
  """
  views = jnp.stack([images, jnp.flip(images, axis=2)][:num_views])  # NHWC: width is axis 2
  return jax.lax.map(fn, views)


def last_bn_input(model, variables: dict, images: jax.Array) -> jax.Array:
  """The last BN's input: the output of the convolution before it, float32 [B, H, W, C].

  Only that tensor is returned, so XLA drops the rest of the network (the last block's
  residual branch, pooling and the classifier).
  """
  path = tuple(model.last_conv_path)
  _, state = model.apply(
      variables, images, capture_intermediates=lambda m, method: (
          m.path == path and method == '__call__'), mutable=['intermediates'])
  return models.get_at(state['intermediates'], path)['__call__'][0].astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('model', 'num_views'))
def batch_moments(model, variables: dict, batch: dict, num_views: int) -> dict:
  """Per-channel count, mean and sum of squared deviations (M2) of the last BN's input.

  Over every view, position and unmasked example of a global batch: jit over the mesh makes
  these sums global (every device, every process), so no further reduction is needed.
  """
  x = map_views(functools.partial(last_bn_input, model, variables), batch['image'], num_views)
  weights = batch['mask'][None, :, None, None, None]
  _, _, height, width, _ = x.shape
  count = jnp.sum(batch['mask']).astype(jnp.int32) * num_views * height * width
  mean = jnp.sum(x * weights, axis=(0, 1, 2, 3)) / jnp.maximum(count, 1)
  m2 = jnp.sum(weights * jnp.square(x - mean), axis=(0, 1, 2, 3))
  return {'count': count, 'mean': mean, 'm2': m2}


def combine_moments(a: dict, b: dict) -> dict:
  """Chan et al.'s merge of two sets of (count, mean, M2), in float64."""
  count = float(a['count']) + float(b['count'])
  if count == 0:
    return dict(a)
  mean_a, mean_b = np.asarray(a['mean'], np.float64), np.asarray(b['mean'], np.float64)
  delta = mean_b - mean_a
  return {'count': count,
          'mean': mean_a + delta * (float(b['count']) / count),
          'm2': (np.asarray(a['m2'], np.float64) + np.asarray(b['m2'], np.float64)
                 + np.square(delta) * (float(a['count']) * float(b['count']) / count))}


def set_population_stats(variables: dict, last_bn_path, mean, var) -> dict:
  """A copy of the variables whose last BN has running statistics (mean, var)."""
  stats = {'mean': np.asarray(mean, np.float32), 'var': np.asarray(var, np.float32)}
  return {**variables,
          'batch_stats': models.set_at(variables['batch_stats'], last_bn_path, stats)}


@functools.partial(jax.jit, static_argnames=('model', 'num_views', 'dtype'))
def batch_features(model, variables: dict, batch: dict, num_views: int, dtype) -> dict:
  """Pooled features [B, views, F] in inference mode, with each example's label and mask."""
  features = map_views(lambda x: model.apply(variables, x, return_features=True)[1],
                       batch['image'], num_views)
  return {'feature': jnp.swapaxes(features, 0, 1).astype(dtype), 'label': batch['label'],
          'mask': batch['mask']}


@functools.partial(jax.jit, static_argnames=('model', 'names'), donate_argnums=0)
def head_step(state: stage_lib.TrainState, chunk_and_index: tuple, model, names):
  """One SGD step of the classifier on a global batch of cached features.

  Args:
    chunk_and_index: from head_batches: the batch is chunk[index].

  The whole TrainState goes in and out (as in finetune.finetune_step), so the checkpoint has
  the 'sgd' mode's form; with the state donated, the frozen variables are not copied.
  """
  chunk, index = chunk_and_index
  batch = jax.tree.map(lambda x: x[index], chunk)

  def loss_fn(params):
    logits = models.apply_head(model, params[model.HEAD], batch['feature'])
    return losses.cross_entropy(logits, batch['label']).mean(), logits

  state, loss, logits = stage_lib.update_subset(state, names, loss_fn)
  return state, {'loss': loss, 'top1': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}


def fingerprint(variables: dict, **settings) -> str:
  """Identifies what a cache was computed from: the model's variables and the settings."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for leaf in jax.tree.leaves(variables):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def agree_on_start(done: int, cumulative: bool) -> int:
  """The batch every process resumes a pass from (they must run the same batches).

  A kill between two processes' progress saves leaves them at different batches. Re-doing
  features is harmless (resume from the earliest); merged moments cannot be undone (restart).
  """
  everyone = np.asarray(multihost_utils.process_allgather(np.int64(done))).ravel()
  if everyone.min() == everyone.max():
    return done
  return 0 if cumulative else int(everyone.min())


def _read_json(path: epath.Path, key: str) -> Optional[dict]:
  """The saved progress at `path`, if it exists and was made from the same inputs."""
  if not path.exists():
    return None
  saved = json.loads(path.read_text())
  if saved.get('key') != key:
    logging.info('Ignoring %s: it was computed from another model or configuration.', path)
    return None
  return saved


def _write_json(path: epath.Path, record: dict) -> None:
  """Writes atomically: a kill leaves the previous version, never half a file."""
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_text(json.dumps(record))
  tmp.replace(path)


def population_moments(config, workdir, data, mesh, model, variables: dict,
                       on_batch: Optional[Callable] = None) -> dict:
  """Pass 1: the moments of the last BN's input over the fine-tuning set, resumable.

  The running moments are saved every config.checkpoint.every_steps batches and at the end
  to WORKDIR/feature_cache/moments_pN.json, with a fingerprint of the inputs (a file made
  from another model or configuration is ignored).

  Args:
    variables: the trained model's (host) variables.
    on_batch: called as on_batch('statistics', batches done) (tests interrupt with it).

  Returns:
    {'count', 'mean', 'm2'} per channel in float64; the variance is m2 / count.
  """
  num_batches, batches_fn = data.num_pass_batches, pass_batches_on(data, mesh)
  path = epath.Path(workdir) / CACHE_DIR / f'moments_p{jax.process_index()}.json'
  path.parent.mkdir(parents=True, exist_ok=True)
  key = cache_key(config, data, variables)
  saved = _read_json(path, key)
  start = agree_on_start(saved['batches_done'] if saved else 0, cumulative=True)
  moments = ({k: np.asarray(saved[k], np.float64) for k in ('count', 'mean', 'm2')}
             if saved and start else {'count': 0.0, 'mean': 0.0, 'm2': 0.0})
  if start:
    logging.info('Pass 1 resumes at batch %d of %d from %s.', start, num_batches, path)
  # The variables are an argument, not a closure: jit would embed them as constants.
  moments_fn = functools.partial(batch_moments, model, parallel.replicate(variables, mesh),
                                 num_views=augmentations.cached_views(config.finetune.augment))
  save_every = config.checkpoint.every_steps
  def save(batches_done):
    _write_json(path, {'key': key, 'batches_done': batches_done,
                       'count': float(moments['count']),
                       'mean': moments['mean'].tolist(), 'm2': moments['m2'].tolist()})

  for i, batch in enumerate(batches_fn(start), start=start + 1):
    moments = combine_moments(moments, jax.device_get(moments_fn(batch)))
    if i % save_every == 0 or i == num_batches:
      save(i)
    if on_batch:
      on_batch('statistics', i)
    stop_if_requested('pass 1 (statistics)', i, num_batches, save)
  return moments


def stop_if_requested(name: str, batches_done: int, num_batches: int,
                      save: Callable[[int], None]) -> None:
  """After a pass's batch: on SIGTERM/SIGINT, saves the pass's progress and raises Stopped.

  A pass over a large fine-tuning set runs for many minutes, longer than a scheduler's grace
  period: it stops at the next batch, not at its end. Call it on every process after every
  batch (with several processes it is a preemption sync point).
  """
  if batches_done < num_batches and preemption.stop_requested():
    save(batches_done)
    raise preemption.Stopped(
        f'Stopped by signal {preemption.STOP.signum} in the cached fine-tuning\'s {name} '
        f'after batch {batches_done} of {num_batches}; its progress is saved. Re-run the same '
        'command to resume.')


class FeatureCache:
  """Per-process pooled features [rows, views, F] and labels [rows], in memory or on disk.

  Rows are the padded eval batches of this process in order, so the real examples are the
  first `num_valid` rows. On disk, the arrays are raw files (np.memmap: .npy cannot hold
  bfloat16) described by a JSON marker that also records how many batches are written.
  """

  def __init__(self, shape, dtype, directory: Optional[str], key: str):
    self.shape, self.dtype, self.key = tuple(shape), np.dtype(dtype), key
    self.directory = directory
    self.batches_done, self.num_valid = 0, 0
    if directory is None:
      self.features = np.zeros(self.shape, self.dtype)
      self.labels = np.zeros(self.shape[:1], np.int32)
      return
    os.makedirs(directory, exist_ok=True)
    saved = _read_json(epath.Path(self.marker), key)
    if saved and tuple(saved['shape']) == self.shape and saved['dtype'] == self.dtype.name:
      self.batches_done, self.num_valid = saved['batches_done'], saved['num_valid']
    mode = 'r+' if self.batches_done else 'w+'
    self.features = np.memmap(self._file('features'), self.dtype, mode, shape=self.shape)
    self.labels = np.memmap(self._file('labels'), np.int32, mode, shape=self.shape[:1])

  @property
  def marker(self) -> str:
    return self._file('progress', '.json')

  def _file(self, name: str, suffix: str = '.bin') -> str:
    return os.path.join(self.directory,
                        f'{name}_p{jax.process_index()}of{jax.process_count()}{suffix}')

  @property
  def nbytes(self) -> int:
    return self.features.nbytes + self.labels.nbytes

  def write(self, batch_index: int, local: dict) -> None:
    """Stores this process's rows of batch `batch_index` (0-based)."""
    rows = slice(batch_index * len(local['label']), (batch_index + 1) * len(local['label']))
    self.features[rows] = local['feature']
    self.labels[rows] = local['label']
    # Padding only ever follows the real examples, so counting masks finds their end.
    self.num_valid = max(self.num_valid, rows.start + int(np.sum(local['mask'])))

  def save_progress(self, batches_done: int) -> None:
    """Flushes the files, then records them as written up to `batches_done` batches."""
    self.batches_done = batches_done
    if self.directory is None:
      return
    self.features.flush()
    self.labels.flush()
    _write_json(epath.Path(self.marker), {
        'key': self.key, 'batches_done': batches_done, 'num_valid': self.num_valid,
        'shape': list(self.shape), 'dtype': self.dtype.name})

  def delete(self) -> None:
    """Frees the memory or removes the files (the checkpoint holds the result)."""
    self.features = self.labels = None
    if self.directory is not None:
      for path in (self._file('features'), self._file('labels'), self.marker):
        if os.path.exists(path):
          os.remove(path)


def cache_features(config, workdir, data, mesh, model, variables: dict,
                   on_batch: Optional[Callable] = None) -> FeatureCache:
  """Pass 2: every example's pooled features (every view) with `variables`, resumable.

  A cache on disk is flushed with a progress marker every config.checkpoint.every_steps
  batches, and an interrupted pass resumes from it; one in memory is recomputed.

  Args:
    variables: host variables whose last BN holds the population statistics.
    on_batch: called as on_batch('features', batches done) (tests interrupt with it).
  """
  num_batches, batches_fn = data.num_pass_batches, pass_batches_on(data, mesh)
  num_views = augmentations.cached_views(config.finetune.augment)
  local_batch = parallel.check_batch_size(config.finetune.batch_size, 'finetune.batch_size')
  cache = create_cache(config, workdir, model, num_batches * local_batch, num_views,
                       cache_key(config, data, variables))
  start = agree_on_start(cache.batches_done, cumulative=False)
  if start:
    logging.info('Pass 2 resumes at batch %d of %d in %s.', start, num_batches,
                 cache.directory)
  features_fn = functools.partial(batch_features, model, parallel.replicate(variables, mesh),
                                  num_views=num_views, dtype=cache.dtype)
  spec = jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  for i, batch in enumerate(batches_fn(start), start=start):
    local = multihost_utils.global_array_to_host_local_array(features_fn(batch), mesh, spec)
    cache.write(i, jax.tree.map(np.asarray, local))
    if (i + 1) % config.checkpoint.every_steps == 0 or i + 1 == num_batches:
      cache.save_progress(i + 1)
    if on_batch:
      on_batch('features', i + 1)
    stop_if_requested('pass 2 (features)', i + 1, num_batches, cache.save_progress)
  return cache


def pass_batches_on(data, mesh) -> Callable:
  """start batch -> the pass's global batches from there, prefetched onto the mesh."""
  return lambda start_batch: parallel.prefetch_to_devices(data.pass_batches(start_batch), mesh)


def cache_key(config, data, variables: dict) -> str:
  """Fingerprint of everything a pass's result depends on."""
  cfg = config.finetune
  return fingerprint(variables, data=data.name, split=config.data.train_split,
                     test_res=cfg.test_res, batch_size=cfg.batch_size, augment=cfg.augment,
                     cache_dtype=cfg.cache_dtype, data_config=config.data.to_dict(),
                     model=config.model.to_dict(), processes=jax.process_count(),
                     process=jax.process_index())


def head_batches(cache: FeatureCache, local_batch: int, steps_per_epoch: int, seed: int,
                 start_step: int, mesh, chunk_steps: int = 256) -> Iterator[tuple]:
  """Endless (chunk, index) pairs: head_step's batches, shuffled per epoch from the seed.

  Each epoch is a permutation of this process's images, each in a random view. Batches go to
  the devices chunk_steps at a time, as chunk = {'feature': [steps, global batch, F],
  'label'} sharded on the batch axis; head_step takes batch `index` of the chunk, so a step
  costs one dispatch rather than a host-to-device copy.
  """
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None,
                                                                         parallel.DATA_AXIS))
  epoch, first = divmod(start_step, steps_per_epoch)
  while True:
    rng = np.random.default_rng([seed, epoch, jax.process_index()])
    # np.resize wraps around when skipped images left fewer than an epoch's worth.
    order = np.resize(rng.permutation(cache.num_valid), steps_per_epoch * local_batch)
    views = rng.integers(cache.shape[1], size=order.size)
    for begin in range(first, steps_per_epoch, chunk_steps):
      steps = min(chunk_steps, steps_per_epoch - begin)
      part = slice(begin * local_batch, (begin + steps) * local_batch)
      local = {'feature': np.asarray(cache.features[order[part], views[part]]),
               'label': np.asarray(cache.labels[order[part]])}
      chunk = jax.tree.map(lambda x: jax.make_array_from_process_local_data(
          sharding, x.reshape(steps, local_batch, *x.shape[1:])), local)
      for index in range(steps):
        yield chunk, index
    epoch, first = epoch + 1, 0


def cache_location(config, workdir) -> str:
  """The local directory for features larger than config.finetune.cache_in_memory_mb."""
  directory = config.finetune.cache_dir or os.path.join(str(workdir), CACHE_DIR)
  if '://' in directory:
    raise ValueError(
        f'The feature cache exceeds config.finetune.cache_in_memory_mb and cannot be memory-'
        f'mapped at {directory}: set config.finetune.cache_dir to a local disk, or raise '
        'cache_in_memory_mb.')
  return directory


def finetune_cached(config, workdir: str, data: stage_lib.StageData, mesh, variables: dict,
                    on_batch: Optional[Callable] = None) -> dict:
  """The 'finetune' stage with config.finetune.mode='cached'.

  Args:
    variables: the trained model's {'params', 'batch_stats'}.
    on_batch: optional hook called as on_batch(pass name, batches done) after each batch of
      passes 1 ('statistics') and 2 ('features'); tests use it to interrupt a pass.

  Returns:
    the fine-tuned variables.
  """
  stage, prepare, work = create_head_stage(config, workdir, data, mesh, variables, on_batch)
  state = stage_lib.run_stage(stage, workdir, mesh, prepare)
  if 'cache' in work:
    record_cache_work(workdir, work, stage.total_steps, 'finetune_cache')
  return {'params': state.params, 'batch_stats': state.batch_stats}


def fit_adapter(config, workdir: str, data: stage_lib.StageData, mesh, variables: dict,
                on_batch: Optional[Callable] = None) -> dict:
  """What finetune_cached makes at config.finetune.test_res, without its checkpoints.

  The adapter bank's fine-tuning (adapters.py): passes 1 and 2 save and resume as the
  stage's do; the head, seconds long, is trained whole, from the same state, batches and
  steps as run_stage would run.

  Returns:
    the fine-tuned variables.
  """
  stage, prepare, work = create_head_stage(config, workdir, data, mesh, variables, on_batch)
  state, batches = prepare(parallel.replicate(stage.state, mesh))
  for _ in range(stage.total_steps):
    state, _ = stage_lib.run_step(stage.step_fn, state, next(batches), stage.global_batch)
  record_cache_work(workdir, work, stage.total_steps,
                    f'adapter_{config.finetune.test_res}_cache')
  return {'params': state.params, 'batch_stats': state.batch_stats}


def create_head_stage(config, workdir: str, data: stage_lib.StageData, mesh, variables: dict,
                      on_batch: Optional[Callable] = None) -> tuple:
  """The cached mode's stage: the head trained on features the passes store.

  Returns:
    (the stage_lib.Stage; run_stage's `prepare`, which runs passes 1 and 2 then returns the
     head's batches; a dict where `prepare` leaves the cache and the passes' timings).
  """
  cfg = config.finetune
  if cfg.train_bn_affine:
    raise ValueError("config.finetune.mode='cached' trains the classifier only: set "
                     "config.finetune.train_bn_affine=False, or use mode='sgd'.")
  model = train.create_model(config, data.num_classes)
  names = models.finetuned_names(model, train_bn_affine=False)
  steps_per_epoch = data.steps_per_epoch
  total_steps = int(cfg.num_epochs * steps_per_epoch)
  learning_rate = finetune.create_schedule_per_512(cfg, steps_per_epoch, cfg.batch_size)
  variables = checkpoint.to_host(variables)
  work = {}  # what the passes made: the cache and their timings

  def run_passes_then_batches(state):
    """Passes 1 and 2 (only when head steps remain), then the head's batches of the cache."""
    adapted, work['cache'], work['timings'] = run_passes(config, workdir, data, mesh, model,
                                                         variables, on_batch)
    # The last BN's population statistics: a restored state holds the same ones already.
    state = state.replace(batch_stats=parallel.replicate(adapted['batch_stats'], mesh))
    local_batch = parallel.check_batch_size(cfg.batch_size, 'finetune.batch_size')
    logging.info('Training %s on cached features for %d steps.', names, total_steps)
    work['start'] = time.perf_counter()
    return state, head_batches(work['cache'], local_batch, steps_per_epoch, config.seed + 1,
                               int(state.step), mesh)

  # A step takes well under a millisecond, so checkpoints and metrics every few hundred
  # steps would cost more than the training: save at the end and on preemption (SIGTERM)
  # only, log at most once an epoch.
  cadence = stage_lib.Cadence(log_every=max(cfg.log_every_steps, steps_per_epoch),
                              checkpoint_every=total_steps, profile_steps=cfg.profile_steps,
                              max_to_keep=config.checkpoint.max_to_keep)
  stage = stage_lib.Stage(
      'finetune', finetune.create_finetune_state(model, variables, cfg, learning_rate, names),
      functools.partial(head_step, model=model, names=names), total_steps, cfg.batch_size,
      learning_rate, cadence)
  return stage, run_passes_then_batches, work


def record_cache_work(workdir: str, work: dict, total_steps: int, tag: str) -> None:
  """Logs and records (as metrics tagged `tag`) this run's share of the cached mode's work;
  frees the cache."""
  timings, cache = work['timings'], work['cache']
  timings['head_s'] = time.perf_counter() - work['start']
  logging.info('Head: %d steps on cached features in %.1f s.', total_steps, timings['head_s'])
  writer = metrics_lib.MetricWriter(workdir, tag)
  writer.write(total_steps, {**timings, 'cache_bytes': cache.nbytes,
                             'num_examples': cache.num_valid, 'num_views': cache.shape[1]})
  writer.close()
  cache.delete()


# config.finetune.mode -> the 'finetune' stage that runs it (recipe.py calls it by this name).
FINETUNE_MODES = {'sgd': finetune.finetune, 'cached': finetune_cached}


def run_passes(config, workdir, data, mesh, model, variables: dict,
               on_batch: Optional[Callable] = None):
  """Passes 1 and 2.

  Returns:
    the variables with the population statistics in the last BN, the FeatureCache, and
    {'pass1_s', 'pass2_s'}.
  """
  start = time.perf_counter()
  moments = population_moments(config, workdir, data, mesh, model, variables, on_batch)
  variables = set_population_stats(variables, model.last_bn_path, moments['mean'],
                                   moments['m2'] / moments['count'])
  timings = {'pass1_s': time.perf_counter() - start}
  logging.info('Pass 1: population statistics of the input of %s over %d values per channel '
               'in %.1f s.', '/'.join(model.last_bn_path), moments['count'],
               timings['pass1_s'])
  start = time.perf_counter()
  cache = cache_features(config, workdir, data, mesh, model, variables, on_batch)
  timings['pass2_s'] = time.perf_counter() - start
  logging.info('Pass 2: features of %d examples x %d views in %.1f s.', cache.num_valid,
               cache.shape[1], timings['pass2_s'])
  return variables, cache, timings


def create_cache(config, workdir, model, rows: int, num_views: int, key: str) -> FeatureCache:
  """An empty (or, on disk, partly written) cache, placed by its size; logs size and place."""
  cfg = config.finetune
  dtype = np.dtype(jnp.dtype(cfg.cache_dtype))
  num_features = feature_size(model, cfg.test_res)
  nbytes = rows * (num_views * num_features * dtype.itemsize + 4)
  in_memory = nbytes <= cfg.cache_in_memory_mb * 2**20
  directory = None if in_memory else cache_location(config, workdir)
  cache = FeatureCache((rows, num_views, num_features), dtype, directory, key)
  logging.info('Feature cache: %d rows x %d views x %d features in %s, %.1f MiB per process '
               '(%.1f MiB in all), %s.', rows, num_views, num_features, dtype.name,
               nbytes / 2**20, nbytes * jax.process_count() / 2**20,
               'in memory' if in_memory else f'on disk at {directory}')
  return cache


def feature_size(model, image_size: int) -> int:
  """Width of the pooled features, from the model's shapes (nothing is computed)."""
  logits_and_features = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, return_features=True)[0],
      jnp.zeros((1, image_size, image_size, 3)))
  return logits_and_features[1].shape[-1]
