"""The test transform each finished stage records beside its checkpoint, and who reads it."""

import json

import numpy as np
import pytest

from fixres_jax import analysis
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import transform_record


def test_the_record_holds_the_config_test_transform():
  config = config_lib.get_base_config()
  config.data.crop_pct, config.data.decode = 0.95, 'exact'
  record = transform_record.describe(config, 'finetune', 288, 'config.finetune.test_res')
  assert record['stage'] == 'finetune' and record['image_size'] == 288
  assert record['crop_pct'] == 0.95 and record['decode'] == 'exact'
  assert record['resize'] == config.data.test_resize
  assert record['dtype'] == config.data.dtype
  np.testing.assert_allclose(record['mean_rgb'], [123.675, 116.28, 103.53])
  np.testing.assert_allclose(record['std_rgb'], [58.395, 57.12, 57.375])
  json.dumps(record)  # plain JSON values only


def test_fields_a_config_lacks_are_recorded_at_the_transform_it_ran():
  """A config from before a test-transform field existed ran that field's neutral value."""
  config = config_lib.get_base_config()
  with config.unlocked():
    for field in ('test_interpolation', 'test_crop_mode', 'test_resize_size',
                  'test_crop_margin'):
      if field in config.data:
        del config.data[field]
  record = transform_record.describe(config, 'train', 64, 'config.train.image_size')
  assert (record['interpolation'], record['crop_mode'], record['resize_size']) == (
      'bilinear', 'center', 0)


def test_the_record_lives_in_the_stage_checkpoint_directory_which_still_resumes(tmp_path):
  """orbax lists and restores the stage's steps with the record beside them."""
  manager = checkpoint.create_manager(tmp_path / 'checkpoints' / 'train', async_save=False)
  state = {'params': {'w': np.arange(3.0)}, 'batch_stats': {'m': np.ones(2)}}
  checkpoint.save_state(manager, 4, state)
  manager.close()
  record = transform_record.describe(config_lib.get_base_config(), 'train', 64,
                                     'config.train.image_size')
  transform_record.write(tmp_path, record)
  assert (tmp_path / 'checkpoints' / 'train' / 'test_transform.json').exists()
  assert transform_record.read(tmp_path, 'train') == record
  manager = checkpoint.create_manager(tmp_path / 'checkpoints' / 'train', async_save=False)
  assert manager.all_steps() == [4]
  restored = checkpoint.restore_latest(manager, state)
  np.testing.assert_array_equal(restored['params']['w'], state['params']['w'])
  manager.close()
  np.testing.assert_array_equal(
      checkpoint.load_variables(tmp_path / 'checkpoints' / 'train')['batch_stats']['m'],
      np.ones(2))


def test_a_missing_record_is_none_or_a_message(tmp_path):
  assert transform_record.read(tmp_path, 'finetune') is None
  with pytest.raises(errors.NotFoundError, match='finetune stage has not finished'):
    transform_record.require(tmp_path, 'finetune')


def test_the_sweep_takes_the_finetuned_k_test_from_the_record(tmp_path):
  config = config_lib.get_base_config()
  config.finetune.test_res = analysis.AUTO
  assert analysis.finetuned_test_res(config, tmp_path) == (None, 'not chosen yet')
  transform_record.write(tmp_path, transform_record.describe(
      config, 'finetune', 96, 'chosen on the held-out train[90%:]'))
  assert analysis.finetuned_test_res(config, tmp_path) == (
      96, 'chosen on the held-out train[90%:]')
