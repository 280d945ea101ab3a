"""Transfer learning with FixRes: a converted ImageNet network on your own folder dataset.

  python -m fixres_jax.convert --arch=resnet50 --input=resnet50.pth --output=/data/r50_in1k
  python -m fixres_jax.main --config=configs/transfer.py --workdir=/data/runs/flowers \
      --config.data.folder=/data/flowers --config.init_from=/data/r50_in1k

The dataset is a folder: FOLDER/train/CLASS/*.jpg and FOLDER/validation/CLASS/*.jpg (any
number of classes). Stages:
  train     the whole network from config.init_from with a new classifier (init_head=False),
            at K_train=224 on train[:90%];
  finetune  FixRes at K_test='auto': the best test resolution of the trained network on the
            held-out train[90%:] (never on validation), recorded in WORKDIR/auto_test_res.json;
  sweep     every K_test for the trained, fine-tuned and parametric models on validation.
Expect: no paper figure applies to your data; sweep.png shows the gain of fine-tuning at the
chosen K_test over the trained network at K_train.
"""

from fixres_jax import config as config_lib


def get_config():
  config = config_lib.get_base_config()
  config.init_from = ''  # a `fixres_jax.convert` output or a checkpoint directory
  config.init_head = False  # a new classifier for the new classes

  config.data.name = 'folder'
  config.data.folder = ''  # on the command line
  config.data.train_split = 'train[:90%]'
  config.data.eval_split = 'validation'
  config.data.shuffle_buffer = 4096

  config.train.image_size = 224
  config.train.batch_size = 64
  config.train.num_epochs = 30
  config.train.base_lr = 0.01  # per 256 images: a pretrained network needs little
  config.train.schedule = 'cosine'
  config.train.warmup_epochs = 1
  config.train.log_every_steps = 20
  config.finetune.log_every_steps = 20

  config.finetune.test_res = 'auto'
  config.finetune.auto_split = 'train[90%:]'  # held out: train_split stops at 90%
  config.finetune.batch_size = 64
  config.finetune.augment = 'v2'

  config.sweep.resolutions = (160, 192, 224, 256, 288, 320, 384, 448)
  config.sweep.batch_size = 64
  config.sweep.parametric_split = 'train[90%:]'
  config.checkpoint.every_steps = 500
  return config
