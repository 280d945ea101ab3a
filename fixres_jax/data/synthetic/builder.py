"""fixres_synthetic: the embedded dataset as a tensorflow-datasets builder.

Generated offline, with no downloads, and read back through the same tfds code path as
imagenet2012 (JPEG bytes in TFRecords). Example `index` of `split` is drawn from
np.random.default_rng([seed, split_id, index]), so a dataset is the same on every machine
(given the same NumPy and Pillow) whatever the generation order, and the configs, which share
seed 0, are prefixes of one another: 'tiny' is the first examples of 'default'.
Labels cycle through the classes (index % 10), so every split is balanced.

  import tensorflow_datasets as tfds
  from fixres_jax.data import synthetic  # registers the builder
  builder = tfds.builder('fixres_synthetic/tiny', data_dir=DIR)
  builder.download_and_prepare()
  ds = builder.as_dataset(split='validation')
"""

import dataclasses
import time
from typing import Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fixres_jax.data.synthetic import render

_SPLIT_IDS = {'train': 0, 'validation': 1}


@dataclasses.dataclass
class FixresSyntheticConfig(tfds.core.BuilderConfig):
  """A dataset size and seed.

  Attributes:
    num_train: examples in the 'train' split.
    num_validation: examples in the 'validation' split.
    seed: the root of every example's random stream.
  """
  num_train: int = 10_000
  num_validation: int = 2_000
  seed: int = 0


class FixresSynthetic(tfds.core.GeneratorBasedBuilder):
  """Ten texture classes, one textured object per image on a cluttered background."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      FixresSyntheticConfig(
          name='default', num_train=10_000, num_validation=2_000,
          description='10,000 train / 2,000 validation images: the demo.'),
      FixresSyntheticConfig(
          name='reproduce', num_train=10_000, num_validation=10_000,
          description="The default's training images with 10,000 validation images: "
                      'tighter accuracy estimates for docs/RESULTS.md.'),
      FixresSyntheticConfig(
          name='small', num_train=2_000, num_validation=500,
          description='2,000 train / 500 validation images: quick experiments.'),
      FixresSyntheticConfig(
          name='tiny', num_train=256, num_validation=100,
          description='256 train / 100 validation images: tests, built in seconds.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0] + '\n\n' + (render.__doc__ or ''),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=render.CLASS_NAMES),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated: nothing to download.
    config = self.builder_config
    if min(config.num_train, config.num_validation) < 1:
      raise ValueError(f'fixres_synthetic config {config.name!r} needs at least one example '
                       f'per split, got num_train={config.num_train}, '
                       f'num_validation={config.num_validation}.')
    return {
        'train': self._generate_examples('train', config.num_train),
        'validation': self._generate_examples('validation', config.num_validation),
    }

  def _generate_examples(self, split: str, num_examples: int):
    seed = self.builder_config.seed
    for index in range(num_examples):
      yield index, generate_example(seed, split, index)


def generate_example(seed: int, split: str, index: int) -> dict:
  """Example `index` of `split`, as the builder stores it: JPEG bytes, label, file name."""
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  label = index % render.NUM_CLASSES
  jpeg, _ = render.render_jpeg(rng, label)
  return {'image': jpeg, 'label': label, 'file_name': f'{split}/{index:08d}.jpg'}


def prepare_builder(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Generates `builder`'s dataset unless it is already prepared; returns the builder."""
  if not builder.is_prepared():
    logging.info('Generating %s into %s (first use only)...', builder.info.full_name,
                 builder.data_dir_root)
    start = time.perf_counter()
    builder.download_and_prepare()
    logging.info('Generated %s in %.1f s.', builder.info.full_name,
                 time.perf_counter() - start)
  return builder


def prepare(config_name: str = 'default',
            data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """The prepared fixres_synthetic builder of `config_name`, generated on first use.

  Args:
    config_name: 'default', 'reproduce', 'small' or 'tiny'.
    data_dir: tfds data directory; None for tfds's default (TFDS_DATA_DIR or
      ~/tensorflow_datasets).
  """
  names = [config.name for config in FixresSynthetic.BUILDER_CONFIGS]
  if config_name not in names:
    raise ValueError(f'Unknown fixres_synthetic config {config_name!r}: use one of {names}.')
  return prepare_builder(tfds.builder(f'fixres_synthetic/{config_name}', data_dir=data_dir))
