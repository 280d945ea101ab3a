"""A user's mistake ends with the project's message alone and a non-zero exit; a bug keeps its
traceback. The config's checks in this process; the real command line (slow) as a user meets
them."""

import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
from ml_collections import config_dict
import pytest

from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import main
from fixres_jax import train
from fixres_jax.data import sources

REPO = pathlib.Path(__file__).parent.parent
# String fields that take any text (paths, splits, keys, dataset names), not one of a few
# names: every other string field must be checked against the code that implements it.
FREE_TEXT_FIELDS = {'init_from', 'data.name', 'data.data_dir', 'data.folder',
                    'data.train_split', 'data.eval_split', 'data.image_key', 'data.label_key',
                    'data.service', 'data.randaugment', 'finetune.auto_split',
                    'finetune.cache_dir', 'sweep.parametric_split'}


def set_field(config, name: str, value) -> None:
  *sections, field = name.split('.')
  for section in sections:
    config = config[section]
  config[field] = value


def string_fields(config) -> set:
  """'section.field' (or 'field') of every string in config."""
  names = set()
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      names |= {f'{key}.{name}' for name in string_fields(value)}
    elif isinstance(value, str):
      names.add(key)
  return names


def test_every_string_field_is_validated_or_free_text():
  fields = string_fields(config_lib.get_base_config()) - FREE_TEXT_FIELDS
  assert fields == set(config_lib.choice_fields())


@pytest.mark.parametrize('field', sorted(config_lib.choice_fields()))
def test_an_unknown_choice_is_named_with_its_options(field):
  config = config_lib.get_base_config()
  set_field(config, field, 'bogus')
  options = config_lib.choice_fields()[field]
  with pytest.raises(errors.ConfigError,
                     match=re.escape(f"config.{field}='bogus': use one of {options}.")):
    config_lib.validate(config, device_count=8)


@pytest.mark.parametrize('field, value, example', [
    ('model.num_filters', 0, 'e.g. 64'),
    ('model.stage_sizes', (), 'e.g. (2, 2, 2, 2)'),
    ('model.stage_sizes', (2, 0), 'e.g. (2, 2, 2, 2)'),
    ('data.shuffle_buffer', 0, 'e.g. 16384'),
    ('data.num_shards', -1, 'e.g. 0'),
    ('train.log_every_steps', 0, 'e.g. 100'),
    ('finetune.log_every_steps', -3, 'e.g. 100'),
    ('train.profile_steps', -1, 'e.g. 0'),
    ('checkpoint.every_steps', 0, 'e.g. 1000'),
    ('checkpoint.max_to_keep', 0, 'e.g. 2'),
])
def test_a_count_below_its_least_value_is_named(field, value, example):
  config = config_lib.get_base_config()
  set_field(config, field, value)
  with pytest.raises(errors.ConfigError) as raised:
    config_lib.validate(config, device_count=8)
  message = errors.message(raised.value)
  assert f'config.{field}={value!r}: use ' in message and example in message, message
  assert '\n' not in message  # one problem: one `Error:` line


def test_the_choices_are_what_the_training_code_builds():
  cfg = config_lib.get_base_config().train
  for schedule in train.SCHEDULES:
    cfg.schedule = schedule
    train.create_schedule_per_256(cfg, steps_per_epoch=10, global_batch=256)
  for optimizer in train.OPTIMIZERS:
    cfg.optimizer = optimizer
    train.create_optimizer(cfg, 0.1, {'w': jnp.zeros(3)})


@pytest.mark.parametrize('name, message', [
    ('imagenet_2012', "config.data.name='imagenet_2012': Dataset imagenet_2012 not found."),
    ('fixres_synthetic/huge', "fixres_synthetic has no config 'huge': use one of "
     "('fixres_synthetic/default',"),
])
def test_an_unknown_dataset_name_is_named(tmp_path, name, message):
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    sources.create_builder(name, str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_a_bad_choice_exits_before_any_data_is_generated(tmp_path, capsys):
  import tiny_config  # pylint: disable=g-import-not-at-top  (tests/, on pytest's path)
  config = tiny_config.get_config()
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()  # empty: fixres_synthetic/tiny would be generated here on first use
  config.data.data_dir = str(data_dir)
  config.model.name = 'resnet5'
  config.allow_cpu_with_gpu = True  # a CPU-only jaxlib on a GPU machine stops first otherwise
  with pytest.raises(SystemExit) as exited:
    main.run_or_exit(config, str(tmp_path / 'run'))
  assert exited.value.code == errors.EXIT_CODE
  error_lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith('Error: ')]
  assert len(error_lines) == 1 and "config.model.name='resnet5'" in error_lines[0]
  assert not list(data_dir.iterdir())


def run_main(workdir, data_dir, *extra, config='tests/tiny_config.py'):
  command = [sys.executable, '-m', 'fixres_jax.main', f'--config={config}',
             f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *extra]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('workdir, extra, message', [
    (None, ['--config.train.image_size=-5'],
     'config.train.image_size=-5: resolutions must be positive integers'),
    ('/proc/fixres_workdir', [], 'Cannot write to --workdir=/proc/fixres_workdir'),
    (None, ['--config.data.name=imagenet2012'], 'manual'),
    (None, ['--config.train.imge_size=64'],
     '--config.train.imge_size names no config field: \'imge_size\' does not exist. '
     'Did you mean "image_size"'),
], ids=['bad_value', 'unwritable_workdir', 'dataset_not_prepared', 'misspelt_field'])
@pytest.mark.slow
def test_user_error_prints_its_message_alone(tmp_path, workdir, extra, message):
  # An empty data dir: imagenet2012 is not prepared there.
  result = run_main(workdir or tmp_path / 'run', tmp_path / 'tfds', *extra)
  assert result.returncode == errors.EXIT_CODE, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert message in result.stderr
  # The message is the last thing printed.
  assert result.stderr.rstrip().splitlines()[-1] in result.stderr[result.stderr.index('Error: '):]
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(tmp_path):
  """A mistake inside a config file is a bug in that file, not a misspelt override."""
  config = tmp_path / 'broken_config.py'
  config.write_text('from fixres_jax import config as config_lib\n\n'
                    'def get_config():\n'
                    '  config = config_lib.get_base_config()\n'
                    '  config.trian.image_size = 64  # the typo is in the file\n'
                    '  return config\n')
  result = run_main(tmp_path / 'run', tmp_path / 'tfds', '--config.train.image_size=64',
                    config=str(config))
  assert result.returncode not in (0, errors.EXIT_CODE)
  assert 'Traceback' in result.stderr and 'trian' in result.stderr
