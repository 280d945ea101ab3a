"""Every transform option, named once.

Preprocessing (data/preprocess.py) builds the transforms from these tables, config
validation accepts exactly their names, and the cached fine-tuning mode reads how many views
of an image it must store; config.data.randaugment is parsed here (parse_randaugment). This
module imports no TensorFlow, so the model, step and config code can read it.
"""

import dataclasses
import math
import re
from typing import Dict, Optional

TRAIN_CROPS = ('torchvision', 'inception')  # RandomResizedCrop samplers (see preprocess.py)
DECODES = ('exact', 'fast')  # full decode + resize, or window decode at a DCT scale
TEST_RESIZES = ('shorter', 'official')  # the paper's Resize(S), or the official repository's
# Resampling filters of the test and fine-tuning transforms, PIL's (antialiased) by their
# torchvision/timm names: bilinear (torchvision's weights, FixRes), bicubic (most timm weights).
INTERPOLATIONS = ('bilinear', 'bicubic', 'lanczos')
# RandAugment's affine ops (data/randaugment.py): PIL's bilinear or bicubic, or timm's train
# default 'random' (either, drawn per op).
RANDAUGMENT_INTERPOLATIONS = ('bilinear', 'bicubic', 'random')
# Where the test transform's K x K window lies (preprocess.test_frame): torchvision's
# Resize + CenterCrop, timm's 'squash' and 'border', and flax's fixed margin.
TEST_CROP_MODES = ('center', 'squash', 'border', 'margin')
# The normalised images' dtype as they leave tf.data: bfloat16 halves the host-to-device bytes.
IMAGE_DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class FinetuneAugment:
  """What the fine-tuning transform adds to the test transform at K_test.

  Attributes:
    flip: a random horizontal flip.
    shift: FixRes v2's random horizontal shift of the central crop.
    jitter: ColorJitter strength (0: none).
    whole_first: flip and jitter the whole resized image before the crop, in the official
      v2 order (transforms_v2.py: Resize, RandomHorizontalFlip, ColorJitter, CenterCrop), so
      the contrast blends with the whole image's mean grey; False: after the crop.
    cached_views: views of each image the cached mode stores (the image, and its mirror
      image when flipped); 0 when the transform is random in another way and cannot be cached.
  """
  flip: bool
  shift: bool
  jitter: float
  cached_views: int
  whole_first: bool = False


FINETUNE_AUGMENTS: Dict[str, FinetuneAugment] = {
    'none': FinetuneAugment(flip=False, shift=False, jitter=0.0, cached_views=1),  # FixRes v1
    'flip': FinetuneAugment(flip=True, shift=False, jitter=0.0, cached_views=2),
    # The official v2 recipe in its own order: the name the configs use, so that 'v2' means
    # the pixels the released v2 numbers came from.
    'v2': FinetuneAugment(flip=True, shift=True, jitter=0.05, cached_views=0, whole_first=True),
    # The same augmentations after the crop: only the window is resampled (cheaper, and
    # decode='fast' applies); the contrast uses the crop's mean grey instead of the image's.
    'v2_crop': FinetuneAugment(flip=True, shift=True, jitter=0.05, cached_views=0),
}
CACHEABLE_AUGMENTS = tuple(k for k, v in FINETUNE_AUGMENTS.items() if v.cached_views)


def finetune_augment(name: str) -> FinetuneAugment:
  """The registry entry of config.finetune.augment, or a ValueError listing the names."""
  if name not in FINETUNE_AUGMENTS:
    raise ValueError(f'Unknown finetune augment {name!r}: use one of '
                     f'{tuple(FINETUNE_AUGMENTS)} (config.finetune.augment).')
  return FINETUNE_AUGMENTS[name]


def cached_views(name: str) -> int:
  """Views per image the cached mode stores for augment `name`; a ValueError if random."""
  views = finetune_augment(name).cached_views
  if not views:
    raise ValueError(
        f"config.finetune.augment={name!r} is random, so its features cannot be cached: "
        f"use {CACHEABLE_AUGMENTS} with config.finetune.mode='cached', or mode='sgd'.")
  return views


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """timm's RandAugment settings (data/randaugment.py applies them); timm's defaults.

  Attributes:
    num_layers: ops drawn per image, uniformly with replacement ('n').
    magnitude: the mean magnitude, on timm's 0-10 scale ('m').
    magnitude_std: std of the Gaussian noise on the magnitude, 0 for none, math.inf for a
      magnitude uniform in [0, magnitude] ('mstd'; timm reads mstd > 100 as inf).
    magnitude_max: the noisy magnitude is clipped to [0, magnitude_max] ('mmax').
    increasing: use timm's 'Increasing' op list, whose severity grows with the magnitude
      ('inc').
    prob: probability of applying each drawn op ('p').
  """
  num_layers: int = 2
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  magnitude_max: float = 10.0
  increasing: bool = False
  prob: float = 0.5


RANDAUGMENT_EXAMPLE = 'rand-m6-mstd0.5-inc1'  # ResNet strikes back's A3 recipe
# Section key -> (RandAugmentSpec field, parser), as timm's rand_augment_transform reads them.
_RANDAUGMENT_SECTIONS = {
    'm': ('magnitude', lambda v: float(int(v))),
    'n': ('num_layers', int),
    'mstd': ('magnitude_std', lambda v: math.inf if float(v) > 100 else float(v)),
    'mmax': ('magnitude_max', lambda v: float(int(v))),
    'inc': ('increasing', lambda v: bool(int(v))),
    'p': ('prob', float),
}


def parse_randaugment(spec: str) -> Optional[RandAugmentSpec]:
  """config.data.randaugment, a timm RandAugment string, as a RandAugmentSpec ('' -> None).

  timm's grammar: 'rand' then '-'-separated sections, each a key and a number: m (integer
  magnitude, default 10), n (integer ops per image, default 2), mstd (magnitude noise std;
  above 100 means uniform in [0, m]), mmax (integer clip of the magnitude, default 10), inc
  (0/1, the 'Increasing' ops), p (probability of each op, default 0.5). E.g.
  'rand-m9-mstd0.5', 'rand-m7-n3-mstd1.0-inc1'.

  Stricter than timm, which silently ignores a section without a digit (so 'mstdinf' or a
  typo does nothing), lets a repeated section override (or not: mstd and mmax keep the
  first), reads mmax0 as 10 and p > 1 as 1: those raise here, as do its transform-set
  sections ('t...'), which this implementation does not have.

  Raises:
    ValueError: naming the bad section.
  """
  if not spec:
    return None
  first, *sections = spec.split('-')
  if first != 'rand':
    _bad_randaugment(spec, f"it must start with 'rand', not {first!r}")
  values = {}
  for section in sections:
    if section.startswith('t'):
      _bad_randaugment(spec, f"timm's transform sets ({section!r}) are not implemented")
    key, number = re.match(r'(\D*)(.*)', section).groups()  # timm's split: at the 1st digit
    if key not in _RANDAUGMENT_SECTIONS:
      _bad_randaugment(spec, f'unknown section {section!r}')
    if not number:
      _bad_randaugment(spec, f'section {section!r} has no number')
    field, parse = _RANDAUGMENT_SECTIONS[key]
    if field in values:
      _bad_randaugment(spec, f'section {key!r} given twice ({section!r})')
    try:
      values[field] = parse(number)
    except ValueError:
      _bad_randaugment(spec, f'cannot read the number of section {section!r}')
  result = RandAugmentSpec(**values)
  if not 0 <= result.prob <= 1:
    _bad_randaugment(spec, f'the probability p={result.prob} is not in [0, 1]')
  if result.magnitude_max <= 0:
    _bad_randaugment(spec, f'mmax={result.magnitude_max:g} must be positive')
  return result


def _bad_randaugment(spec: str, why: str):
  raise ValueError(
      f'Bad RandAugment spec {spec!r} (config.data.randaugment): {why}. Use timm\'s '
      f"grammar, 'rand' then sections m (magnitude), n (ops per image), mstd (magnitude "
      f"std), mmax (magnitude clip), inc (0/1) or p (op probability), e.g. "
      f"{RANDAUGMENT_EXAMPLE!r}; '' turns it off.")
