"""FixRes on the weakly supervised ResNeXt-101 32x48d (Instagram WSL), fine-tuned at K_test=320.

The network is not trained here: convert the WSL weights published on PyTorch Hub
(facebookresearch/WSL-Images, ig_resnext101_32x48d, trained at 224) once, then fine-tune:

  python -m fixres_jax.convert --arch=resnext101_32x48d \
      --input=ig_resnext101_32x48-3e41cc8a.pth --output=gs://BUCKET/wsl_32x48d
  python -m fixres_jax.main --config=configs/resnext101_32x48d_wsl.py \
      --workdir=gs://BUCKET/wsl_32x48d_fixres --config.init_from=gs://BUCKET/wsl_32x48d

Stages: finetune (one epoch of ImageNet train at 320, global batch 256, lr 1e-3 x 8 x 256/512,
the test transform alone: the official v1 recipe) and sweep.
Expect (official README, ImageNet validation, top-1 / top-5 at 320): 86.3 / 97.9 with this v1
recipe; 86.4 / 98.0 (the paper's abstract) with the v2 recipe:
  --config.finetune.augment=v2 --config.finetune.num_epochs=11 --config.finetune.base_lr=8e-4
(the README's v2 learning rate 1e-4, times the official factor 8).
829 M parameters (3.3 GB in float32): use many accelerators, or lower the per-device batch
(the learning rate follows the global batch) and --config.model.dtype=bfloat16.
Needs imagenet2012 prepared in TFDS_DATA_DIR (the error message says how).
"""

from fixres_jax import config as config_lib


def get_config():
  config = config_lib.get_base_config()
  config.stages = ('finetune', 'sweep')
  config.init_from = ''  # the `fixres_jax.convert` output, on the command line
  config.model.name = 'resnext101_32x48d'
  config.train.image_size = 224  # the WSL pre-training resolution (parametric fits, K_test*)

  config.finetune.test_res = 320
  config.finetune.batch_size = 256
  config.finetune.num_epochs = 1
  config.finetune.augment = 'none'
  config.finetune.auto_split = 'train[-1%:]'

  config.sweep.resolutions = (224, 256, 288, 320, 352, 384, 416, 448)
  config.sweep.batch_size = 256
  config.sweep.parametric_split = 'train[-1%:]'
  return config
