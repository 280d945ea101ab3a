"""Evaluation sets: what the sweep scores besides (or instead of) the validation split.

config.sweep.evals names sets of this registry; the sweep evaluates every model at every
K_test on each, in one pass per set and resolution. A set is a dataset, a split and a label
rule:

  'single'  one label per image: top-1 is correct when the argmax is the label.
  'real'    several labels per image, as ImageNet-ReaL (Beyer et al. 2020, the scoring of
            timm's data/real_labels.py): an image without labels is left out, top-k is correct
            when any of the k best predictions is one of its labels; the NLL is that of the
            probability given to the label set.
  'subset'  the labels cover some of the model's classes, as ImageNet-A and -R (200 of the
            1000): the logits are restricted to those classes before the argmax, the softmax
            and the calibration. The classes are those present in the set's split.

Calibration beside accuracy: ECE over ECE_BINS equal-width confidence bins (the confidence is
the top softmax probability, within the subset for 'subset') and the NLL, per set, model and
K_test.

Register another set from a config file with register_eval_set (e.g. a folder of images or a
tfds dataset with the model's label space). No TensorFlow here: the data side is
fixres_jax/data/sources.py (load_eval_source).
"""

import dataclasses
from typing import Dict

LABEL_RULES = ('single', 'real', 'subset')
PRIMARY = 'validation'  # config.data's own eval split: the sweep's first set, its headline
ECE_BINS = 15

_TFDS_BUILD = ('`tfds build {dataset} --data_dir=DIR` (it downloads {what}), then set '
               'config.data.data_dir=DIR.')
SYNTHETIC_SHIFT_HELP = ('Generated from the embedded dataset on first use into '
                        'config.data.data_dir, like fixres_synthetic itself.')


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation set.

  Attributes:
    dataset: a tfds name (with its config), or '' for config.data's dataset.
    split: a tfds split spec, or '' for config.data.eval_split.
    rule: one of LABEL_RULES.
    label_key: the feature holding the label(s) ('real': a sequence of class indices).
    image_key: the feature holding the encoded image.
    prepare: how to prepare the dataset when it is missing (shown after `Error:`).
  """
  dataset: str = ''
  split: str = ''
  rule: str = 'single'
  label_key: str = 'label'
  image_key: str = 'image'
  prepare: str = ''


EVAL_SETS: Dict[str, EvalSet] = {}


def register_eval_set(name: str, eval_set: EvalSet) -> EvalSet:
  """Adds `eval_set` to the registry under `name` (a name config.sweep.evals may hold)."""
  if eval_set.rule not in LABEL_RULES:
    raise ValueError(f'Eval set {name!r}: rule {eval_set.rule!r} is not one of {LABEL_RULES}.')
  EVAL_SETS[name] = eval_set
  return eval_set


def eval_set_names() -> tuple:
  return tuple(EVAL_SETS)


def resolve(config, name: str) -> EvalSet:
  """The registered set `name`, with config.data's dataset, split and keys filled in."""
  eval_set = EVAL_SETS[name]
  if eval_set.dataset:
    return eval_set
  return dataclasses.replace(eval_set, dataset=config.data.name,
                             split=eval_set.split or config.data.eval_split,
                             label_key=config.data.label_key, image_key=config.data.image_key)


def parse_names(evals) -> tuple:
  """Accepts --config.sweep.evals=validation,synthetic_blur as well as a tuple of names."""
  entries = (evals,) if isinstance(evals, str) else evals
  return tuple(s.strip() for entry in entries for s in entry.split(',') if s.strip())


def problems(config) -> list:
  """What is wrong with config.sweep.evals: unknown names, repeats, none at all."""
  names = parse_names(config.sweep.evals)
  found = [f'config.sweep.evals has {n!r}: use names of {eval_set_names()} (or register one '
           'with evalsets.register_eval_set).' for n in names if n not in EVAL_SETS]
  if not names:
    found.append(f"config.sweep.evals=(): give at least one set, e.g. ('{PRIMARY}',).")
  if len(set(names)) != len(names):
    found.append(f'config.sweep.evals={names} names a set twice.')
  return found


register_eval_set(PRIMARY, EvalSet())

# ImageNet's robustness sets, under their tensorflow-datasets names; every one is in
# imagenet2012's 1000-class label space.
register_eval_set('imagenet_v2', EvalSet(
    'imagenet_v2/matched-frequency', 'test',
    prepare=_TFDS_BUILD.format(dataset='imagenet_v2/matched-frequency',
                               what='10,000 images')))
register_eval_set('imagenet_real', EvalSet(
    'imagenet2012_real', 'validation', 'real', label_key='real_label',
    prepare='It needs the ImageNet validation images, which cannot be downloaded '
            'automatically: put ILSVRC2012_img_val.tar (https://image-net.org) in MANUAL_DIR, '
            'run `tfds build imagenet2012_real --manual_dir=MANUAL_DIR --data_dir=DIR` (it '
            'downloads the ReaL labels), then set config.data.data_dir=DIR.'))
register_eval_set('imagenet_a', EvalSet(
    'imagenet_a', 'test', 'subset',
    prepare=_TFDS_BUILD.format(dataset='imagenet_a', what='7,500 images')))
register_eval_set('imagenet_r', EvalSet(
    'imagenet_r', 'test', 'subset',
    prepare=_TFDS_BUILD.format(dataset='imagenet_r', what='30,000 images')))
register_eval_set('imagenet_sketch', EvalSet(
    'imagenet_sketch', 'test',
    prepare=_TFDS_BUILD.format(dataset='imagenet_sketch', what='50,889 images')))

# Shifts of the embedded dataset's validation images (data/synthetic/render.py SHIFTS): the
# same scenes and classes, drawn with one range changed.
SYNTHETIC_SHIFTS = ('noise', 'jpeg', 'blur', 'small')
for _shift in SYNTHETIC_SHIFTS:
  register_eval_set(f'synthetic_{_shift}', EvalSet(
      f'fixres_synthetic/shift_{_shift}', 'validation', prepare=SYNTHETIC_SHIFT_HELP))
