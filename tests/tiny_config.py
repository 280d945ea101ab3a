"""A few-second end-to-end config for tests: a 2-stage ResNet at 32 px on fixres_synthetic/tiny.

  python -m fixres_jax.main --config=tests/tiny_config.py --workdir=/tmp/tiny \
      --config.data.data_dir=TFDS_DIR
"""

from fixres_jax import config as config_lib


def get_config():
  config = config_lib.get_base_config()
  config.data.name = 'fixres_synthetic/tiny'
  config.data.shuffle_buffer = 256
  config.model.name = 'resnet'
  config.model.stage_sizes = (1, 1)
  config.model.num_filters = 8
  config.train.image_size = 32
  config.train.batch_size = 32
  config.train.num_epochs = 2
  config.train.schedule = 'cosine'
  config.train.log_every_steps = 4
  config.finetune.log_every_steps = 4
  config.finetune.test_res = 40
  config.finetune.batch_size = 32
  config.finetune.num_epochs = 1
  config.sweep.resolutions = (32, 40)
  config.sweep.batch_size = 32
  config.checkpoint.every_steps = 5
  return config
