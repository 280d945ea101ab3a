"""tf.data input pipelines: per-process shards, resolution-separated transforms, exact eval.

Every pipeline reads encoded images from a source (sources.py: imagenet2012, any tfds dataset,
the embedded fixres_synthetic, or a folder) and yields per-process NumPy batches; parallel.make_global_batch assembles the
global batch. Randomness is stateless and derived from (seed, epoch, example position), so a
resumed run sees exactly the example order and augmentations it would have seen.
"""

import math
from typing import Iterator, Optional, Union

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fixres_jax import errors
from fixres_jax.data import preprocess
from fixres_jax.data import service as service_lib
from fixres_jax.data import sources

# The accelerators belong to JAX: hide them from TensorFlow.
tf.config.set_visible_devices([], 'GPU')

Dataset = Union[sources.TfdsSource, sources.FolderSource]


def load_dataset(config) -> Dataset:
  """The dataset of config.data, checked: prepared, non-empty splits.

  Raises:
    FileNotFoundError: the dataset is not prepared, with instructions to prepare it.
    errors.DataError: a split is empty.
  """
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


def train_options(config) -> dict:
  """train_batches' keyword arguments that come from the config, for every stage."""
  return dict(shuffle_buffer=config.data.shuffle_buffer, num_shards=config.data.num_shards,
              deterministic=config.deterministic, dtype=config.data.dtype,
              skip_corrupt=config.data.skip_corrupt, cache=config.data.cache,
              service=config.data.service)


def eval_options(config) -> dict:
  """eval_batches' keyword arguments that come from the config."""
  return dict(crop_pct=config.data.crop_pct, dtype=config.data.dtype,
              skip_corrupt=config.data.skip_corrupt, cache=config.data.cache,
              decode=config.data.decode, resize=config.data.test_resize)


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
                    len_factor: float = 1.0, repetitions: int = 1) -> int:
  """Global batches per epoch: the full ones of the split, or with repeated augmentation
  (repetitions > 1) len_factor x the split rounded up, as the official recipe's 5,005 steps
  of 512 per epoch on ImageNet (its sampler pads the stream to fill the last batch; ours
  runs on into the next permutation)."""
  num_shards = num_shards or jax.process_count()
  shard_batch = global_batch // num_shards
  draws = int(dataset.num_examples(split) // num_shards * len_factor)
  return -(-draws // shard_batch) if repetitions > 1 else draws // shard_batch


def train_batches(dataset: Dataset, split: str, image_size: int, global_batch: int,
                  seed: int, start_step: int = 0, transform: str = 'train',
                  crop: str = 'torchvision', crop_pct: float = 0.875, augment: str = 'flip',
                  shuffle_buffer: int = 10_000, num_shards: int = 0,
                  deterministic: bool = True, dtype: str = 'float32',
                  skip_corrupt: bool = False, cache: bool = False, service: str = '',
                  color_jitter: float = 0.0, decode: str = 'fast', resize: str = 'shorter',
                  repetitions: int = 1, len_factor: float = 1.0, groups: int = 1
                  ) -> Iterator[dict]:
  """Endless per-process training batches, resumable at any step.

  Args:
    transform: 'train' (RandomResizedCrop at image_size + flip) or 'finetune' (the test
      transform at image_size + light augmentation), the FixRes fine-tuning input.
    start_step: global step to resume from; earlier examples are skipped before decoding.
    num_shards: see data_shards.
    skip_corrupt: skip (and log) undecodable images instead of stopping with their names.
    cache: keep the encoded images in memory after the first epoch.
    service: a tf.data service dispatcher address: its workers decode and transform, and
      the batches are the same, in the same order (service.remote_batches).
    color_jitter: ColorJitter strength of the 'train' transform (0: none).
    decode, resize: see preprocess.preprocess_finetune ('finetune' transform; decode also
      applies to 'train').
    repetitions, len_factor, groups: repeated augmentation (repetitions > 1), see
      repeat_examples; an epoch is len_factor x the split, and each shard batch is laid out
      as `groups` equal groups (the BatchNorm groups) with the copies of an image in
      different groups.

  Yields:
    {'image': float [local_batch, size, size, 3], 'label': int32 [local_batch]}.
  """
  shards = data_shards(num_shards)
  num_shards = num_shards or jax.process_count()
  if global_batch % num_shards:
    raise ValueError(f'The global batch {global_batch} must split evenly into the '
                     f'{num_shards} data shards.')
  shard_batch = global_batch // num_shards
  steps = steps_per_epoch(dataset, split, global_batch, num_shards, len_factor, repetitions)
  if service and skip_corrupt:
    raise errors.ConfigError('config.data.service cannot skip corrupt images (a skipped image '
                             'would shift every later batch): set config.data.skip_corrupt=False.')
  if steps == 0:
    raise errors.ConfigError(f'Split {split!r} has {dataset.num_examples(split)} examples, '
                             f'fewer than one global batch of {global_batch}: lower the batch '
                             'size.')
  if shard_batch % groups:
    raise errors.ConfigError(f'The batch of each data shard ({shard_batch}) must split into '
                             f'{groups} equal BatchNorm groups: check config.model.bn_group_size.')
  tf_dtype = tf.dtypes.as_dtype(dtype)
  epoch, skip = divmod(start_step, steps)
  while True:
    streams, raw_streams, transforms = [], [], []
    for shard in shards:
      shard_seed = epoch_shard_seed(seed, epoch, shard)
      ds = shard_stream(dataset, split, shard, num_shards, shard_seed, shuffle_buffer, cache,
                        repetitions, shard_batch, groups)
      ds = ds.take(steps * shard_batch).skip(skip * shard_batch)

      def transform_fn(ex, shard_seed=shard_seed):
        # Each repeated copy has its own position, hence its own augmentation.
        position = ex['position'] if repetitions > 1 else ex['index']
        example_seed = tf.stack([tf.constant(shard_seed, tf.int64), position])
        if transform == 'train':
          image = preprocess.preprocess_train(ex['image'], example_seed, image_size, crop=crop,
                                              dtype=tf_dtype, color_jitter=color_jitter,
                                              decode=decode)
        else:
          image = preprocess.preprocess_finetune(ex['image'], example_seed, image_size,
                                                 crop_pct=crop_pct, augment=augment,
                                                 dtype=tf_dtype, decode=decode, resize=resize)
        return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

      raw_streams.append(ds)
      transforms.append(_checked(transform_fn, dataset.num_classes))
      ds = _decode(ds, dataset, transform_fn, skip_corrupt)
      if skip_corrupt:  # refill what was skipped, so that every epoch has `steps` steps
        ds = ds.repeat()
      streams.append(ds.batch(shard_batch, drop_remainder=True))
    if service:  # the same batches, made by the service's workers
      batches = service_lib.remote_batches(raw_streams, transforms, shard_batch, skip,
                                           steps - skip, service, _options(deterministic))
      yield from _iterate(batches, dataset, split)
    else:
      ds = tf.data.Dataset.zip(tuple(streams)).map(concat_batches)
      ds = ds.take(steps - skip).prefetch(tf.data.AUTOTUNE)
      yield from _iterate(ds.with_options(_options(deterministic)), dataset, split)
    epoch, skip = epoch + 1, 0


def concat_batches(*batches) -> dict:
  """One batch from the same-step batches of several data shards, in shard order."""
  return {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}


def epoch_shard_seed(seed: int, epoch: int, shard: int) -> int:
  # Seeds depend only on (run seed, epoch, shard, position): resumable and reproducible.
  return (seed * 100_003 + epoch) * 1_009 + shard


def shard_stream(dataset: Dataset, split: str, shard: int, num_shards: int, shard_seed: int,
                 shuffle_buffer: int, cache: bool, repetitions: int = 1, shard_batch: int = 1,
                 groups: int = 1) -> tf.data.Dataset:
  """One epoch's encoded examples of a shard in training order (endless with repetitions)."""
  ds = _read(dataset, split, shard, num_shards, True, shard_seed, cache)
  ds = ds.shuffle(shuffle_buffer, seed=shard_seed)
  if repetitions > 1:
    ds = repeat_examples(ds, repetitions, shard_batch, groups)
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


def eval_batches(dataset: Dataset, split: str, image_size: int, global_batch: int,
                 crop_pct: float = 0.875, dtype: str = 'float32', skip_corrupt: bool = False,
                 cache: bool = False, start_batch: int = 0, decode: str = 'fast',
                 resize: str = 'shorter') -> Iterator[dict]:
  """Every example of `split` exactly once, at the test transform, padded and masked.

  Every process yields the same number of batches (no multi-host hang); padding examples
  have mask 0, so metrics summed with the mask count each real image once.

  Args:
    start_batch: the first batch to yield (to resume a pass); the examples before it are
      skipped without decoding (unless skip_corrupt).
    decode, resize: see preprocess.preprocess_test.

  Yields:
    {'image', 'label', 'mask': float32 [local_batch]}.
  """
  local_batch = global_batch // jax.process_count()
  per_process = math.ceil(dataset.num_examples(split) / jax.process_count())
  num_batches = math.ceil(per_process / local_batch)
  tf_dtype = tf.dtypes.as_dtype(dtype)

  def transform_fn(ex):
    image = preprocess.preprocess_test(ex['image'], image_size, crop_pct=crop_pct,
                                       dtype=tf_dtype, decode=decode, resize=resize)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = _read(dataset, split, jax.process_index(), jax.process_count(), False, None, cache)
  # Skip before decoding, unless skipped corrupt images shift the batches: then count
  # decoded examples.
  raw_skip = 0 if skip_corrupt else start_batch * local_batch
  ds = _decode(ds.skip(raw_skip), dataset, transform_fn, skip_corrupt)
  ds = ds.skip(start_batch * local_batch - raw_skip)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros((image_size, image_size, 3), tf_dtype),
      'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0, tf.float32)}).repeat()
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
