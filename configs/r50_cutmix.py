"""ResNet-50 trained with CutMix at K_train=224 on ImageNet, FixRes-fine-tuned at K_test=320.

Train, FixRes-fine-tune at K_test=320 and sweep K_test:

  python -m fixres_jax.main --config=configs/r50_cutmix.py --workdir=gs://BUCKET/r50_cutmix

The training recipe is CutMix's (Yun et al. 2019, clovaai/CutMix-PyTorch README and
train.py for ImageNet): ResNet-50, 300 epochs, global batch 256, SGD momentum 0.9, lr 0.1
x0.1 every 75 epochs, weight decay 1e-4, CutMix on every batch (cutmix_prob 1, beta 1),
RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4). The fine-tuning is FixRes v2 at 320
(the official FixRes README's FixResNet-50 CutMix row: 11 epochs).

Expect (top-1 on ImageNet validation): 78.6 at 224 after training (CutMix README, released
weights); 79.8 after FixRes fine-tuning at 320 (FixRes README, released weights); neither
has been reproduced with this code. Departures, each named in the config: CutMix pairs image
i with image B-1-i of the global batch as timm does (clovaai draws a random permutation); no
PCA lighting noise (clovaai's Lighting(0.1)); the fine-tuning's BatchNorm statistics over the
whole batch.
Needs imagenet2012 prepared in TFDS_DATA_DIR (the error message says how).
"""

from fixres_jax import config as config_lib


def get_config():
  config = config_lib.get_base_config()
  config.train.image_size = 224
  config.train.batch_size = 256
  config.train.num_epochs = 300
  config.train.base_lr = 0.1  # per 256 images
  config.train.schedule = 'step'
  config.train.lr_decay_epochs = (75, 150, 225)
  config.train.cutmix_alpha = 1.0
  config.train.mix_prob = 1.0
  config.data.color_jitter = 0.4
  config.finetune.test_res = 320
  config.finetune.augment = 'v2'
  config.finetune.num_epochs = 11
  config.finetune.auto_split = 'train[-1%:]'
  config.sweep.parametric_split = 'train[-1%:]'
  config.sweep.resolutions = (224, 256, 288, 320, 352, 384)
  return config
