"""ResNet-50 trained at K_train=224 on ImageNet, FixRes-fine-tuned at K_test=384 and 288.

Train, FixRes-fine-tune at K_test=384 and sweep K_test:

  python -m fixres_jax.main --config=configs/r50_224.py --workdir=gs://BUCKET/r50_224

Fine-tune the same trained network at K_test=288 instead (a second workdir; no retraining):

  python -m fixres_jax.main --config=configs/r50_224.py --workdir=gs://BUCKET/r50_224_ft288 \
      --config.finetune.test_res=288 "--config.stages=('finetune','sweep')" \
      --config.init_from=gs://BUCKET/r50_224/checkpoints/train

The official recipe (config.get_imagenet_config; sources: facebookresearch/FixRes
imnet_resnet50_scratch/train.py, samplers.py, transforms.py and main_resnet50_scratch.py
for training, main_finetune.py and transforms_v2.py for fine-tuning): repeated augmentation
x3 with len_factor 2 (5,005 steps of 512 per epoch, 600,600 in all), lr 0.16 at 512, x0.1
every 30 epochs, no warm-up, ColorJitter(0.3, 0.3, 0.3), BatchNorm statistics over groups of
64 images in training and in fine-tuning.

Expect (official README, ImageNet validation, top-1 / top-5): 77.0 / 93.4 at 224 before
fine-tuning (released: ResNet_no_adaptation.pth); 79.1 / 94.6 after FixRes fine-tuning at 384
with this config's v2 recipe (31 epochs, lr 1e-3 x 8 per 512 images, flip + colour jitter
0.05 + shifted centre crop; released: ResNet50_v2.pth); 79.0 / 94.6 with the v1 recipe
(--config.finetune.augment=none --config.finetune.num_epochs=56; released:
ResNetFinetune.pth). No figure for K_test=288 is quoted here (none verified). To evaluate the
released weights on the pixels those numbers came from, convert them (fixres_jax.convert) and
add --config.data.test_resize=official.
Needs imagenet2012 prepared in TFDS_DATA_DIR (the error message says how).
"""

from fixres_jax import config as config_lib


def get_config():
  return config_lib.get_imagenet_config(224, 384, (224, 256, 288, 320, 352, 384, 416, 448))
