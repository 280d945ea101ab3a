"""tf.data input pipelines: per-process shards, resolution-separated transforms, exact eval.

Every pipeline reads JPEG bytes through tfds (imagenet2012, any tfds dataset, or the embedded
fixres_synthetic) and yields per-process NumPy batches; parallel.make_global_batch assembles the
global batch. Randomness is stateless and derived from (seed, epoch, example position), so a
resumed run sees exactly the example order and augmentations it would have seen.
"""

import dataclasses
import math
from typing import Iterator, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fixres_jax.data import preprocess
from fixres_jax.data import synthetic  # registers fixres_synthetic with tfds

# The accelerators belong to JAX: hide them from TensorFlow.
tf.config.set_visible_devices([], 'GPU')

SYNTHETIC_NAME = 'fixres_synthetic'

IMAGENET_INSTRUCTIONS = """\
imagenet2012 is not prepared in {data_dir}. It cannot be downloaded automatically:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org
     into a manual directory, e.g. ~/tensorflow_datasets/downloads/manual/
  2. python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012', \\
       data_dir='{data_dir}').download_and_prepare(download_config=\\
       tfds.download.DownloadConfig(manual_dir='MANUAL_DIR'))"
  3. Point config.data.data_dir (or TFDS_DATA_DIR) at {data_dir}.
Or try the recipe on the embedded dataset: --config=configs/demo.py"""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A prepared tfds dataset and how to read it."""
  builder: tfds.core.DatasetBuilder
  image_key: str = 'image'
  label_key: str = 'label'

  @property
  def num_classes(self) -> int:
    return self.builder.info.features[self.label_key].num_classes

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples


def load_dataset(config) -> Dataset:
  """Finds (or, for the embedded dataset, builds) the tfds dataset named in config.data.

  Raises:
    FileNotFoundError: the dataset is not prepared, with instructions to prepare it.
  """
  data_dir = config.data.data_dir or None
  builder = tfds.builder(config.data.name, data_dir=data_dir)
  if config.data.name.split('/')[0] == SYNTHETIC_NAME:
    # Generated on first use, by one process while the others wait.
    if jax.process_index() == 0:
      synthetic.prepare_builder(builder)
    multihost_utils.sync_global_devices('fixres_synthetic prepared')
    builder = tfds.builder(config.data.name, data_dir=data_dir)
  elif not builder.is_prepared():
    if config.data.name.startswith('imagenet2012'):
      raise FileNotFoundError(IMAGENET_INSTRUCTIONS.format(data_dir=builder.data_dir_root))
    raise FileNotFoundError(
        f'Dataset {config.data.name!r} is not prepared in {builder.data_dir_root}. Prepare it '
        f"with `tfds build {config.data.name} --data_dir=DIR` and set config.data.data_dir=DIR.")
  dataset = Dataset(builder, config.data.image_key, config.data.label_key)
  for split in (config.data.train_split, config.data.eval_split):
    if dataset.num_examples(split) == 0:
      raise ValueError(f'Split {split!r} of {config.data.name} is empty: check '
                       'config.data.train_split / eval_split.')
  return dataset


def _read(dataset: Dataset, split: str, shuffle_seed: Optional[int] = None
          ) -> tf.data.Dataset:
  """A (sub-)split as {'image': encoded bytes, 'label', 'index': position in the split}."""
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, add_tfds_id=False)
  ds = dataset.builder.as_dataset(
      split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
      decoders={dataset.image_key: tfds.decode.SkipDecoding()})
  return ds.enumerate().map(lambda i, ex: {
      'image': ex[dataset.image_key], 'label': ex[dataset.label_key], 'index': i})


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  return options


def data_shards(num_shards: int = 0) -> range:
  """The data shards this process reads (num_shards=0: one per process).

  The training order is defined per shard, and a global batch is the concatenation of an
  equal slice of every shard. With a fixed num_shards the global batches are therefore the
  same whatever the number of processes: 1 process reading 2 shards sees exactly what 2
  processes reading 1 shard each see.
  """
  num_shards = num_shards or jax.process_count()
  if num_shards % jax.process_count():
    raise ValueError(f'config.data.num_shards={num_shards} must be a multiple of the '
                     f'{jax.process_count()} processes.')
  per_process = num_shards // jax.process_count()
  return range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def steps_per_epoch(dataset: Dataset, split: str, global_batch: int, num_shards: int = 0
                    ) -> int:
  num_shards = num_shards or jax.process_count()
  return (dataset.num_examples(split) // num_shards) // (global_batch // num_shards)


def train_batches(dataset: Dataset, split: str, image_size: int, global_batch: int,
                  seed: int, start_step: int = 0, transform: str = 'train',
                  crop: str = 'torchvision', crop_pct: float = 0.875, augment: str = 'flip',
                  shuffle_buffer: int = 10_000, num_shards: int = 0,
                  deterministic: bool = True, dtype: str = 'float32') -> Iterator[dict]:
  """Endless per-process training batches, resumable at any step.

  Args:
    transform: 'train' (RandomResizedCrop at image_size + flip) or 'finetune' (the test
      transform at image_size + light augmentation), the FixRes fine-tuning input.
    start_step: global step to resume from; earlier examples are skipped before decoding.
    num_shards: see data_shards.

  Yields:
    {'image': float [local_batch, size, size, 3], 'label': int32 [local_batch]}.
  """
  shards = data_shards(num_shards)
  num_shards = num_shards or jax.process_count()
  if global_batch % num_shards:
    raise ValueError(f'The global batch {global_batch} must split evenly into the '
                     f'{num_shards} data shards.')
  shard_batch = global_batch // num_shards
  steps = steps_per_epoch(dataset, split, global_batch, num_shards)
  if steps == 0:
    raise ValueError(f'Split {split!r} has {dataset.num_examples(split)} examples, fewer than '
                     f'one global batch of {global_batch}: lower the batch size.')
  subsplits = tfds.even_splits(split, num_shards, drop_remainder=True)
  tf_dtype = tf.dtypes.as_dtype(dtype)
  epoch, skip = divmod(start_step, steps)
  while True:
    streams = []
    for shard in shards:
      # Seeds depend only on (run seed, epoch, shard, position): resumable and reproducible.
      shard_seed = (seed * 100_003 + epoch) * 1_009 + shard
      ds = _read(dataset, subsplits[shard], shuffle_seed=shard_seed)
      ds = ds.shuffle(shuffle_buffer, seed=shard_seed)
      ds = ds.take(steps * shard_batch).skip(skip * shard_batch)

      def transform_fn(ex, shard_seed=shard_seed):
        example_seed = tf.stack([tf.constant(shard_seed, tf.int64), ex['index']])
        if transform == 'train':
          image = preprocess.preprocess_train(ex['image'], example_seed, image_size, crop=crop,
                                              dtype=tf_dtype)
        else:
          image = preprocess.preprocess_finetune(ex['image'], example_seed, image_size,
                                                 crop_pct=crop_pct, augment=augment,
                                                 dtype=tf_dtype)
        return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

      ds = ds.map(transform_fn, num_parallel_calls=tf.data.AUTOTUNE)
      streams.append(ds.batch(shard_batch, drop_remainder=True))
    ds = tf.data.Dataset.zip(tuple(streams)).map(
        lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]})
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic))
    yield from tfds.as_numpy(ds)
    epoch, skip = epoch + 1, 0


def eval_batches(dataset: Dataset, split: str, image_size: int, global_batch: int,
                 crop_pct: float = 0.875, dtype: str = 'float32') -> Iterator[dict]:
  """Every example of `split` exactly once, at the test transform, padded and masked.

  Every process yields the same number of batches (no multi-host hang); padding examples
  have mask 0, so metrics summed with the mask count each real image once.

  Yields:
    {'image', 'label', 'mask': float32 [local_batch]}.
  """
  local_batch = global_batch // jax.process_count()
  per_process = math.ceil(dataset.num_examples(split) / jax.process_count())
  num_batches = math.ceil(per_process / local_batch)
  tf_dtype = tf.dtypes.as_dtype(dtype)

  def transform_fn(ex):
    image = preprocess.preprocess_test(ex['image'], image_size, crop_pct=crop_pct,
                                       dtype=tf_dtype)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = _read(dataset, tfds.split_for_jax_process(split, drop_remainder=False))
  ds = ds.map(transform_fn, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros((image_size, image_size, 3), tf_dtype),
      'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0, tf.float32)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).with_options(_options(True))
  return tfds.as_numpy(ds)


def num_eval_batches(dataset: Dataset, split: str, global_batch: int) -> int:
  local_batch = global_batch // jax.process_count()
  return math.ceil(math.ceil(dataset.num_examples(split) / jax.process_count()) / local_batch)


def log_dataset(dataset: Dataset) -> None:
  splits = {k: v.num_examples for k, v in dataset.builder.info.splits.items()}
  logging.info('Dataset %s: %d classes, %s', dataset.builder.info.full_name,
               dataset.num_classes, splits)
