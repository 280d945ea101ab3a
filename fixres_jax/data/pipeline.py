"""tf.data input pipelines: per-process shards, resolution-separated transforms, exact eval.

Every pipeline reads encoded images from a source (sources.py: imagenet2012, any tfds dataset,
the embedded fixres_synthetic, or a folder) and yields per-process NumPy batches; parallel.make_global_batch assembles the
global batch. Randomness is stateless and derived from (seed, epoch, example position), so a
resumed run sees exactly the example order and augmentations it would have seen.
"""

import concurrent.futures
import dataclasses
import functools
import itertools
import math
from typing import Callable, Iterator, Optional, Union

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import evalsets
from fixres_jax.data import preprocess
from fixres_jax.data import service as service_lib
from fixres_jax.data import sources
from fixres_jax.data import views

Dataset = Union[sources.TfdsSource, sources.FolderSource]


def hide_gpus_from_tensorflow() -> None:
  """Leaves the GPUs to JAX: tf.data runs on the CPU (nothing to do with tensorflow-cpu).

  Called where the pipeline is first used (load_dataset, every read), not at import, so that
  importing this module changes no global state. TensorFlow fixes its devices when its runtime
  starts: if it was started earlier with GPUs visible, they stay visible (a warning says so).
  """
  if not tf.config.get_visible_devices('GPU'):
    return
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError as e:
    logging.warning('TensorFlow started before the input pipeline and sees the GPUs (%s): '
                    'it may take GPU memory from JAX.', e)


def load_dataset(config) -> Dataset:
  """The dataset of config.data, checked: prepared, non-empty splits.

  Raises:
    FileNotFoundError: the dataset is not prepared, with instructions to prepare it.
    errors.DataError: a split is empty.
  """
  hide_gpus_from_tensorflow()
  dataset = sources.load_source(config)
  for split in (config.data.train_split, config.data.eval_split):
    if dataset.num_examples(split) == 0:
      raise errors.DataError(f'Split {split!r} of {dataset.name} is empty: check '
                             'config.data.train_split / eval_split.')
  return dataset


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  return options


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How a training stream reads its examples (config.data, the same for every stage).

  Attributes:
    shuffle_buffer: examples in the shuffle buffer of each data shard.
    num_shards: see data_shards.
    deterministic: the same batches every run (tf.data's deterministic order).
    skip_corrupt: skip (and log) undecodable images instead of stopping with their names.
    cache: keep the encoded images in memory after the first epoch.
    service: a tf.data service dispatcher address: its workers decode and transform, and
      the batches are the same, in the same order (service.remote_batches).
  """
  shuffle_buffer: int = 10_000
  num_shards: int = 0
  deterministic: bool = True
  skip_corrupt: bool = False
  cache: bool = False
  service: str = ''


@dataclasses.dataclass(frozen=True)
class Repetition:
  """Repeated augmentation (repetitions > 1), see repeat_examples: an epoch is len_factor x
  the split, and each shard batch is laid out as `groups` equal groups (the BatchNorm
  groups) with the copies of an image in different groups."""
  repetitions: int = 1
  len_factor: float = 1.0
  groups: int = 1


NO_REPETITION = Repetition()


def read_options(config) -> ReadOptions:
  """config.data's ReadOptions."""
  data = config.data
  return ReadOptions(shuffle_buffer=data.shuffle_buffer, num_shards=data.num_shards,
                     deterministic=config.deterministic, skip_corrupt=data.skip_corrupt,
                     cache=data.cache, service=data.service)


def repetition(config) -> Repetition:
  """The train stage's repeated augmentation, the copies of an image spread over the
  BatchNorm groups of each data shard's batch."""
  data, group_size = config.data, config.model.bn_group_size
  num_shards = data.num_shards or jax.process_count()
  groups = config.train.batch_size // group_size // num_shards if group_size else 1
  return Repetition(data.ra_repetitions, data.ra_len_factor, max(groups, 1))


def train_transform(config, image_size: Optional[int] = None) -> Callable:
  """(image bytes, seed) -> image: the train stage's transform at image_size (default
  K_train)."""
  return functools.partial(
      preprocess.preprocess_train, size=image_size or config.train.image_size,
      crop=config.data.crop,
      dtype=tf.dtypes.as_dtype(config.data.dtype), color_jitter=config.data.color_jitter,
      decode=config.data.train_decode, randaugment=config.data.randaugment,
      randaugment_interpolation=config.data.randaugment_interpolation)


def finetune_transform(config) -> Callable:
  """(image bytes, seed) -> image: FixRes fine-tuning's transform at config.finetune.test_res."""
  data = config.data
  return functools.partial(
      preprocess.preprocess_finetune, size=config.finetune.test_res,
      augment=config.finetune.augment, dtype=tf.dtypes.as_dtype(data.dtype),
      **test_view(data))


def test_transform(config, image_size: int) -> Callable:
  """image bytes -> image: the test transform at image_size."""
  data = config.data
  return functools.partial(preprocess.preprocess_test, size=image_size,
                           dtype=tf.dtypes.as_dtype(data.dtype), **test_view(data))


def tta_transform(config, image_size: int, spec=None) -> Callable:
  """image bytes -> the views of test-time augmentation `spec` (tta.TestTimeAugment) at
  image_size (data/views.py), or the test transform when it needs no more than that view."""
  if spec is None or not spec.data_views:
    return test_transform(config, image_size)
  return functools.partial(views.preprocess_views, sizes=spec.sizes(image_size),
                           crops=spec.crops, dtype=tf.dtypes.as_dtype(config.data.dtype),
                           **test_view(config.data))


def test_view(data) -> dict:
  """config.data's test-transform arguments, shared by the test and fine-tuning transforms."""
  return dict(crop_pct=data.crop_pct, decode=data.decode, resize=data.test_resize,
              interpolation=data.test_interpolation, crop_mode=data.test_crop_mode,
              resize_size=data.test_resize_size, margin=data.test_crop_margin)


def stage_steps_per_epoch(config, dataset: Dataset, stage: str) -> int:
  """Global steps per epoch of the 'train' or 'finetune' stage."""
  cfg = config.train if stage == 'train' else config.finetune
  repeat = repetition(config) if stage == 'train' else NO_REPETITION
  return steps_per_epoch(dataset, config.data.train_split, cfg.batch_size,
                         config.data.num_shards, repeat)


def stage_batches(config, dataset: Dataset, stage: str, start_step: int) -> Iterator[dict]:
  """The 'train' or 'finetune' stage's endless training batches from start_step."""
  if stage == 'train':
    return sized_train_batches(config, dataset, start_step)
  cfg = config.finetune
  return train_batches(dataset, config.data.train_split, cfg.batch_size, config.seed + 1,
                       finetune_transform(config), start_step, read_options(config),
                       end_step=stage_total_steps(config, dataset, stage))


def stage_total_steps(config, dataset: Dataset, stage: str) -> int:
  """Global steps of the 'train' or 'finetune' stage."""
  cfg = config.train if stage == 'train' else config.finetune
  return int(cfg.num_epochs * stage_steps_per_epoch(config, dataset, stage))


def sized_train_batches(config, dataset: Dataset, start_step: int) -> Iterator[dict]:
  """The train stage's batches, each epoch at its size of config.train.image_size_schedule.

  The examples, their order and their crops are those of a fixed-size run (the seeds do not
  depend on the size): only the output size changes, at the scheduled steps.
  """
  steps = stage_steps_per_epoch(config, dataset, 'train')
  schedule = config_lib.image_size_schedule(config.train)
  firsts = [int(epoch * steps) for epoch, _ in schedule] + [None]
  for (_, size), first, end in zip(schedule, firsts, firsts[1:]):
    if end is not None and start_step >= end:
      continue
    begin = max(start_step, first)
    batches = train_batches(dataset, config.data.train_split, config.train.batch_size,
                            config.seed, train_transform(config, size), begin,
                            read_options(config), repetition(config),
                            end_step=end or stage_total_steps(config, dataset, 'train'))
    if len(schedule) > 1:
      logging.info('Training at %d px from step %d.', size, begin)
    yield from batches if end is None else itertools.islice(batches, end - begin)


def config_eval_batches(config, dataset: Dataset, split: str, image_size: int,
                        global_batch: Optional[int] = None, start_batch: int = 0,
                        tta=None) -> Iterator[dict]:
  """Every evaluation pass: `split` at the test transform at image_size (or the views of
  test-time augmentation `tta`, a tta.TestTimeAugment), with config.data's reading options;
  global_batch defaults to config.sweep.batch_size."""
  return eval_batches(dataset, split, global_batch or config.sweep.batch_size,
                      tta_transform(config, image_size, tta), start_batch,
                      skip_corrupt=config.data.skip_corrupt, cache=config.data.cache)


def train_view_batches(config, dataset: Dataset, split: str) -> Iterator[dict]:
  """Every image of `split` once through the train transform at K_train (random crops and
  flips drawn from config.seed): what the network's classifier was trained on, for the
  parametric adaptation's target; padded and masked as config_eval_batches."""
  return eval_batches(dataset, split, config.sweep.batch_size, train_transform(config),
                      skip_corrupt=config.data.skip_corrupt, cache=config.data.cache,
                      seed=config.seed)


@dataclasses.dataclass(frozen=True)
class EvalData:
  """An evaluation set ready to read: its source, split and how its labels score.

  Attributes:
    name: its name in config.sweep.evals.
    rule: one of evalsets.LABEL_RULES.
    classes: 'subset': the classes present in the split, the logits' restriction.
  """
  name: str
  source: Dataset
  split: str
  rule: str = 'single'
  classes: tuple = ()


def load_eval_sets(config, dataset: Dataset) -> list:
  """config.sweep.evals as EvalData, in order; the validation set reads `dataset` itself.

  Raises:
    errors.NotFoundError: a set is not prepared (saying how to prepare it).
    errors.ConfigError: a set's label space differs from the model's.
  """
  loaded = []
  for name in evalsets.parse_names(config.sweep.evals):
    eval_set = evalsets.resolve(config, name)
    if eval_set.dataset == config.data.name and name == evalsets.PRIMARY:
      source = dataset
    else:
      source = sources.load_eval_source(config, name, eval_set)
    if source.num_classes != dataset.num_classes:
      raise errors.ConfigError(
          f'config.sweep.evals has {name!r}, whose {source.num_classes} classes are not the '
          f"{dataset.num_classes} of {dataset.name} the model was made for: evaluate it with "
          'a model of its label space.')
    classes = sources.present_classes(source, eval_set.split) if eval_set.rule == 'subset' else ()
    loaded.append(EvalData(name, source, eval_set.split, eval_set.rule, classes))
    logging.info('Evaluation set %s: %s %s, %d images, %s labels%s.', name, source.name,
                 eval_set.split, source.num_examples(eval_set.split), eval_set.rule,
                 f' over {len(classes)} classes' if classes else '')
  return loaded


def eval_set_batches(config, eval_data: EvalData, image_size: int, tta=None
                     ) -> Iterator[dict]:
  """config_eval_batches of an evaluation set, its labels as its rule reads them."""
  return eval_batches(eval_data.source, eval_data.split, config.sweep.batch_size,
                      tta_transform(config, image_size, tta),
                      skip_corrupt=config.data.skip_corrupt,
                      cache=config.data.cache, rule=eval_data.rule)


def data_shards(num_shards: int = 0) -> range:
  """The data shards this process reads (num_shards=0: one per process).

  The training order is defined per shard, and a global batch is the concatenation of an
  equal slice of every shard. With a fixed num_shards the global batches are therefore the
  same whatever the number of processes: 1 process reading 2 shards sees exactly what 2
  processes reading 1 shard each see.
  """
  num_shards = num_shards or jax.process_count()
  if num_shards % jax.process_count():
    raise errors.ConfigError(f'config.data.num_shards={num_shards} must be a multiple of the '
                             f'{jax.process_count()} processes.')
  per_process = num_shards // jax.process_count()
  return range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def steps_per_epoch(dataset: Dataset, split: str, global_batch: int, num_shards: int = 0,
                    repeat: Repetition = NO_REPETITION) -> int:
  """Global batches per epoch: the full ones of the split, or with repeated augmentation
  (repetitions > 1) len_factor x the split rounded up, as the official recipe's 5,005 steps
  of 512 per epoch on ImageNet (its sampler pads the stream to fill the last batch; ours
  runs on into the next permutation)."""
  num_shards = num_shards or jax.process_count()
  shard_batch = global_batch // num_shards
  draws = int(dataset.num_examples(split) // num_shards * repeat.len_factor)
  return -(-draws // shard_batch) if repeat.repetitions > 1 else draws // shard_batch


def train_batches(dataset: Dataset, split: str, global_batch: int, seed: int,
                  transform: Callable, start_step: int = 0, read: ReadOptions = ReadOptions(),
                  repeat: Repetition = NO_REPETITION,
                  end_step: Optional[int] = None) -> Iterator[dict]:
  """Endless per-process training batches, resumable at any step.

  Args:
    transform: (image bytes, [2] seed) -> image, e.g. train_transform(config) or
      finetune_transform(config); each example's seed comes from (seed, epoch, shard, its
      position), so a resumed stream has the same augmentations.
    start_step: global step to resume from; earlier examples are skipped before decoding.
    read: how the examples are read (shards, shuffling, corrupt images, cache, service).
    repeat: repeated augmentation.
    end_step: the global step the caller stops before, if known: the batches end with the
      epoch that holds it (read_epochs_ahead), rather than starting one nobody reads.

  Yields:
    {'image': float [local_batch, size, size, 3], 'label': int32 [local_batch]}.
  """
  shards = data_shards(read.num_shards)
  num_shards = read.num_shards or jax.process_count()
  if global_batch % num_shards:
    raise ValueError(f'The global batch {global_batch} must split evenly into the '
                     f'{num_shards} data shards.')
  shard_batch = global_batch // num_shards
  steps = steps_per_epoch(dataset, split, global_batch, num_shards, repeat)
  if read.service and read.skip_corrupt:
    raise errors.ConfigError('config.data.service cannot skip corrupt images (a skipped image '
                             'would shift every later batch): set config.data.skip_corrupt=False.')
  if steps == 0:
    raise errors.ConfigError(f'Split {split!r} has {dataset.num_examples(split)} examples, '
                             f'fewer than one global batch of {global_batch}: lower the batch '
                             'size.')
  if shard_batch % repeat.groups:
    raise errors.ConfigError(f'The batch of each data shard ({shard_batch}) must split into '
                             f'{repeat.groups} equal BatchNorm groups: check '
                             'config.model.bn_group_size.')
  def epoch_batches(epoch: int, skip: int) -> Iterator[dict]:
    streams, raw_streams, transforms = [], [], []
    for shard in shards:
      shard_seed = epoch_shard_seed(seed, epoch, shard)
      ds = shard_stream(dataset, split, shard, num_shards, shard_seed, read.shuffle_buffer,
                        read.cache, repeat, shard_batch)
      ds = ds.take(steps * shard_batch).skip(skip * shard_batch)

      def transform_fn(ex, shard_seed=shard_seed):
        # Each repeated copy has its own position, hence its own augmentation.
        position = ex['position'] if repeat.repetitions > 1 else ex['index']
        example_seed = tf.stack([tf.constant(shard_seed, tf.int64), position])
        return {'image': transform(ex['image'], example_seed),
                'label': tf.cast(ex['label'], tf.int32)}

      raw_streams.append(ds)
      transforms.append(_checked(transform_fn, dataset.num_classes))
      ds = _decode(ds, dataset, transform_fn, read.skip_corrupt)
      if read.skip_corrupt:  # refill what was skipped, so that every epoch has `steps` steps
        ds = ds.repeat()
      streams.append(ds.batch(shard_batch, drop_remainder=True))
    if read.service:  # the same batches, made by the service's workers
      batches = service_lib.remote_batches(raw_streams, transforms, shard_batch, skip,
                                           steps - skip, read.service,
                                           _options(read.deterministic))
      return _iterate(batches, dataset, split)
    ds = tf.data.Dataset.zip(tuple(streams)).map(concat_batches)
    ds = ds.take(steps - skip).prefetch(tf.data.AUTOTUNE)
    return _iterate(ds.with_options(_options(read.deterministic)), dataset, split)

  end_epoch = None if end_step is None else -(-end_step // steps)
  return read_epochs_ahead(epoch_batches, steps, *divmod(start_step, steps), end_epoch)


# The batches left in an epoch when the next epoch's stream starts (read_epochs_ahead): a
# fine-tuning step at the demo's size takes a tenth of a second, and the next stream's first
# batch (tracing, a full shuffle buffer) a few seconds.
READ_AHEAD_BATCHES = 48


def read_epochs_ahead(epoch_batches: Callable[[int, int], Iterator[dict]], steps: int,
                      epoch: int, skip: int, end_epoch: Optional[int] = None) -> Iterator[dict]:
  """epoch_batches(epoch, skip), then each later epoch from its start, up to end_epoch.

  An epoch's stream is built and its first batch read in a thread while the previous epoch's
  last READ_AHEAD_BATCHES batches are read: the boundary does not wait for tf.data to trace
  the transform, fill the shuffle buffer and start its threads (a pause of seconds on a
  small dataset), and two epochs' buffers are held only over those last batches.

  Args:
    epoch_batches: (epoch, batches to skip) -> that epoch's batches.
    steps: batches per epoch.
    end_epoch: the first epoch the caller will not read; None: endlessly. The batches stop
      there, so that neither the reading ahead nor a consumer's prefetching starts an epoch
      nobody reads (tens of seconds of a stage's last steps on the demo's 2 cores).
  """
  def start(epoch, skip):
    batches = epoch_batches(epoch, skip)
    return batches, list(itertools.islice(batches, 1))

  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='next_epoch')
  try:
    upcoming = executor.submit(start, epoch, skip)
    while upcoming is not None:
      batches, first = upcoming.result()
      upcoming = None
      last = end_epoch is not None and epoch + 1 >= end_epoch
      for position, batch in enumerate(itertools.chain(first, batches), start=skip + 1):
        if not last and upcoming is None and position > steps - READ_AHEAD_BATCHES:
          upcoming = executor.submit(start, epoch + 1, 0)
        yield batch
      if upcoming is None and not last:
        upcoming = executor.submit(start, epoch + 1, 0)
      epoch, skip = epoch + 1, 0
  finally:  # closed early (a stage's last step): a stream being started is not waited for
    executor.shutdown(wait=False, cancel_futures=True)


def concat_batches(*batches) -> dict:
  """One batch from the same-step batches of several data shards, in shard order."""
  return {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}


def epoch_shard_seed(seed: int, epoch: int, shard: int) -> int:
  # Seeds depend only on (run seed, epoch, shard, position): resumable and reproducible.
  return (seed * 100_003 + epoch) * 1_009 + shard


def shard_stream(dataset: Dataset, split: str, shard: int, num_shards: int, shard_seed: int,
                 shuffle_buffer: int, cache: bool, repeat: Repetition = NO_REPETITION,
                 shard_batch: int = 1) -> tf.data.Dataset:
  """One epoch's encoded examples of a shard in training order (endless with repetitions)."""
  ds = _read(dataset, split, shard, num_shards, True, shard_seed, cache)
  ds = ds.shuffle(shuffle_buffer, seed=shard_seed)
  if repeat.repetitions > 1:
    ds = repeat_examples(ds, repeat.repetitions, shard_batch, repeat.groups)
  return ds


def repeat_examples(ds: tf.data.Dataset, repetitions: int, shard_batch: int, groups: int
                    ) -> tf.data.Dataset:
  """Repeated augmentation: the official RASampler's stream, laid out over BN groups.

  The shuffled examples (a new shuffle whenever the split is exhausted, as the sampler draws
  a new permutation) each appear `repetitions` times in a row; each shard batch of
  consecutive draws is then dealt round-robin to `groups` groups, as
  indices[rank::num_replicas] deals them to the GPUs, so the copies of an image land in
  different groups (when groups >= repetitions). Each draw carries its 'position' in the
  epoch's stream, which seeds its augmentation.
  """
  ds = ds.repeat().flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(repetitions))
  ds = ds.enumerate().map(lambda i, ex: dict(ex, position=i))
  # Row g * n + j of a batch is draw j * groups + g: group g holds draws g, g + groups, ...
  order = np.arange(shard_batch).reshape(shard_batch // groups, groups).T.reshape(-1)
  ds = ds.batch(shard_batch, drop_remainder=True)
  return ds.map(lambda b: {k: tf.gather(v, order) for k, v in b.items()}).unbatch()


def eval_batches(dataset: Dataset, split: str, global_batch: int, transform: Callable,
                 start_batch: int = 0, skip_corrupt: bool = False, cache: bool = False,
                 rule: str = 'single', seed: Optional[int] = None) -> Iterator[dict]:
  """Every example of `split` exactly once, through `transform`, padded and masked.

  Every process yields the same number of batches (no multi-host hang); padding examples
  have mask 0, so metrics summed with the mask count each real image once.

  Args:
    transform: image bytes -> image, e.g. test_transform(config, K_test).
    start_batch: the first batch to yield (to resume a pass); the examples before it are
      skipped without decoding (unless skip_corrupt).
    skip_corrupt, cache: as ReadOptions.
    rule: evalsets.LABEL_RULES: 'real' reads each example's labels as a multi-hot float32
      [classes] and masks out the images that have none (they are left out of the scores).
    seed: None, or a random transform's seed: `transform` is then (image bytes, [2] seed)
      -> image, each example's seed from (seed, this process, its position).

  Yields:
    {'image', 'label', 'mask': float32 [local_batch]}.
  """
  local_batch = global_batch // jax.process_count()
  num_batches = num_eval_batches(dataset, split, global_batch)

  def transform_fn(ex):
    label, mask = tf.cast(ex['label'], tf.int32), tf.constant(1.0, tf.float32)
    if rule == 'real':
      label = tf.minimum(tf.reduce_sum(tf.one_hot(label, dataset.num_classes), axis=0), 1.0)
      mask = tf.cast(tf.size(ex['label']) > 0, tf.float32)
    if seed is None:
      return {'image': transform(ex['image']), 'label': label, 'mask': mask}
    example_seed = tf.stack([tf.constant(epoch_shard_seed(seed, 0, jax.process_index()),
                                         tf.int64), ex['index']])
    return {'image': transform(ex['image'], example_seed), 'label': label, 'mask': mask}

  ds = _read(dataset, split, jax.process_index(), jax.process_count(), False, None, cache)
  # Skip before decoding, unless skipped corrupt images shift the batches: then count
  # decoded examples.
  raw_skip = 0 if skip_corrupt else start_batch * local_batch
  ds = _decode(ds.skip(raw_skip), dataset, transform_fn, skip_corrupt)
  ds = ds.skip(start_batch * local_batch - raw_skip)
  zeros = lambda spec: tf.zeros(spec.shape, spec.dtype)
  label = ds.element_spec['label']
  padding = tf.data.Dataset.from_tensors({
      # An image, or test-time augmentation's views (a tuple over scales).
      'image': tf.nest.map_structure(zeros, ds.element_spec['image']),
      'label': tf.zeros(label.shape, label.dtype), 'mask': tf.constant(0.0, tf.float32)}
      ).repeat()
  ds = ds.concatenate(padding).take((num_batches - start_batch) * local_batch)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).with_options(_options(True))
  return _iterate(ds, dataset, split)


def num_eval_batches(dataset: Dataset, split: str, global_batch: int) -> int:
  local_batch = global_batch // jax.process_count()
  return math.ceil(math.ceil(dataset.num_examples(split) / jax.process_count()) / local_batch)


def log_dataset(dataset: Dataset, splits) -> None:
  counts = {split: dataset.num_examples(split) for split in splits}
  logging.info('Dataset %s: %d classes, %s', dataset.name, dataset.num_classes, counts)


def trained_on_selection(dataset: Dataset, config) -> Optional[str]:
  """One warning line when a choice said to be held out reads images the train stage uses.

  K_test selection (finetune.test_res='auto' on finetune.auto_split) and the parametric fit
  (sweep.parametric_split) are meant for images the network did not train on; a slice of
  config.data.train_split itself makes them favour what the network memorised.

  Returns:
    The warning, or None when every selection slice is disjoint from train_split.
  """
  uses = []
  if 'finetune' in config.stages and config.finetune.test_res == 'auto':
    uses.append(('K_test selection', 'finetune.auto_split'))
  if 'sweep' in config.stages and config.sweep.parametric:
    uses.append(('the parametric fit', 'sweep.parametric_split'))
  train_split = config.data.train_split
  found = []
  for what, field in uses:
    spec = config[field.split('.')[0]][field.split('.')[1]]
    shared = sources.split_overlap(dataset, spec, train_split)
    if shared:
      found.append(f'{what} (config.{field}={spec!r}) reads {shared} of its '
                   f'{dataset.num_examples(spec)} images from the training images')
  if not found:
    return None
  return (f"Not held out: {'; '.join(found)} (config.data.train_split={train_split!r}). "
          "To select on unseen images, train on the complement, e.g. "
          "train_split='train[:90%]' with auto_split and parametric_split 'train[90%:]'.")


_CACHED = {}


def _read(dataset: Dataset, split: str, shard: int, num_shards: int, drop_remainder: bool,
          shuffle_seed, cache: bool) -> tf.data.Dataset:
  """dataset.read, optionally served from an in-memory cache of the encoded bytes."""
  hide_gpus_from_tensorflow()
  if not cache:
    return dataset.read(split, shard, num_shards, drop_remainder, shuffle_seed)
  key = (id(dataset), split, shard, num_shards, drop_remainder)
  if key not in _CACHED:
    _CACHED[key] = dataset.read(split, shard, num_shards, drop_remainder).cache()
  ds = _CACHED[key]
  if shuffle_seed is not None:  # the file order cannot be shuffled any more: shuffle it all
    ds = ds.shuffle(dataset.num_examples(split) // num_shards + 1, seed=shuffle_seed)
  return ds


LABEL_ERROR = 'label out of range'


def _decode(ds: tf.data.Dataset, dataset: Dataset, transform_fn, skip_corrupt: bool
            ) -> tf.data.Dataset:
  """Applies transform_fn after checking the label; optionally skips undecodable images."""
  ds = ds.map(_checked(transform_fn, dataset.num_classes), num_parallel_calls=tf.data.AUTOTUNE)
  if skip_corrupt:
    ds = ds.ignore_errors(log_warning=True)  # each skipped image is logged
  return ds


def _checked(transform_fn, num_classes: int):
  """transform_fn, failing with LABEL_ERROR on a label outside [0, num_classes)."""
  @tf.autograph.experimental.do_not_convert  # no Python control flow to convert
  def checked(ex):
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(ex['label'], message=LABEL_ERROR),
        tf.debugging.assert_less(ex['label'], tf.constant(num_classes, tf.int64),
                                 message=LABEL_ERROR)]):
      return transform_fn(ex)
  return checked


def _iterate(ds, dataset: Dataset, split: str) -> Iterator[dict]:
  """NumPy batches; a data error becomes a message that names the problem and the fix."""
  try:
    yield from tfds.as_numpy(ds) if isinstance(ds, tf.data.Dataset) else ds
  except GeneratorExit:  # closed unfinished, maybe at exit, when `tf` below may be gone
    raise
  except tf.errors.InvalidArgumentError as e:
    if LABEL_ERROR in str(e):
      raise errors.DataError(
          f'A label of {dataset.name} split {split!r} is outside [0, {dataset.num_classes}): '
          'check config.data.label_key, or the class folders of the splits.') from None
    corrupt = find_corrupt_images(dataset, split)
    if not corrupt:
      raise
    raise errors.DataError(
        f'Cannot decode {len(corrupt)} image(s) of {dataset.name} split {split!r}: '
        f'{", ".join(corrupt[:10])}. Remove or re-encode them, or set '
        'config.data.skip_corrupt=True to skip them (each is logged).') from None


def find_corrupt_images(dataset: Dataset, split: str) -> list:
  """File names of the examples of `split` whose full decode fails."""
  logging.info('A decoding error occurred: looking for the corrupt images of %s.', split)
  names = dataset.read(split, drop_remainder=False).map(lambda ex: ex['file_name'])
  decodable = dataset.read(split, drop_remainder=False).map(
      lambda ex: (ex['file_name'], tf.shape(tf.io.decode_image(  # the shape keeps the decode
          ex['image'], channels=3, expand_animations=False))),
      num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  good = {name for name, _ in decodable.as_numpy_iterator()}
  return [n.decode() for n in names.as_numpy_iterator() if n not in good]
