"""Where examples come from: a tfds dataset or a folder of images in class subfolders.

Both sources read encoded image bytes (decoding happens later, cropped, in preprocess) and
yield {'image': bytes, 'label': int64, 'index': position in the shard, 'file_name': str}.
"""

import collections.abc
import os
import types
from typing import List, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fixres_jax import errors
from fixres_jax.config import field_value
from fixres_jax.config import split_names
from fixres_jax.data import synthetic  # registers fixres_synthetic with tfds

SYNTHETIC_NAME = 'fixres_synthetic'
FOLDER_NAME = 'folder'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
SPLIT_FIELDS = ('data.train_split', 'data.eval_split', 'finetune.auto_split',
                'sweep.parametric_split')
SPLIT_GRAMMAR = ("Splits use tfds's grammar, e.g. 'train', 'train[:90%]', 'train[-1000:]', "
                 "'train[:50%]+validation'.")

IMAGENET_INSTRUCTIONS = """\
imagenet2012 is not prepared in {data_dir}. It cannot be downloaded automatically:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org
     into a manual directory, e.g. ~/tensorflow_datasets/downloads/manual/
  2. python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012', \\
       data_dir='{data_dir}').download_and_prepare(download_config=\\
       tfds.download.DownloadConfig(manual_dir='MANUAL_DIR'))"
  3. Point config.data.data_dir (or TFDS_DATA_DIR) at {data_dir}.
Or try the recipe on the embedded dataset: --config=configs/demo.py"""


class TfdsSource:
  """A prepared tfds dataset (imagenet2012, fixres_synthetic, any tfds name)."""

  def __init__(self, builder: tfds.core.DatasetBuilder, image_key: str = 'image',
               label_key: str = 'label', file_key: str = 'file_name'):
    self.builder = builder
    self.image_key, self.label_key, self.file_key = image_key, label_key, file_key
    features = builder.info.features
    for key in (image_key, label_key):
      if key not in features:
        raise errors.ConfigError(f'{builder.name} has no feature {key!r} (it has {list(features)}): set '
                       'config.data.image_key / label_key.')

  @property
  def name(self) -> str:
    return self.builder.info.full_name

  @property
  def num_classes(self) -> int:
    feature = self.builder.info.features[self.label_key]
    # A sequence of labels (ImageNet-ReaL's real_label) holds ClassLabels.
    return getattr(feature, 'feature', feature).num_classes

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples

  def ranges(self, split: str) -> List[Tuple[str, int, int]]:
    return resolve_split(split, self.builder.info.splits)

  def read(self, split: str, shard: int = 0, num_shards: int = 1, drop_remainder: bool = True,
           shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
    """Shard `shard` of `num_shards` equal parts of `split`, file order shuffled if seeded."""
    if num_shards > 1:
      split = tfds.even_splits(split, num_shards, drop_remainder=drop_remainder)[shard]
    # No tfds autocache: config.data.cache decides what stays in memory, and a cached read
    # that stops early (read_image_shapes) makes TensorFlow warn about the partial cache.
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, add_tfds_id=False,
                                  try_autocache=False)
    ds = self.builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
        decoders={self.image_key: tfds.decode.SkipDecoding()})
    has_file = self.file_key in self.builder.info.features
    return ds.enumerate().map(lambda i, ex: {
        'image': ex[self.image_key], 'label': tf.cast(ex[self.label_key], tf.int64),
        'index': i, 'file_name': ex[self.file_key] if has_file else tf.strings.as_string(i)})


class FolderSource:
  """Images in ROOT/SPLIT/CLASS/*.{jpg,png,...}: custom and transfer-learning datasets.

  Classes are the sorted subfolders of the first split read (config.data.train_split's
  folder); every other split must use the same class names. Splits take tfds's grammar
  ('train', 'train[:90%]', 'train[-1000:]', 'train[:50%]+validation'), applied to a fixed,
  seeded, class-stratified order of each split's files (stratified_order): every slice
  holds every class in proportion, so 'train[:90%]' and 'train[90%:]' are disjoint, make up
  the whole split, and both hold every class, whatever the number of processes.
  """

  def __init__(self, root: str, class_split: str):
    self.root = root
    if not tf.io.gfile.isdir(root):
      raise errors.NotFoundError(
          f'config.data.folder={root!r} is not a directory: it must hold one folder per '
          'split (train/, validation/), each with one subfolder of images per class.')
    self.classes = sorted(tf.io.gfile.listdir(self._split_dir(class_split)))
    self.classes = [c.rstrip('/') for c in self.classes]
    self._files = {}

  @property
  def name(self) -> str:
    return f'folder:{self.root}'

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def _split_dir(self, split: str) -> str:
    path = os.path.join(self.root, split)
    if not tf.io.gfile.isdir(path):
      raise errors.NotFoundError(f'Split folder {path} is missing: expected {self.root}/{split}/'
                              'CLASS/*.jpg (one subfolder per class).')
    return path

  def _split_files(self, name: str) -> Tuple[List[str], List[int]]:
    """Every file of split folder `name` and its label, in stratified order (cached)."""
    if name not in self._files:
      paths, labels = [], []
      for class_name in sorted(tf.io.gfile.listdir(self._split_dir(name))):
        class_name = class_name.rstrip('/')
        if class_name not in self.classes:
          raise errors.DataError(f'Class folder {self.root}/{name}/{class_name} is not a class of the '
                           f'training split ({len(self.classes)} classes): its label would be '
                           'out of range. Rename or remove it.')
        folder = os.path.join(self.root, name, class_name)
        images = sorted(f for f in tf.io.gfile.listdir(folder)
                        if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
          raise errors.DataError(f'Class folder {folder} holds no images ({IMAGE_EXTENSIONS}).')
        paths += [os.path.join(folder, f) for f in images]
        labels += [self.classes.index(class_name)] * len(images)
      order = stratified_order(np.array(labels))
      self._files[name] = ([paths[i] for i in order], [labels[i] for i in order])
    return self._files[name]

  def ranges(self, split: str) -> List[Tuple[str, int, int]]:
    return resolve_split(split, FolderSplitSizes(self))

  def files(self, split: str) -> Tuple[List[str], List[int]]:
    """File paths and labels of `split` (any tfds split spec), in stratified order."""
    paths, labels = [], []
    for name, start, stop in self.ranges(split):
      split_paths, split_labels = self._split_files(name)
      paths += split_paths[start:stop]
      labels += split_labels[start:stop]
    return paths, labels

  def num_examples(self, split: str) -> int:
    return len(self.files(split)[0])

  def read(self, split: str, shard: int = 0, num_shards: int = 1, drop_remainder: bool = True,
           shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
    paths, labels = self.files(split)
    if drop_remainder:
      keep = len(paths) // num_shards * num_shards
      paths, labels = paths[:keep], labels[:keep]
    ds = tf.data.Dataset.from_tensor_slices({'file_name': paths, 'label': labels})
    ds = ds.shard(num_shards, shard)
    if shuffle_seed is not None:
      ds = ds.shuffle(len(paths), seed=shuffle_seed)
    return ds.enumerate().map(lambda i, ex: {
        'image': tf.io.read_file(ex['file_name']), 'label': tf.cast(ex['label'], tf.int64),
        'index': i, 'file_name': ex['file_name']}, num_parallel_calls=tf.data.AUTOTUNE)


class FolderSplitSizes(collections.abc.Mapping):
  """Split name -> its size, as tfds's slicing reads it; counts only the splits it is asked for."""

  def __init__(self, source: FolderSource):
    self.source = source

  def __getitem__(self, name: str) -> types.SimpleNamespace:
    count = len(self.source._split_files(name)[0])  # pylint: disable=protected-access
    return types.SimpleNamespace(num_examples=count, shard_lengths=[count])

  def __contains__(self, name) -> bool:
    return tf.io.gfile.isdir(os.path.join(self.source.root, name))

  def __iter__(self):
    root = self.source.root
    return iter(sorted(d.rstrip('/') for d in tf.io.gfile.listdir(root)
                       if tf.io.gfile.isdir(os.path.join(root, d))))

  def __len__(self) -> int:
    return len(list(iter(self)))


def read_image_shapes(source, split: str, max_images: int, skip_corrupt: bool = False
                      ) -> np.ndarray:
  """(height, width) of up to `max_images` images of `split`, as an int64 array [m, 2].

  Reads JPEG headers only (tf.image.extract_jpeg_shape); other formats are decoded. Reads in
  order: a folder split's order is class-stratified and a tfds split's records are mixed, so
  the first images span the classes.

  Args:
    skip_corrupt: skip (and log) the images whose size cannot be read, as config.data's
      skip_corrupt does everywhere; m may then be 0.

  Raises:
    errors.DataError: an image whose size cannot be read, without skip_corrupt.
  """
  ds = source.read(split, drop_remainder=False)

  def shape(example):
    data = example['image']
    return tf.cond(
        tf.io.is_jpeg(data), lambda: tf.io.extract_jpeg_shape(data)[:2],
        lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))[:2])

  ds = ds.take(max_images).map(shape, num_parallel_calls=tf.data.AUTOTUNE)
  if skip_corrupt:
    ds = ds.ignore_errors(log_warning=True)
  try:
    shapes = [batch for batch in ds.batch(1024).as_numpy_iterator()]
  except tf.errors.InvalidArgumentError as e:
    raise errors.DataError(
        f'Cannot read the size of an image of {source.name} split {split!r} '
        f'({e.message.splitlines()[0]}). Remove or re-encode it, or set '
        'config.data.skip_corrupt=True to skip such images (each is logged).') from None
  return np.concatenate(shapes or [np.zeros((0, 2))]).astype(np.int64)


def resolve_split(split: str, split_infos) -> List[Tuple[str, int, int]]:
  """A tfds split spec as absolute (split name, start, stop) ranges, by tfds's own rules.

  Args:
    split: e.g. 'train', 'train[:90%]', 'train[-1000:]', 'train[10:20]+validation'.
    split_infos: split name -> object with num_examples (and shard_lengths).

  Raises:
    ValueError: the spec does not parse, or names a split that does not exist.
  """
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
  except (ValueError, NotImplementedError) as e:
    raise errors.ConfigError(f'Cannot read split {split!r}: {e}\nSplits use tfds\'s grammar, e.g. '
                     "'train', 'train[:90%]', 'train[-1000:]', 'train[:50%]+validation'."
                     ) from None
  return [(i.splitname, i.from_ or 0,
           split_infos[i.splitname].num_examples if i.to is None else i.to)
          for i in instructions]


def tfds_reason(error: Exception) -> str:
  """tfds's own explanation: the last line of its message, without its link to the docs."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return (lines[-1] if lines else type(error).__name__).split(' See format at')[0]


def check_split_specs(config) -> None:
  """Every split field parses by tfds's grammar: checked before any dataset is opened.

  Raises:
    errors.ConfigError: naming the field, tfds's reason and the grammar.
  """
  for name in SPLIT_FIELDS:
    spec = field_value(config, name)
    try:
      tfds.core.ReadInstruction.from_spec(spec)
    except (ValueError, NotImplementedError, TypeError) as e:
      raise errors.ConfigError(f'config.{name}={spec!r}: {tfds_reason(e)} {SPLIT_GRAMMAR}'
                               ) from None


def check_split_ranges(config, split_infos, dataset_name: str) -> None:
  """Every split field names splits of the dataset and selects some of their examples.

  Args:
    split_infos: split name -> object with num_examples, as tfds's DatasetInfo.splits (read
      from the dataset's metadata, or known before it is generated).

  Raises:
    errors.ConfigError: naming the field, the problem and the splits there are.
  """
  for name in SPLIT_FIELDS:
    spec = field_value(config, name)
    try:
      instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(split_infos)
    except (ValueError, NotImplementedError, KeyError) as e:
      problem = tfds_reason(e)
    else:
      counts = [(i.to if i.to is not None else split_infos[i.splitname].num_examples)
                - (i.from_ or 0) for i in instructions]
      if all(c > 0 for c in counts):
        continue
      problem = 'it selects no examples.'
    sizes = ', '.join(f'{n} ({split_infos[n].num_examples} examples)' for n in split_infos)
    raise errors.ConfigError(f'config.{name}={spec!r}: {problem} {dataset_name} has {sizes}.')


def stratified_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
  """A fixed permutation of range(len(labels)) whose every contiguous slice is stratified.

  Each class's members are shuffled (seeded) and spread evenly over [0, 1): the j-th of n
  gets the key (j + 0.5) / n. Sorting all keys interleaves the classes so that any slice of
  the order holds each class in proportion to its size, to within a couple of images.
  """
  rng = np.random.default_rng(seed)
  keys = np.zeros(len(labels))
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    keys[members] = (np.arange(len(members)) + 0.5) / len(members)
  class_rank = rng.permutation(int(labels.max()) + 1)[labels] if len(labels) else labels
  return np.lexsort((class_rank, keys))


def split_overlap(source, split_a: str, split_b: str) -> int:
  """How many examples two split specs of `source` share."""
  return sum(max(0, min(stop_a, stop_b) - max(start_a, start_b))
             for name_a, start_a, stop_a in source.ranges(split_a)
             for name_b, start_b, stop_b in source.ranges(split_b) if name_a == name_b)


def create_builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """tfds.builder(name), where a name tfds cannot resolve ends in a ConfigError naming
  config.data.name (tfds's own error is a traceback listing every dataset it knows)."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except ValueError as e:  # DatasetNotFoundError is one, as are a malformed name and config
    problem = name_problem(name, e)
    if not problem:
      raise  # the name resolves: the builder itself failed, a bug
    raise errors.ConfigError(problem) from None


def name_problem(name: str, error: ValueError) -> str:
  """What is wrong with config.data.name, given tfds.builder's error; '' if nothing is."""
  try:
    dataset, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
    if dataset.namespace:  # a community dataset: only tfds.builder resolves those
      return ''
    configs = tuple(tfds.builder_cls(dataset.name).builder_configs)
  except ValueError:  # no such dataset, or a malformed name
    reason = str(error).partition('\n')[0]
    return (f"config.data.name={name!r}: {reason} Use a tfds name (e.g. 'imagenet2012'), "
            f"'{SYNTHETIC_NAME}/default' (the embedded dataset) or '{FOLDER_NAME}' (images "
            'in config.data.folder).')
  config = kwargs.get('config')
  if config is None or config in configs:
    return ''
  names = tuple(f'{dataset.name}/{c}' for c in configs) or (dataset.name,)
  return (f'config.data.name={name!r}: {dataset.name} has no config {config!r}: use one of '
          f'{names}.')


def load_eval_source(config, name: str, eval_set):
  """The source of evaluation set `name` (an evalsets.EvalSet naming a tfds dataset).

  The embedded dataset's shifts are generated on first use; any other dataset must be
  prepared in config.data.data_dir.

  Raises:
    errors.NotFoundError: the dataset is not prepared, with eval_set.prepare's instructions.
    errors.ConfigError: tfds knows no such dataset, or it lacks the image or label feature.
  """
  data_dir = config.data.data_dir or None
  builder = create_builder(eval_set.dataset, data_dir)
  if eval_set.dataset.split('/')[0] == SYNTHETIC_NAME:
    if jax.process_index() == 0:
      synthetic.prepare_builder(builder)
    multihost_utils.sync_global_devices(f'{eval_set.dataset} prepared')
    builder = tfds.builder(eval_set.dataset, data_dir=data_dir)
  elif not builder.is_prepared():
    raise errors.NotFoundError(
        f'Evaluation set {name!r} (config.sweep.evals) reads {eval_set.dataset}, which is not '
        f'prepared in {builder.data_dir_root}. {eval_set.prepare}')
  check_split_ranges_of(f'sweep.evals[{name!r}]', eval_set.split, builder.info.splits,
                        builder.info.full_name)
  return TfdsSource(builder, eval_set.image_key, eval_set.label_key)


def check_split_ranges_of(field: str, spec: str, split_infos, dataset_name: str) -> None:
  """check_split_ranges for one split spec, named `field` in the error."""
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(split_infos)
  except (ValueError, NotImplementedError, KeyError) as e:
    sizes = ', '.join(f'{n} ({split_infos[n].num_examples} examples)' for n in split_infos)
    raise errors.ConfigError(f'config.{field}: split {spec!r}: {tfds_reason(e)} '
                             f'{dataset_name} has {sizes}.') from None
  del instructions


def present_classes(source, split: str) -> tuple:
  """The sorted labels that occur in `split` (the classes of a 'subset' evaluation set)."""
  labels = source.read(split, drop_remainder=False).map(lambda ex: ex['label'])
  found = set()
  for batch in labels.batch(4096).as_numpy_iterator():
    found.update(np.unique(batch).tolist())
  return tuple(int(c) for c in sorted(found))


def load_source(config):
  """The source named by config.data.name (building the embedded dataset on first use).

  Raises:
    FileNotFoundError: the dataset is not prepared, with instructions to prepare it.
    ValueError: tfds knows no dataset or config by that name (errors.ConfigError).
  """
  data = config.data
  if data.name == FOLDER_NAME:
    source = FolderSource(data.folder, split_names(data.train_split)[0])
    check_split_ranges(config, FolderSplitSizes(source), source.name)
    return source
  data_dir = data.data_dir or None
  builder = create_builder(data.name, data_dir)
  if data.name.split('/')[0] == SYNTHETIC_NAME:
    planned = builder.builder_config  # its splits' sizes, known before it is generated
    check_split_ranges(config, {
        'train': types.SimpleNamespace(num_examples=planned.num_train),
        'validation': types.SimpleNamespace(num_examples=planned.num_validation)}, data.name)
    # Generated on first use, by one process while the others wait.
    if jax.process_index() == 0:
      synthetic.prepare_builder(builder)
    multihost_utils.sync_global_devices('fixres_synthetic prepared')
    builder = tfds.builder(data.name, data_dir=data_dir)
  elif not builder.is_prepared():
    if data.name.startswith('imagenet2012'):
      raise errors.NotFoundError(IMAGENET_INSTRUCTIONS.format(data_dir=builder.data_dir_root))
    raise errors.NotFoundError(
        f'Dataset {data.name!r} is not prepared in {builder.data_dir_root}. Prepare it '
        f"with `tfds build {data.name} --data_dir=DIR` and set config.data.data_dir=DIR.")
  check_split_ranges(config, builder.info.splits, builder.info.full_name)
  logging.info('Reading %s from %s.', builder.info.full_name, builder.data_dir)
  return TfdsSource(builder, data.image_key, data.label_key)
