"""ResNet-50 trained at K_train=128 on ImageNet (a third of the FLOPs of 224), FixRes at 224, 160.

Train, FixRes-fine-tune at K_test=224 and sweep K_test:

  python -m fixres_jax.main --config=configs/r50_128.py --workdir=gs://BUCKET/r50_128

Fine-tune the same trained network at K_test=160 instead (a second workdir; no retraining):

  python -m fixres_jax.main --config=configs/r50_128.py --workdir=gs://BUCKET/r50_128_ft160 \
      --config.finetune.test_res=160 "--config.stages=('finetune','sweep')" \
      --config.init_from=gs://BUCKET/r50_128/checkpoints/train

(--config.finetune.test_res=auto picks K_test on train[-1%:] instead.)

The official recipe, as configs/r50_224.py (config.get_imagenet_config; sources:
facebookresearch/FixRes imnet_resnet50_scratch/ and main_resnet50_scratch.py --input-size 128,
main_finetune.py, transforms_v2.py): repeated augmentation x3 with len_factor 2 (600,600 steps
of 512), lr 0.16, x0.1 every 30 epochs, no warm-up, ColorJitter(0.3, 0.3, 0.3), BatchNorm
over groups of 64 images in training and fine-tuning.

Expect: the paper's abstract reports 77.1% top-1 on ImageNet validation for a ResNet-50 trained
at 128 x 128 and FixRes-fine-tuned at a higher test resolution, the accuracy of the same
network trained at 224 (77.0%, the official README's baseline). No weights of that network
were released, so the 77.1% cannot be checked against the official code's own model.
No figure for K_test=160 is quoted here (none verified). The plain network's best test resolution lies above 128:
`python -m fixres_jax.resolution --train_res=128` gives about 176, and sweep.png marks it.
Fine-tuning uses the official v2 recipe (31 epochs, lr 1e-3 x 8 per 512 images, flip + colour
jitter 0.05 + shifted centre crop); the paper's own runs predate v2 (v1: augment='none').
Needs imagenet2012 prepared in TFDS_DATA_DIR (the error message says how).
"""

from fixres_jax import config as config_lib


def get_config():
  return config_lib.get_imagenet_config(128, 224, (128, 144, 160, 176, 192, 224, 256, 288))
