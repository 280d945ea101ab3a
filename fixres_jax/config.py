"""The base configuration every file in configs/ starts from, and its validation."""

import math
import os
import re

import ml_collections
import numpy as np
from ml_collections import config_dict

from fixres_jax import augmentations
from fixres_jax import errors
from fixres_jax import evalsets

STAGES = ('train', 'finetune', 'sweep')
AUTO_METRICS = ('top1', 'loss', 'calibrated_loss')  # what finetune.test_res='auto' optimises
AUTO_MODELS = ('trained', 'adapted')  # which network finetune.test_res='auto' scores
MAX_RESOLUTION = 4096  # px, any K_train or K_test: one such float32 image is 200 MB
# Real-valued fields: (least, greatest, whether each bound is allowed, what the values mean).
# NaN and the infinities are outside every range.
REAL_RANGES = {
    'train.base_lr': (0, math.inf, False, False, 'per 256 images, e.g. 0.1'),
    'finetune.base_lr': (0, math.inf, True, False,
                         'per 512 images, e.g. 0.008; 0 updates the last BN statistics only'),
    'train.num_epochs': (0, math.inf, False, False, 'e.g. 90'),
    'finetune.num_epochs': (0, math.inf, False, False,
                            "to skip fine-tuning, leave 'finetune' out of config.stages"),
    'train.warmup_epochs': (0, math.inf, True, False, '0: no warm-up'),
    'train.lr_decay_factor': (0, 1, False, True, 'the step schedule\'s factor, e.g. 0.1'),
    'train.momentum': (0, 1, True, False, 'e.g. 0.9'),
    'finetune.momentum': (0, 1, True, False, 'e.g. 0.9'),
    'train.weight_decay': (0, math.inf, True, False, 'e.g. 1e-4'),
    'finetune.weight_decay': (0, math.inf, True, False, 'e.g. 1e-4'),
    'train.label_smoothing': (0, 1, True, False, 'e.g. 0.1; 0: off'),
    'train.bce_threshold': (0, 1, True, False, 'e.g. 0.2; 0: off'),
    'train.mixup_alpha': (0, math.inf, True, False, 'e.g. 0.1; 0: off'),
    'train.cutmix_alpha': (0, math.inf, True, False, 'e.g. 1.0; 0: off'),
    'train.eval_every_epochs': (0, math.inf, True, False, '0: at the end only'),
    'finetune.lr_decay_epochs': (0, math.inf, False, False, 'e.g. 30'),
    'finetune.auto_max_ms_per_image': (0, math.inf, True, False,
                                       'ms per image at sweep.latency_batch_size; 0: no budget'),
}
# Integer fields and their least value; the error's example is the base config's default.
INTEGER_MINIMUMS = {'seed': 0, 'finetune.cache_in_memory_mb': 0,
                    'model.num_filters': 1, 'data.shuffle_buffer': 1, 'data.num_shards': 0,
                    'train.log_every_steps': 1, 'finetune.log_every_steps': 1,
                    'train.profile_steps': 0, 'finetune.profile_steps': 0,
                    'checkpoint.every_steps': 1, 'checkpoint.max_to_keep': 1,
                    'data.test_resize_size': 0, 'data.test_crop_margin': 0,
                    'sweep.latency_batch_size': 0}


def get_base_config() -> ml_collections.ConfigDict:
  """Defaults: the paper's ResNet-50 recipe at K_train=224 on imagenet2012."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stages = STAGES
  config.deterministic = True
  config.allow_cpu_with_gpu = False  # True: train on the CPU even where a GPU is visible
  config.init_from = ''  # an orbax checkpoint or a `fixres_jax.convert` output directory
  config.init_head = True  # False: a new classifier (transfer to another number of classes)
  # A re-run in a workdir whose saved work was made with other values of some fields is
  # refused (rerun.py); 'train' or 'finetune' runs that stage (and the later one) again, the
  # saved work moved to WORKDIR/replaced/N. Nothing is redone while the values agree.
  config.redo = ''

  config.data = data = ml_collections.ConfigDict()
  data.name = 'imagenet2012'  # a tfds name, 'fixres_synthetic/default', or 'folder'
  data.data_dir = ''  # '' = TFDS_DATA_DIR or ~/tensorflow_datasets
  data.folder = ''  # for name='folder': FOLDER/{train,validation}/CLASS/*.jpg
  data.skip_corrupt = False  # True: skip (and log) undecodable images instead of stopping
  data.cache = False  # keep the encoded images in memory (datasets that fit)
  data.train_split = 'train'
  data.eval_split = 'validation'
  data.image_key = 'image'
  data.label_key = 'label'
  data.crop = 'torchvision'  # train crop sampler: 'torchvision' (FixRes) or 'inception'
  data.crop_pct = 0.875  # test transform: resize to K_test / crop_pct, central K_test crop
  data.shuffle_buffer = 16_384
  # Training order is defined per data shard (0: one per process). Fix it to keep the same
  # batches when the number of processes changes (e.g. resuming on another slice).
  data.num_shards = 0
  data.dtype = 'float32'  # images as they leave tf.data
  # A tf.data service dispatcher (HOST:PORT; `python -m fixres_jax.data.service` starts one):
  # its workers make the training batches, the same ones in the same order. '' = locally.
  data.service = ''
  # The official recipe's training extras (see configs/r50_224.py): ColorJitter(x, x, x) after
  # the crop and flip (0: none), and repeated augmentation (RASampler: each image drawn
  # ra_repetitions times in a row, an epoch is ra_len_factor x the split; 1, 1.0: off).
  data.color_jitter = 0.0
  # timm's RandAugment after the crop and flip, e.g. 'rand-m6-mstd0.5-inc1' (ResNet strikes
  # back A3; data/randaugment.py); '' = off. Replaces the colour jitter, as in timm.
  data.randaugment = ''
  # Its affine ops' filter: 'bilinear' (the default, as before this option), 'bicubic', or
  # 'random' (timm's train default, which its recipes ran with: either, drawn per op).
  data.randaugment_interpolation = 'bilinear'
  data.ra_repetitions = 1
  data.ra_len_factor = 1.0
  # 'exact': full decode, then the antialiased resize (PIL's pixels); 'fast': decode only the
  # window, DCT-scaled when it is >= 2x the output (see preprocess.py and README).
  data.decode = 'exact'  # test and fine-tuning transforms
  data.train_decode = 'fast'  # the train transform (random crops)
  # Test / fine-tuning resize: 'shorter' (shorter side to K_test / crop_pct, the paper) or
  # 'official' (the FixRes repository's: height to K_test / crop_pct, black columns on
  # narrow portraits), to evaluate converted official weights on the official pixels.
  data.test_resize = 'shorter'
  # The test and fine-tuning transforms' resampling filter, antialiased as PIL's: 'bilinear'
  # (torchvision's weights, FixRes), 'bicubic' (timm's for most weights) or 'lanczos'.
  data.test_interpolation = 'bilinear'
  # Where the K_test x K_test window lies (preprocess.test_frame): 'center' (resize the shorter
  # side to S, central crop: torchvision, timm's default), 'squash' (both sides to S, central
  # crop) or 'border' (the longer side to S, padded with the mean colour): timm's modes; or
  # 'margin' (flax, big_vision: the central square of K / (K + test_crop_margin) of the
  # shorter side, cropped then resized; crop_pct and test_resize_size play no part).
  data.test_crop_mode = 'center'
  # S in pixels for every K_test (torchvision's ResNet-50 V2 weights: 232 for K_test 224);
  # 0: S = floor(K_test / crop_pct), the crop fraction kept as K_test moves.
  data.test_resize_size = 0
  data.test_crop_margin = 32  # 'margin' mode: flax's CROP_PADDING

  config.model = model = ml_collections.ConfigDict()
  model.name = 'resnet50'
  model.dtype = 'float32'  # computation dtype; 'bfloat16' keeps float32 parameters
  model.zero_init_residual = False
  model.zero_init_head = False  # a zero classifier kernel at the start (big_vision's)
  # Stochastic depth: the last block's probability of dropping its residual branch in
  # training, linearly less in earlier blocks (timm's drop_path_rate; 0: off).
  model.drop_path_rate = 0.0
  # BatchNorm statistics over groups of this many images of the global batch, as per-GPU BN
  # in PyTorch DDP (0: over the whole global batch, i.e. synchronised BN).
  model.bn_group_size = 0
  # The input's size over the last feature map's: 32 as torchvision; 16 or 8 run the last
  # stages at stride 1 (the same parameters, more positions to pool over).
  model.output_stride = 32
  # Only for name='resnet' (custom depth and width):
  model.stage_sizes = (2, 2, 2, 2)
  model.block = 'basic'
  model.num_filters = 64

  config.train = train = ml_collections.ConfigDict()
  train.image_size = 224  # K_train
  # Progressive resizing: ((epoch, size), ...) trains from each epoch on at its size, ending
  # at image_size, e.g. ramp_image_sizes(160, 192, 65, 76) as FFCV's ResNet-50 recipes;
  # () = image_size throughout. The train step compiles once per size.
  train.image_size_schedule = ()
  train.batch_size = 512  # global
  train.num_epochs = 120
  train.base_lr = 0.1  # per 256 images (linear scaling rule)
  train.schedule = 'step'
  train.lr_decay_epochs = (30, 60, 90)
  train.lr_decay_factor = 0.1
  train.warmup_epochs = 0.0
  train.momentum = 0.9
  train.nesterov = False
  train.weight_decay = 1e-4
  train.no_decay = ()  # regexes over 'module/param' names excluded from weight decay
  train.label_smoothing = 0.0
  train.optimizer = 'sgd'  # or 'lamb' (timm's, as the ResNet-strikes-back recipes use it)
  train.loss = 'softmax'  # or 'bce' (timm's binary cross-entropy on the one-hot targets)
  train.bce_threshold = 0.0  # 'bce': targets above it become 1, the others 0 (0: off)
  # Mixup / CutMix with timm's semantics (fixres_jax/mixing.py); 0: off.
  train.mixup_alpha = 0.0
  train.cutmix_alpha = 0.0
  train.mix_prob = 1.0  # the probability that a batch is mixed at all
  train.mix_switch_prob = 0.5  # with both alphas: the probability of CutMix over Mixup
  # An exponential moving average of the weights and BN statistics, updated every step with
  # this decay (timm's ModelEmaV2; 0: off). It is evaluated beside the raw weights
  # ('val_ema_*' metrics), checkpointed with them, and is what fine-tuning and the sweep use.
  train.ema_decay = 0.0
  train.log_every_steps = 100
  train.eval_every_epochs = 0  # 0: evaluate at the end only
  train.profile_steps = 0  # >0: a jax.profiler trace of that many steps in WORKDIR/profile

  config.finetune = finetune = ml_collections.ConfigDict()
  # K_test: an int, or 'auto' (the trained model's best on auto_split, see analysis.py).
  # Typed `object` so that --config.finetune.test_res=auto and =96 both parse.
  finetune.test_res = config_dict.FieldReference(288, field_type=object)
  finetune.auto_split = 'train[-10%:]'  # a slice of the TRAINING split, never validation
  finetune.auto_resolutions = ()  # K_test candidates for 'auto'; () = sweep.resolutions
  # Crop fractions 'auto' chooses jointly with K_test (every pair of the grid evaluated on
  # auto_split; fine-tuning then uses the chosen data.crop_pct); () = data.crop_pct alone.
  finetune.auto_crop_pcts = ()
  # What 'auto' maximises on auto_split: 'top1' (the paper's choice, on a validation set), or
  # 'loss' (the lowest cross-entropy: on a small slice, top-1's sampling error can exceed the
  # differences between neighbouring K_test, while the loss uses every probability), or
  # 'calibrated_loss' (the cross-entropy at the best temperature, evaluate.TEMPERATURES: the
  # loss's precision without its dependence on the logits' scale, which moves with K_test
  # and which FixRes fine-tuning corrects).
  finetune.auto_metric = 'top1'
  # Which network 'auto' scores at each K_test: 'trained' (the trained network, as the paper
  # reads its test-resolution curves), or 'adapted' (the trained network with the adapter the
  # cached mode fits at that K_test, adapters.fit_candidate: where the fine-tuned network, not
  # the trained one, is best; it costs the cached mode's two passes per candidate, and needs
  # the cached mode's augment and last-BN settings whatever finetune.mode).
  finetune.auto_model = 'trained'
  # A latency budget for 'auto': only the K_test whose forward pass takes at most this many ms
  # per image (latency.py: one device, batch sweep.latency_batch_size) compete; 0: no budget.
  finetune.auto_max_ms_per_image = 0.0
  finetune.batch_size = 512
  finetune.num_epochs = 31  # the official v2 recipe for ResNet-50
  # Per 512 images. The official code: lr = 8.0 * 1e-3 * global_batch / 512.
  finetune.base_lr = 8e-3
  finetune.lr_decay_epochs = 30
  finetune.momentum = 0.9
  finetune.weight_decay = 1e-4
  finetune.augment = 'flip'
  finetune.train_bn_affine = False
  finetune.bn_group_size = 0  # the last BN's statistics over groups of this many (0: batch)
  # 'sgd': the official procedure (batch statistics in the last BN, head trained on live
  # batches). 'cached': two forward passes, then the head on stored features, for a fraction
  # of the cost; needs augment 'none' or 'flip' and train_bn_affine=False (cached_finetune.py).
  finetune.mode = 'sgd'
  finetune.cache_dtype = 'bfloat16'  # 'cached': stored features, 'bfloat16' or 'float32'
  finetune.cache_in_memory_mb = 4096  # 'cached': per process; larger caches go to cache_dir
  finetune.cache_dir = ''  # 'cached': a local disk; '' = WORKDIR/feature_cache
  # 'cached': also fine-tune at each of these K_test, from the same trained network with the
  # same seed, keeping only what fine-tuning changes (the last BN's statistics and the
  # classifier: an adapter, a few MB for ResNet-50) in one bank beside the stage's checkpoint
  # (adapters.py): the sweep scores each at its K, export takes --test_res=K. () = no bank.
  finetune.adapter_resolutions = ()
  finetune.log_every_steps = 100
  finetune.profile_steps = 0  # >0: a jax.profiler trace of that many steps in WORKDIR/profile

  config.sweep = sweep = ml_collections.ConfigDict()
  sweep.resolutions = (128, 160, 224, 288, 320, 384, 448)
  # Crop fractions swept at every K_test (records' 'crop_pct'); () = data.crop_pct, and the
  # fine-tuned model's crop fraction when 'auto' chose another (finetune.auto_crop_pcts).
  sweep.crop_pcts = ()
  sweep.batch_size = 512
  # Parametric adaptation (model 'parametric'): Fréchet fits of the pooled features at
  # K_train and at each K_test on a slice of the TRAINING split (never validation).
  sweep.parametric = True
  sweep.parametric_split = 'train[-10%:]'
  # The law the K_test features are mapped onto (parametric.py): 'train_transform' (the
  # paper's: the train transform at K_train, what the classifier was trained on) or
  # 'test_transform' (the central crop at K_train).
  sweep.parametric_target = 'train_transform'
  # The network's warm forward pass is timed at each K_test on one device at this batch
  # (frontier.json, frontier.png: accuracy against latency); 0: no timing.
  sweep.latency_batch_size = 32
  # The sets every model is scored on at every K_test, names of evalsets.py's registry:
  # 'validation' (config.data's eval_split), ImageNet's robustness sets ('imagenet_v2',
  # 'imagenet_real', 'imagenet_a', 'imagenet_r', 'imagenet_sketch'), the embedded dataset's
  # shifts ('synthetic_noise', 'synthetic_jpeg', 'synthetic_blur', 'synthetic_small').
  sweep.evals = (evalsets.PRIMARY,)
  # Test-time augmentation of every scored pass (fixres_jax/tta.py; the parametric fits and
  # the 'auto' choice use the test view alone): 'none', or parts joined by '+' of 'flip',
  # 'five_crop', 'ten_crop', 'multiscale:F1,F2,...' (factors of K_test) and 'test_time_pool'
  # (timm's), e.g. 'multiscale:0.8,1,1.2+flip'. Records carry its forward passes per image.
  sweep.tta = 'none'

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 1000
  ckpt.max_to_keep = 2
  return config


def split_names(spec: str) -> list:
  """The splits a tfds split spec reads: 'train[:90%]+validation' -> ['train', 'validation']."""
  return [part.split('[')[0].strip() for part in spec.split('+')]


def parse_stages(stages) -> tuple:
  """Accepts --config.stages=finetune,sweep as well as the tuple ('finetune', 'sweep')."""
  return tuple(s.strip() for entry in stages for s in entry.split(',') if s.strip())


def ramp_image_sizes(min_res: int, max_res: int, start_ramp: int, end_ramp: int,
                     step: int = 32) -> tuple:
  """FFCV's progressive resizing as a train.image_size_schedule: min_res up to epoch
  start_ramp, then each epoch's size interpolated linearly to max_res at end_ramp and
  rounded to a multiple of `step`."""
  schedule = [(0, min_res)]
  for epoch in range(start_ramp + 1, end_ramp + 1):
    size = int(round(np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res]) / step)) * step
    if size != schedule[-1][1]:
      schedule.append((epoch, size))
  return tuple(schedule)


def image_size_schedule(cfg) -> tuple:
  """config.train's ((first epoch, size), ...), a single (0, image_size) without a
  schedule."""
  return tuple(tuple(pair) for pair in cfg.image_size_schedule) or ((0, cfg.image_size),)


def schedule_problems(cfg) -> list:
  """What is wrong with config.train.image_size_schedule (none without one)."""
  if not cfg.image_size_schedule:
    return []
  schedule = image_size_schedule(cfg)
  where = f'config.train.image_size_schedule={tuple(cfg.image_size_schedule)}'
  if any(len(pair) != 2 for pair in schedule):
    return [f'{where}: use (epoch, size) pairs, e.g. ((0, 160), (10, 192)).']
  epochs, sizes = zip(*schedule)
  problems = []
  if epochs[0] != 0 or list(epochs) != sorted(set(epochs)):
    problems.append(f'{where}: the epochs must start at 0 and increase.')
  if any(not is_integer(s) or not 0 < s <= MAX_RESOLUTION for s in sizes):
    problems.append(f'{where}: sizes must be positive integers up to {MAX_RESOLUTION} px.')
  elif sizes[-1] != cfg.image_size:
    problems.append(f'{where} ends at {sizes[-1]} px but config.train.image_size is '
                    f'{cfg.image_size}: the last size is K_train; make them equal.')
  return problems


def get_imagenet_config(train_res: int, test_res: int,
                        resolutions) -> ml_collections.ConfigDict:
  """The paper's ResNet-50 ImageNet recipe at K_train, with the official v2 fine-tuning.

  Training follows the official code (facebookresearch/FixRes, imnet_resnet50_scratch/ and
  main_resnet50_scratch.py, 8 GPUs x 64): RASampler(repetitions=3, len_factor=2.0), so an
  epoch is 5,005 steps of 512 and 120 epochs 600,600 steps; SGD momentum 0.9, weight decay
  1e-4 on every parameter, lr 8 x 0.02 x 512 / 512 = 0.16, x0.1 every 30 epochs, no warm-up;
  RandomResizedCrop + flip + ColorJitter(0.3, 0.3, 0.3) on PIL's full decode; per-GPU
  BatchNorm over 64 images (DDP without SyncBN), in fine-tuning too (main_finetune.py
  --batch 64 --num-tasks 8).
  """
  config = get_base_config()
  config.train.image_size = train_res
  config.train.batch_size = 512
  config.train.num_epochs = 120
  config.train.base_lr = 0.08  # per 256 images: 0.16 at 512
  config.train.schedule = 'step'
  config.train.lr_decay_epochs = (30, 60, 90)
  config.train.warmup_epochs = 0
  config.data.ra_repetitions = 3
  config.data.ra_len_factor = 2.0
  config.data.color_jitter = 0.3
  config.data.train_decode = 'exact'
  config.model.bn_group_size = 64
  config.finetune.bn_group_size = 64
  config.finetune.test_res = test_res
  config.finetune.augment = 'v2'
  config.finetune.num_epochs = 31
  # 12,811 images: enough for the 'auto' choice and the parametric fits, cheap to sweep.
  config.finetune.auto_split = 'train[-1%:]'
  config.sweep.parametric_split = 'train[-1%:]'
  config.sweep.resolutions = tuple(resolutions)
  return config


def validate(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Raises errors.ConfigError naming the field and the fix, before anything is compiled."""
  problems = []
  unknown = set(config.stages) - set(STAGES)
  if unknown:
    problems.append(f'config.stages has {sorted(unknown)}: stages are {STAGES}.')
  sizes = {'train.image_size': config.train.image_size}
  if isinstance(config.finetune.test_res, str):
    if config.finetune.test_res != 'auto':
      problems.append(f'config.finetune.test_res={config.finetune.test_res!r}: use a '
                      "resolution in pixels or 'auto'.")
  else:
    sizes['finetune.test_res'] = config.finetune.test_res
  sizes.update({f'sweep.resolutions[{i}]': r for i, r in enumerate(config.sweep.resolutions)})
  sizes.update({f'finetune.auto_resolutions[{i}]': r
                for i, r in enumerate(config.finetune.auto_resolutions)})
  sizes.update({f'finetune.adapter_resolutions[{i}]': r
                for i, r in enumerate(config.finetune.adapter_resolutions)})
  problems += [f'config.{k}={v!r}: resolutions must be positive integers up to '
               f'{MAX_RESOLUTION} px.' for k, v in sizes.items()
               if not is_integer(v) or not 0 < v <= MAX_RESOLUTION]
  if not config.sweep.resolutions:
    problems.append('config.sweep.resolutions=(): give at least one K_test, e.g. '
                    f'{get_base_config().sweep.resolutions}.')
  problems += range_problems(config)
  problems += evalsets.problems(config)
  if config.finetune.auto_max_ms_per_image and not config.sweep.latency_batch_size:
    problems.append('config.finetune.auto_max_ms_per_image needs the timing: set '
                    'config.sweep.latency_batch_size to the batch it holds for, e.g. 32.')
  problems += address_problems(config)
  if not 0 < config.data.crop_pct <= 1:
    problems.append(f'config.data.crop_pct={config.data.crop_pct}: it must be in (0, 1] '
                    '(0.875 resizes to K_test/0.875 then takes the central K_test crop).')
  for name in ('train.batch_size', 'finetune.batch_size', 'sweep.batch_size'):
    section, field = name.split('.')
    value = config[section][field]
    if value <= 0 or value % device_count:
      problems.append(f'config.{name}={value} is not a positive multiple of the '
                      f'{device_count} devices: use e.g. {device_count * max(1, value // max(device_count, 1))}.')
  problems += choice_problems(config)
  problems += test_view_problems(config)
  problems += tta_problems(config)
  problems += crop_list_problems(config)
  problems += integer_problems(config)
  problems += finetune_mode_problems(config.finetune)
  problems += recipe_problems(config)
  problems += schedule_problems(config.train)
  train_name = split_names(config.data.train_split)[0]
  for name in ('finetune.auto_split', 'sweep.parametric_split'):
    section, field = name.split('.')
    if set(split_names(config[section][field])) != {train_name}:
      problems.append(f'config.{name}={config[section][field]!r} must be a slice of the '
                      f'training split {train_name!r} (e.g. {train_name}[-10%:]): choices '
                      'made on the validation split would bias its accuracy.')
  if len(problems) == 1:  # on the one `Error:` line main prints
    raise errors.ConfigError(f'Invalid config: {problems[0]}')
  if problems:
    raise errors.ConfigError('Invalid config:\n  ' + '\n  '.join(problems))


def field_value(config: ml_collections.ConfigDict, name: str):
  """config's 'section.field' (or top-level 'field')."""
  for part in name.split('.'):
    config = config[part]
  return config


def choice_fields() -> dict:
  """Each field that names an option, or picks one of a few numbers -> what the code acting
  on it implements."""
  # Imported here, not at the top: config files and the TensorFlow data tools import this
  # module, and only validation needs the model and step code (jax, flax, optax, orbax).
  from fixres_jax import cached_finetune  # pylint: disable=g-import-not-at-top
  from fixres_jax import models  # pylint: disable=g-import-not-at-top
  from fixres_jax import parametric  # pylint: disable=g-import-not-at-top
  from fixres_jax import rerun  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  return {'model.name': models.model_names(), 'model.block': tuple(models.BLOCKS),
          'model.dtype': models.DTYPES, 'model.output_stride': models.OUTPUT_STRIDES,
          'data.dtype': augmentations.IMAGE_DTYPES, 'data.crop': augmentations.TRAIN_CROPS,
          'data.decode': augmentations.DECODES,
          'data.train_decode': augmentations.DECODES,
          'data.test_resize': augmentations.TEST_RESIZES,
          'data.test_interpolation': augmentations.INTERPOLATIONS,
          'data.test_crop_mode': augmentations.TEST_CROP_MODES,
          'data.randaugment_interpolation': augmentations.RANDAUGMENT_INTERPOLATIONS,
          'train.schedule': train.SCHEDULES, 'train.optimizer': train.OPTIMIZERS,
          'train.loss': train.LOSSES, 'finetune.mode': tuple(cached_finetune.FINETUNE_MODES),
          'finetune.augment': tuple(augmentations.FINETUNE_AUGMENTS),
          'finetune.cache_dtype': cached_finetune.CACHE_DTYPES,
          'finetune.auto_metric': AUTO_METRICS, 'finetune.auto_model': AUTO_MODELS,
          'sweep.parametric_target': parametric.TARGETS,
          'redo': ('',) + rerun.REDO_STAGES}


def choice_problems(config: ml_collections.ConfigDict) -> list:
  """Fields set to an option that no code implements. model.block is checked whatever
  model.name: a misspelt block is a mistake even where it is ignored."""
  problems = []
  for name, allowed in choice_fields().items():
    value = field_value(config, name)
    # The type too: to Python True == 1 (and 4.0 == 4), and neither is an output stride.
    if not any(type(value) is type(option) and value == option for option in allowed):
      problems.append(f'config.{name}={value!r}: use one of {allowed}.')
  return problems


def is_integer(value) -> bool:
  """An int that is not a bool (True is an int to Python, not a count)."""
  return isinstance(value, int) and not isinstance(value, bool)


def integer_problems(config: ml_collections.ConfigDict) -> list:
  """Counts, sizes and intervals below their least value (INTEGER_MINIMUMS), and an empty
  or non-positive model.stage_sizes."""
  defaults, problems = get_base_config(), []
  for name, least in INTEGER_MINIMUMS.items():
    value = field_value(config, name)
    if not is_integer(value) or value < least:
      wanted = 'a positive integer' if least == 1 else f'an integer >= {least}'
      problems.append(f'config.{name}={value!r}: use {wanted}, e.g. '
                      f'{field_value(defaults, name)}.')
  stage_sizes = tuple(config.model.stage_sizes)
  if not stage_sizes or not all(is_integer(n) and n >= 1 for n in stage_sizes):
    problems.append(f'config.model.stage_sizes={stage_sizes}: use a positive number of '
                    f'blocks for each of one or more stages, e.g. '
                    f'{defaults.model.stage_sizes}.')
  return problems


def test_resolutions(config: ml_collections.ConfigDict) -> tuple:
  """Every K_test a run may evaluate or fine-tune at."""
  cfg = config.finetune
  fixed = () if isinstance(cfg.test_res, str) else (cfg.test_res,)
  return (fixed + tuple(cfg.auto_resolutions) + tuple(cfg.adapter_resolutions)
          + tuple(config.sweep.resolutions))


def test_view_problems(config: ml_collections.ConfigDict) -> list:
  """What the test transform's crop mode cannot do with the other config.data fields."""
  data, problems = config.data, []
  sizes = [k for k in test_resolutions(config) if is_integer(k)]
  if data.test_resize == 'official' and data.test_crop_mode != 'center':
    problems.append(f"config.data.test_resize='official' resizes the height for the 'center' "
                    f"crop mode, not {data.test_crop_mode!r}: set test_resize='shorter'.")
  augment = augmentations.FINETUNE_AUGMENTS.get(config.finetune.augment)
  if augment and augment.whole_first and data.test_crop_mode == 'margin':
    problems.append(f'config.finetune.augment={config.finetune.augment!r} jitters the whole '
                    "resized image, which the 'margin' crop mode never makes (it crops first): "
                    "use augment='v2_crop'.")
  if is_integer(data.test_resize_size) and data.test_resize_size:
    if data.test_crop_mode == 'margin':
      problems.append(f"config.data.test_resize_size={data.test_resize_size}: the 'margin' "
                      'crop mode sets its scale from test_crop_margin; set it to 0.')
    elif data.test_crop_mode in ('center', 'squash') and sizes and (
        data.test_resize_size < max(sizes)):
      problems.append(f'config.data.test_resize_size={data.test_resize_size} is below K_test '
                      f'{max(sizes)} (finetune.test_res, auto_resolutions or '
                      f'sweep.resolutions): the crop would not fit; use a resize size >= '
                      f'{max(sizes)}, or 0 for K_test / crop_pct.')
  return problems


def crop_list_problems(config: ml_collections.ConfigDict) -> list:
  """finetune.auto_crop_pcts and sweep.crop_pcts: fractions in (0, 1], each once, where the
  test transform reads crop_pct; auto_crop_pcts with finetune.test_res='auto' only."""
  data, problems = config.data, []
  for name in ('finetune.auto_crop_pcts', 'sweep.crop_pcts'):
    crops = tuple(field_value(config, name))
    if not crops:
      continue
    where = f'config.{name}={crops}'
    if not all(is_real(c) and 0 < c <= 1 for c in crops):
      problems.append(f'{where}: crop fractions must be numbers in (0, 1], e.g. '
                      '(0.875, 0.95, 1.0).')
    elif len(set(crops)) < len(crops):
      problems.append(f'{where} names a crop fraction twice: give each once.')
    if data.test_crop_mode == 'margin' or data.test_resize_size:
      problems.append(f'{where}: the test transform ignores crop_pct with test_crop_mode='
                      f'{data.test_crop_mode!r} and test_resize_size={data.test_resize_size};'
                      " set it to () or use test_crop_mode='center' with test_resize_size=0.")
  if config.finetune.auto_crop_pcts and config.finetune.test_res != 'auto':
    problems.append(f'config.finetune.auto_crop_pcts={tuple(config.finetune.auto_crop_pcts)} '
                    "is chosen with finetune.test_res='auto', not a fixed "
                    f'{config.finetune.test_res!r}: set test_res=\'auto\' (with '
                    'auto_resolutions=(K,) to choose the crop alone), or set '
                    'data.crop_pct and auto_crop_pcts=().')
  return problems


def tta_problems(config: ml_collections.ConfigDict) -> list:
  """What is wrong with config.sweep.tta (tta.problems)."""
  from fixres_jax import tta  # pylint: disable=g-import-not-at-top  (jax, as choice_fields)
  resolutions = [k for k in config.sweep.resolutions if is_integer(k)]
  return tta.problems(config.sweep.tta, MAX_RESOLUTION, resolutions)


def finetune_mode_problems(cfg: ml_collections.ConfigDict) -> list:
  """What config.finetune.mode (or auto_model='adapted', which fits the cached mode's
  adapters) cannot do with the rest of config.finetune."""
  problems = adapter_problems(cfg)
  if cfg.mode == 'cached':
    who, other = "mode='cached'", "mode='sgd'"
  elif cfg.auto_model == 'adapted' and cfg.test_res == 'auto':
    who, other = "auto_model='adapted'", "auto_model='trained'"
  else:
    return problems
  if cfg.augment in augmentations.FINETUNE_AUGMENTS and not augmentations.FINETUNE_AUGMENTS[
      cfg.augment].cached_views:
    problems.append(f"config.finetune.augment={cfg.augment!r} is random, so {who} "
                    f"cannot store its features: use augment {augmentations.CACHEABLE_AUGMENTS}"
                    f", or {other}.")
  if cfg.train_bn_affine:
    problems.append(f"config.finetune.train_bn_affine=True: {who} fits the "
                    f"classifier only; set it to False or use {other}.")
  if cfg.bn_group_size:
    problems.append(f"config.finetune.bn_group_size={cfg.bn_group_size}: {who} "
                    "takes the last BN's statistics over the whole set; set it to 0 or use "
                    f"{other}.")
  return problems


def adapter_problems(cfg: ml_collections.ConfigDict) -> list:
  """What is wrong with config.finetune.adapter_resolutions beyond its range."""
  resolutions = tuple(cfg.adapter_resolutions)
  if not resolutions:
    return []
  if cfg.mode != 'cached':
    return [f'config.finetune.adapter_resolutions={resolutions}: the adapter bank is built '
            f"by the cached mode: set config.finetune.mode='cached' (mode={cfg.mode!r}), or "
            'adapter_resolutions=().']
  if len(set(resolutions)) < len(resolutions):
    return [f'config.finetune.adapter_resolutions={resolutions} names a K_test twice: list '
            'each once.']
  return []


def recipe_problems(config: ml_collections.ConfigDict) -> list:
  """What is wrong with the data options and BatchNorm groups."""
  data, problems = config.data, []
  cfg = config.train
  for name in ('mix_prob', 'mix_switch_prob'):
    if not 0 <= cfg[name] <= 1:
      problems.append(f'config.train.{name}={cfg[name]}: use a probability in [0, 1].')
  if not 0 <= cfg.ema_decay < 1:
    problems.append(f'config.train.ema_decay={cfg.ema_decay}: use a decay in [0, 1) '
                    '(e.g. 0.9998 per step; 0: off).')
  if cfg.optimizer == 'lamb' and config.model.zero_init_head:
    # LAMB scales each layer's step by that layer's weight norm (the trust ratio): a zero
    # classifier stays near zero, passes almost no gradient down, and the network stays at
    # chance (the modern-recipe study's A3 runs did, on every seed).
    problems.append("config.train.optimizer='lamb' with config.model.zero_init_head=True: "
                    "LAMB's steps scale with each layer's weight norm, so a zero classifier "
                    'never grows and the network stays at chance; set '
                    '--config.model.zero_init_head=False.')
  if not 0 <= config.model.drop_path_rate < 1:
    problems.append(f'config.model.drop_path_rate={config.model.drop_path_rate}: use a '
                    'probability in [0, 1) (0.05 in ResNet strikes back A3; 0: off).')
  try:
    augmentations.parse_randaugment(data.randaugment)
  except ValueError as e:
    problems.append(str(e))
  if data.randaugment and data.color_jitter:
    problems.append(f'config.data.randaugment={data.randaugment!r} and config.data.color_jitter='
                    f'{data.color_jitter}: RandAugment replaces the colour jitter (as in timm); '
                    'set color_jitter=0.')
  if not 0 <= data.color_jitter:
    problems.append(f'config.data.color_jitter={data.color_jitter}: use a strength >= 0 '
                    '(0.3 in the official recipe, 0 for none).')
  if not (isinstance(data.ra_repetitions, int) and data.ra_repetitions >= 1):
    problems.append(f'config.data.ra_repetitions={data.ra_repetitions}: use an integer >= 1 '
                    '(1: no repeated augmentation, 3 in the official recipe).')
  if not data.ra_len_factor > 0:
    problems.append(f'config.data.ra_len_factor={data.ra_len_factor}: use a positive '
                    'epoch length factor (2.0 in the official recipe).')
  for name, batch in (('model.bn_group_size', config.train.batch_size),
                      ('finetune.bn_group_size', config.finetune.batch_size)):
    section, field = name.split('.')
    size = config[section][field]
    if size < 0 or (size and batch % size):
      problems.append(f'config.{name}={size} must divide the global batch {batch} '
                      '(0: statistics over the whole batch).')
  return problems


def is_real(value) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
  """'[0, 1)', or '> 0' and '>= 0' when unbounded above."""
  if high == math.inf:
    return f'{">=" if low_in else ">"} {low:g}'
  return f'{"[" if low_in else "("}{low:g}, {high:g}{"]" if high_in else ")"}'


def range_problems(config: ml_collections.ConfigDict) -> list:
  """Real values outside REAL_RANGES, learning-rate decay epochs, warm-up longer than the
  training, and no_decay patterns that are not regular expressions."""
  problems = []
  for name, (low, high, low_in, high_in, meaning) in REAL_RANGES.items():
    value = field_value(config, name)
    inside = is_real(value) and (low <= value if low_in else low < value) and (
        value <= high if high_in else value < high)
    if not inside:
      problems.append(f'config.{name}={value!r}: use a number {interval(low, high, low_in, high_in)}'
                      f' ({meaning}).')
  cfg = config.train
  epochs = tuple(cfg.lr_decay_epochs)
  if not all(is_real(e) and e >= 0 for e in epochs):
    problems.append(f'config.train.lr_decay_epochs={epochs}: use epochs >= 0, e.g. (30, 60, 90).')
  if is_real(cfg.warmup_epochs) and is_real(cfg.num_epochs) and (
      cfg.warmup_epochs > cfg.num_epochs):
    problems.append(f'config.train.warmup_epochs={cfg.warmup_epochs} is longer than the '
                    f'training (num_epochs={cfg.num_epochs}): use a warm-up in [0, num_epochs].')
  for pattern in cfg.no_decay:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      problems.append(f'config.train.no_decay has {pattern!r}, not a regular expression '
                      f'({e}): use patterns over module/param names, e.g. (r"bn", r"bias$").')
  return problems


def address_problems(config: ml_collections.ConfigDict) -> list:
  """A local config.init_from that does not exist; a config.data.service that is not
  HOST:PORT. (gs:// paths are checked once storage is reachable.)"""
  problems = []
  if config.init_from and '://' not in config.init_from and not os.path.exists(
      config.init_from):
    problems.append(f'config.init_from={config.init_from!r} does not exist: use a directory '
                    'written by `python -m fixres_jax.convert` or a stage\'s checkpoint '
                    'directory (e.g. WORKDIR/checkpoints/train).')
  if config.data.service and not re.fullmatch(r'(grpc://)?[^\s:/]+:\d{1,5}',
                                              config.data.service):
    problems.append(f'config.data.service={config.data.service!r}: use the dispatcher\'s '
                    "HOST:PORT (e.g. 'node0:5050'), or '' to make the batches here.")
  return problems
