"""ResNet-50 trained at K_train=224 on ImageNet, FixRes-fine-tuned at K_test=288.

  python -m fixres_jax.main --config=configs/r50_224.py --workdir=gs://BUCKET/r50_224

The paper's setting (Touvron et al. 2019, Table 2): SGD, batch 512, lr 0.2 (0.1 per 256),
120 epochs with x0.1 steps at 30/60/90, weight decay 1e-4; FixRes fine-tuning (v2 recipe):
31 epochs, lr 1e-3 per 512, SGD momentum 0.9. The paper reports 77.0% top-1 at 224 before
fine-tuning and 79.0% (v1) / 79.1% (v2) after fine-tuning at 384
(--config.finetune.test_res=384).
Needs imagenet2012 prepared in TFDS_DATA_DIR (the error message says how).
"""

from fixres_jax import config as config_lib


def get_config():
  config = config_lib.get_base_config()
  config.train.image_size = 224
  config.finetune.test_res = 288
  config.sweep.resolutions = (224, 256, 288, 320, 352, 384, 416, 448)
  return config
