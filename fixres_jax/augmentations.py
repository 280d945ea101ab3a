"""Every transform option, named once.

Preprocessing (data/preprocess.py) builds the transforms from these tables, config
validation accepts exactly their names, and the cached fine-tuning mode reads how many views
of an image it must store. This module imports no TensorFlow, so the model, step and config
code can read it.
"""

import dataclasses
from typing import Dict

TRAIN_CROPS = ('torchvision', 'inception')  # RandomResizedCrop samplers (see preprocess.py)
DECODES = ('exact', 'fast')  # full decode + resize, or window decode at a DCT scale
TEST_RESIZES = ('shorter', 'official')  # the paper's Resize(S), or the official repository's


@dataclasses.dataclass(frozen=True)
class FinetuneAugment:
  """What the fine-tuning transform adds to the test transform at K_test.

  Attributes:
    flip: a random horizontal flip.
    shift: FixRes v2's random horizontal shift of the central crop.
    jitter: ColorJitter strength (0: none).
    cached_views: views of each image the cached mode stores (the image, and its mirror
      image when flipped); 0 when the transform is random in another way and cannot be cached.
  """
  flip: bool
  shift: bool
  jitter: float
  cached_views: int


FINETUNE_AUGMENTS: Dict[str, FinetuneAugment] = {
    'none': FinetuneAugment(flip=False, shift=False, jitter=0.0, cached_views=1),  # FixRes v1
    'flip': FinetuneAugment(flip=True, shift=False, jitter=0.0, cached_views=2),
    'v2': FinetuneAugment(flip=True, shift=True, jitter=0.05, cached_views=0),  # official v2
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
