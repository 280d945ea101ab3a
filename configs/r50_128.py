"""ResNet-50 trained at K_train=128 on ImageNet (a third of the FLOPs of 224), FixRes at 224.

  python -m fixres_jax.main --config=configs/r50_128.py --workdir=gs://BUCKET/r50_128

The paper's low-resolution setting: same optimiser as configs/r50_224.py, training at 128.
The paper reports 77.1% top-1 after FixRes fine-tuning at 224 (its abstract's figure), the
accuracy of the same network trained at 224; the plain network's best test resolution lies
above 128 (about 176 by `python -m fixres_jax.resolution --train_res=128`).
Needs imagenet2012 prepared in TFDS_DATA_DIR (the error message says how).
"""

from fixres_jax import config as config_lib


def get_config():
  config = config_lib.get_base_config()
  config.train.image_size = 128
  config.finetune.test_res = 224
  config.sweep.resolutions = (128, 144, 160, 176, 192, 224, 256, 288)
  return config
