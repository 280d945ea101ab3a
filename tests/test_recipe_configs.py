"""configs/r50_*.py are the official ImageNet recipe (facebookresearch/FixRes)."""

import pathlib

import pytest

from fixres_jax import config as config_lib
from fixres_jax import train
from fixres_jax.data import pipeline
from studies import common

CONFIGS = pathlib.Path(__file__).parent.parent / 'configs'


class _ImageNetTrain:
  def num_examples(self, split):
    del split
    return 1_281_167


def load(name):
  return common.load_config_file(CONFIGS / f'{name}.py')


@pytest.mark.parametrize('name,train_res', [('r50_224', 224), ('r50_128', 128)])
def test_official_training_recipe(name, train_res):
  config = load(name)
  config_lib.validate(config, 8)
  cfg = config.train
  assert (cfg.image_size, cfg.batch_size, cfg.num_epochs) == (train_res, 512, 120)
  steps = pipeline.steps_per_epoch(_ImageNetTrain(), 'train', cfg.batch_size,
                                   repeat=pipeline.repetition(config))
  assert steps * cfg.num_epochs == 600_600
  lr = train.create_schedule_per_256(cfg, steps, cfg.batch_size)
  assert float(lr(0)) == pytest.approx(0.16)  # no warm-up
  assert float(lr(30 * steps - 1)) == pytest.approx(0.16)
  assert float(lr(30 * steps)) == pytest.approx(0.016)
  assert float(lr(90 * steps)) == pytest.approx(0.00016)
  assert (cfg.momentum, cfg.weight_decay, cfg.no_decay, cfg.label_smoothing) == (0.9, 1e-4, (), 0)
  assert config.data.color_jitter == 0.3
  assert (config.data.ra_repetitions, config.data.ra_len_factor) == (3, 2.0)
  assert config.model.bn_group_size == 64 and config.finetune.bn_group_size == 64
  assert pipeline.repetition(config).groups == 8  # one process: 8 groups of 64


def test_bad_recipe_options_are_named():
  config = load('r50_224')
  config.model.bn_group_size = 100
  config.data.ra_repetitions = 0
  config.data.decode = 'pil'
  with pytest.raises(ValueError) as error:
    config_lib.validate(config, 8)
  for field in ('bn_group_size', 'ra_repetitions', 'data.decode'):
    assert field in str(error.value)


def test_rsb_a3_recipe():
  config = load('r50_rsb_a3')
  config_lib.validate(config, 8)
  cfg = config.train
  assert (cfg.image_size, cfg.batch_size, cfg.num_epochs) == (160, 2048, 100)
  steps = 1_281_167 // cfg.batch_size
  lr = train.create_schedule_per_256(cfg, steps, cfg.batch_size)
  assert float(lr(5 * steps)) == pytest.approx(8e-3)  # the peak, after 5 warm-up epochs
  assert float(lr(100 * steps - 1)) < 1e-6
  assert (cfg.optimizer, cfg.weight_decay, cfg.loss, cfg.bce_threshold) == ('lamb', 0.02,
                                                                            'bce', 0.2)
  assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob) == (
      0.1, 1.0, 1.0, 0.5)
  assert cfg.label_smoothing == 0 and config.model.drop_path_rate == 0 and cfg.ema_decay == 0
  assert config.data.randaugment == 'rand-m6-mstd0.5-inc1' and config.data.color_jitter == 0
  assert config.data.crop_pct == 0.95 and 224 in config.sweep.resolutions
  # timm decays the weights only: every BN parameter and bias is exempt.
  mask = train.weight_decay_mask(
      {'layer1_0': {'bn1': {'scale': 0, 'bias': 0}, 'conv1': {'kernel': 0}},
       'fc': {'kernel': 0, 'bias': 0}}, tuple(cfg.no_decay))
  assert mask == {'layer1_0': {'bn1': {'scale': False, 'bias': False}, 'conv1': {'kernel': True}},
                  'fc': {'kernel': True, 'bias': False}}


def test_bad_test_transform_options_are_named():
  config = config_lib.get_base_config()
  config.data.test_interpolation = 'hamming'
  config.data.test_crop_mode = 'random'
  config.data.test_crop_margin = -1
  with pytest.raises(ValueError) as error:
    config_lib.validate(config, 8)
  for field in ('test_interpolation', 'test_crop_mode', 'test_crop_margin'):
    assert f'config.data.{field}' in str(error.value)
  config = config_lib.get_base_config()
  config.data.test_resize_size = 232  # below the sweep's 448: the crop would not fit
  with pytest.raises(ValueError, match='test_resize_size=232 is below K_test 448'):
    config_lib.validate(config, 8)
  config.sweep.resolutions = (160, 192, 224)
  config.finetune.test_res = 224
  config_lib.validate(config, 8)  # torchvision's ResNet-50 V2 geometry: 232 -> 224
  config.data.test_crop_mode = 'margin'
  config.data.test_resize = 'official'
  with pytest.raises(ValueError) as error:
    config_lib.validate(config, 8)
  assert "'margin' crop mode sets its scale" in str(error.value)
  assert "test_resize='official' resizes the height" in str(error.value)
  config.data.test_resize = 'shorter'
  config.data.test_resize_size = 0
  config.finetune.augment = 'v2'  # the official order jitters the whole resized image
  with pytest.raises(ValueError, match="use augment='v2_crop'"):
    config_lib.validate(config, 8)
  config.finetune.augment = 'v2_crop'
  config_lib.validate(config, 8)


def test_rsb_a3_evaluates_as_timm():
  """configs/r50_rsb_a3.py's test transform at 224 is timm's eval transform for
  resnet50.a3_in1k (its pretrained_cfg: crop_pct, crop_mode, interpolation) on a real photo."""
  import io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  from timm.data import transforms_factory  # pylint: disable=g-import-not-at-top
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  timm_cfg = timm.models.get_pretrained_cfg('resnet50.a3_in1k').to_dict()
  size = timm_cfg['test_input_size'][-1]
  transform = transforms_factory.transforms_imagenet_eval(
      size, crop_pct=timm_cfg['test_crop_pct'], crop_mode=timm_cfg['crop_mode'],
      interpolation=timm_cfg['interpolation'], normalize=False)
  config = load('r50_rsb_a3')
  assert size in config.sweep.resolutions
  for name, data in decode.real_photos().items():
    if '2x' in name:
      continue
    image = Image.open(io.BytesIO(data)).convert('RGB')
    reference = transform(image).permute(1, 2, 0).numpy().astype(np.float64)
    ours = decode.denormalize(pipeline.test_transform(config, size)(data).numpy())
    assert decode.psnr(ours, reference) >= 50, name
    bilinear = config.copy_and_resolve_references()
    bilinear.data.test_interpolation = 'bilinear'  # the crop right, the filter not: < 45 dB
    ours = decode.denormalize(pipeline.test_transform(bilinear, size)(data).numpy())
    assert decode.psnr(ours, reference) < 45, name


def test_transfer_recipe_is_the_authors():
  """The whole network about 50 epochs with the ImageNet hyper-parameters, then FixRes."""
  config = load('transfer')
  imagenet = config_lib.get_imagenet_config(224, 288, ())
  cfg = config.train
  assert (config.init_head, cfg.num_epochs, cfg.image_size) == (False, 50, 224)
  for field in ('base_lr', 'schedule', 'momentum', 'weight_decay', 'warmup_epochs',
                'lr_decay_factor', 'label_smoothing', 'no_decay'):
    assert cfg[field] == imagenet.train[field], field
  assert config.data.color_jitter == imagenet.data.color_jitter == 0.3
  steps = 1000
  lr = train.create_schedule_per_256(cfg, steps, cfg.batch_size)
  assert float(lr(0)) == pytest.approx(0.16 * 64 / 512)  # the official lr, scaled to 64
  assert float(lr(30 * steps)) == pytest.approx(0.016 * 64 / 512)
  assert float(lr(50 * steps - 1)) == pytest.approx(0.016 * 64 / 512)
  assert config.finetune.augment == 'v2' and config.stages == config_lib.STAGES
