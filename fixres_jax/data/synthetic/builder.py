"""fixres_synthetic: the embedded dataset as a tensorflow-datasets builder.

Generated offline, with no downloads, and read back through the same tfds code path as
imagenet2012 (JPEG bytes in TFRecords). Example `index` of `split` is drawn from
np.random.default_rng([seed, split_id, index]), so a dataset is the same on every machine
(given the same NumPy and Pillow) whatever the generation order, and the configs, which share
seed 0, are prefixes of one another: 'tiny' is the first examples of 'default'.
Labels cycle through the classes (index % 10), so every split is balanced. Large splits are
rendered on every core (examples.py), into the same bytes.

The shift_* configs hold only a validation split: the 'default' config's validation scenes
drawn in a style of render.SHIFTS (more noise, lower JPEG quality, blur, smaller objects),
evaluation sets of the sweep (config.sweep.evals, evalsets.py).

  import tensorflow_datasets as tfds
  from fixres_jax.data import synthetic  # registers the builder
  builder = tfds.builder('fixres_synthetic/tiny', data_dir=DIR)
  builder.download_and_prepare()
  ds = builder.as_dataset(split='validation')
"""

import contextlib
import dataclasses
import time
from typing import Optional

from absl import logging
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils
import tqdm

from fixres_jax.data.synthetic import examples
from fixres_jax.data.synthetic import render


@dataclasses.dataclass
class FixresSyntheticConfig(tfds.core.BuilderConfig):
  """A dataset size and seed.

  Attributes:
    num_train: examples in the 'train' split.
    num_validation: examples in the 'validation' split.
    seed: the root of every example's random stream.
    shift: a name of render.SHIFTS ('': the dataset's own style); a shifted config has no
      training split (num_train 0).
  """
  num_train: int = 10_000
  num_validation: int = 2_000
  seed: int = 0
  shift: str = ''


class FixresSynthetic(tfds.core.GeneratorBasedBuilder):
  """Ten texture classes, one textured object per image on a cluttered background."""

  VERSION = tfds.core.Version('4.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '2.0.0': 'Texture contrast 24-144 grey levels (was 12-72): the demo network no longer '
               'sits at chance for a third of its training (docs/DEMO.md).',
      '3.0.0': 'Objects 0.4-0.9 of the short side (was 0.2-0.8) with 8-16 texture cycles (was '
               '4-8): the texture covers more of each crop, with periods a little finer, and the '
               'demo network leaves chance within two thirds of an epoch.',
      '4.0.0': 'Images 128-192 px on the short side (was 200-320), the same scenes: the demo '
               'trains at 48 px and the dataset is drawn and decoded in about half the time.',
  }
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
  ] + [
      FixresSyntheticConfig(
          name=f'shift_{shift}', num_train=0, num_validation=2_000, shift=shift,
          description=f"The default's 2,000 validation scenes with render.SHIFTS[{shift!r}]: "
                      'a shifted test set, no training split.')
      for shift in render.SHIFTS
  ]

  _progress = None  # one bar over every example of the dataset, while it is generated

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
    if min(config.num_train, config.num_validation) < 1 and not (
        config.shift and config.num_validation >= 1):
      raise ValueError(f'fixres_synthetic config {config.name!r} needs at least one example '
                       f'per split, got num_train={config.num_train}, '
                       f'num_validation={config.num_validation}.')
    self._progress = tqdm.tqdm(total=config.num_train + config.num_validation, leave=False,
                               desc=f'Generating {self.info.full_name}', unit=' images',
                               mininterval=1.0)
    splits = {'validation': self._generate_examples('validation', config.num_validation)}
    if config.num_train:  # a shifted config is a test set only
      splits = {'train': self._generate_examples('train', config.num_train), **splits}
    return splits

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    rendered = examples.generate_examples(config.seed, split, num_examples,
                                          examples.count_workers(num_examples),
                                          shift=config.shift)
    for index, example in enumerate(rendered):
      yield index, example
      self._progress.update()

  def download_and_prepare(self, **kwargs) -> None:
    """tfds's, showing one progress bar in place of tfds's nested ones (splits, shuffling)."""
    with hidden_tfds_progress_bars():
      try:
        super().download_and_prepare(**kwargs)
      finally:
        if self._progress is not None:
          self._progress.close()
          self._progress = None

  # tfds prints these two lines to stdout whatever the log level; prepare_builder logs its own.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


@contextlib.contextmanager
def hidden_tfds_progress_bars():
  """tfds's progress bars off inside the block, then as they were (tfds has no getter)."""
  shown = getattr(tqdm_utils, '_active', True)
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(shown)


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
    config_name: 'default', 'reproduce', 'small', 'tiny' or a shift ('shift_noise', ...).
    data_dir: tfds data directory; None for tfds's default (TFDS_DATA_DIR or
      ~/tensorflow_datasets).
  """
  names = [config.name for config in FixresSynthetic.BUILDER_CONFIGS]
  if config_name not in names:
    raise ValueError(f'Unknown fixres_synthetic config {config_name!r}: use one of {names}.')
  return prepare_builder(tfds.builder(f'fixres_synthetic/{config_name}', data_dir=data_dir))
