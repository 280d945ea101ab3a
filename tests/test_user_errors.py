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
                    'finetune.cache_dir', 'sweep.parametric_split', 'sweep.tta'}


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
  assert fields == {name for name, options in config_lib.choice_fields().items()
                    if isinstance(options[0], str)}


def unknown_choice(options: tuple):
  """A value of the options' type that is none of them."""
  return 'bogus' if isinstance(options[0], str) else max(options) + 1


@pytest.mark.parametrize('field', sorted(config_lib.choice_fields()))
def test_an_unknown_choice_is_named_with_its_options(field):
  config = config_lib.get_base_config()
  options = config_lib.choice_fields()[field]
  value = unknown_choice(options)
  set_field(config, field, value)
  with pytest.raises(errors.ConfigError,
                     match=re.escape(f'config.{field}={value!r}: use one of {options}.')):
    config_lib.validate(config, device_count=8)


def test_a_numeric_choice_refuses_an_equal_value_of_another_type():
  config = config_lib.get_base_config()
  config.model.output_stride = True  # ml_collections lets a bool in; True == 1 to Python
  with pytest.raises(errors.ConfigError, match=re.escape('config.model.output_stride=True: ')):
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


# One bad value (or more) per field that is not a choice (choice_fields), not a count with a
# least value (INTEGER_MINIMUMS) and not a bool (BOOLEAN_FIELDS, refused by the command line):
# (field, bad value, what the message says is allowed).
BAD_VALUES = [
    ('stages', ('train', 'evaluate'), "stages are ('train', 'finetune', 'sweep')"),
    ('init_from', '/no/such/checkpoint', 'does not exist: use a directory written by'),
    ('data.train_split', 'train[:200%]', 'percent slice boundaries should be in [-100, 100]'),
    ('data.train_split', 'train[', "Unrecognized split format: 'train['. Splits use tfds's"),
    ('data.eval_split', 'validation[a:]', "Splits use tfds's grammar, e.g. 'train'"),
    ('data.crop_pct', 1.5, 'it must be in (0, 1]'),
    ('data.crop_pct', float('nan'), 'it must be in (0, 1]'),
    ('data.service', 'dispatcher', "use the dispatcher's HOST:PORT"),
    ('data.color_jitter', -0.3, 'use a strength >= 0'),
    ('data.randaugment', 'rand-m6-bogus', 'rand-m6-bogus'),
    ('data.ra_repetitions', 0, 'use an integer >= 1'),
    ('data.ra_len_factor', 0.0, 'use a positive epoch length factor'),
    ('model.drop_path_rate', 1.0, 'use a probability in [0, 1)'),
    ('model.bn_group_size', 5, 'must divide the global batch 32'),
    ('model.stage_sizes', (), 'use a positive number of blocks'),
    ('train.image_size', 100_000, 'resolutions must be positive integers up to 4096 px'),
    ('train.image_size', -5, 'resolutions must be positive integers up to 4096 px'),
    ('train.image_size_schedule', ((0, 100_000), (1, 32)), 'positive integers up to 4096 px'),
    ('train.batch_size', 12, 'is not a positive multiple of the 8 devices'),
    ('train.num_epochs', 0, 'use a number > 0'),
    ('train.num_epochs', -1, 'use a number > 0'),
    ('train.base_lr', float('nan'), 'use a number > 0 (per 256 images'),
    ('train.base_lr', -0.1, 'use a number > 0 (per 256 images'),
    ('train.lr_decay_epochs', (-5,), 'use epochs >= 0'),
    ('train.lr_decay_factor', 0.0, 'use a number (0, 1]'),
    ('train.warmup_epochs', -1.0, 'use a number >= 0'),
    ('train.warmup_epochs', 5.0, 'use a warm-up in [0, num_epochs]'),
    ('train.momentum', 1.0, 'use a number [0, 1)'),
    ('train.weight_decay', -1e-4, 'use a number >= 0'),
    ('train.no_decay', ('(bn',), 'not a regular expression'),
    ('train.label_smoothing', 2.0, 'use a number [0, 1)'),
    ('train.bce_threshold', 1.0, 'use a number [0, 1)'),
    ('train.mixup_alpha', float('nan'), 'use a number >= 0'),
    ('train.cutmix_alpha', -1.0, 'use a number >= 0'),
    ('train.mix_prob', 1.5, 'use a probability in [0, 1]'),
    ('train.mix_switch_prob', -0.1, 'use a probability in [0, 1]'),
    ('train.ema_decay', 1.0, 'use a decay in [0, 1)'),
    ('train.eval_every_epochs', -1, 'use a number >= 0'),
    ('finetune.test_res', 100_000, 'resolutions must be positive integers up to 4096 px'),
    ('finetune.test_res', '4o', "use a resolution in pixels or 'auto'"),
    ('finetune.auto_split', 'validation', 'must be a slice of the training split'),
    ('finetune.auto_split', 'train[', "Splits use tfds's grammar"),
    ('finetune.auto_resolutions', (0, 64), 'positive integers up to 4096 px'),
    ('finetune.adapter_resolutions', (0, 64), 'positive integers up to 4096 px'),
    ('finetune.adapter_resolutions', (48,), "set config.finetune.mode='cached'"),
    ('finetune.auto_max_ms_per_image', -1.0, 'use a number >= 0'),
    ('finetune.auto_max_ms_per_image', float('nan'), 'use a number >= 0'),
    ('finetune.auto_crop_pcts', (0.875, 1.5), 'crop fractions must be numbers in (0, 1]'),
    ('finetune.batch_size', 0, 'is not a positive multiple of the 8 devices'),
    ('finetune.num_epochs', 0, "leave 'finetune' out of config.stages"),
    ('finetune.base_lr', -1.0, 'use a number >= 0'),
    ('finetune.lr_decay_epochs', 0, 'use a number > 0'),
    ('finetune.momentum', 1.5, 'use a number [0, 1)'),
    ('finetune.weight_decay', float('inf'), 'use a number >= 0'),
    ('finetune.bn_group_size', 5, 'must divide the global batch 32'),
    ('sweep.resolutions', (32, 100_000), 'positive integers up to 4096 px'),
    ('sweep.resolutions', (), 'give at least one K_test'),
    ('sweep.crop_pcts', (0.9, 0.9), 'names a crop fraction twice'),
    ('sweep.evals', ('validation', 'imagenet_c'), "use names of"),
    ('sweep.evals', ('validation', 'validation'), 'names a set twice'),
    ('sweep.batch_size', 12, 'is not a positive multiple of the 8 devices'),
    ('sweep.parametric_split', 'validation', 'must be a slice of the training split'),
    ('sweep.tta', 'tencrop', "'tencrop' is not a test-time augmentation; use 'none' or"),
    ('sweep.tta', 'ten_crop+flip', 'ten_crop already holds the mirror images'),
    ('sweep.tta', 'multiscale:0,1', 'needs positive factors of K_test'),
    ('sweep.tta', 'multiscale:1,200', 'above 4096 px'),
    ('sweep.parametric_target', 'train', "use one of ('train_transform', 'test_transform')"),
]
# Where a bad value is refused elsewhere: only the dataset can tell (test_sources.py,
# test_an_unknown_dataset_name_is_named, the split ranges below), or any value is usable.
CHECKED_WITH_THE_DATASET = {'data.name', 'data.folder', 'data.image_key', 'data.label_key'}
ANY_VALUE = {'data.data_dir', 'finetune.cache_dir'}  # directories, created when missing


def config_fields(config, prefix='') -> dict:
  """'section.field' -> value of every field."""
  fields = {}
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      fields.update(config_fields(value, f'{prefix}{key}.'))
    else:
      fields[f'{prefix}{key}'] = value
  return fields


def boolean_fields() -> set:
  return {k for k, v in config_fields(config_lib.get_base_config()).items()
          if isinstance(v, bool)}


def test_every_field_has_a_bad_value_that_is_refused():
  covered = ({name for name, _, _ in BAD_VALUES} | set(config_lib.choice_fields())
             | set(config_lib.INTEGER_MINIMUMS) | boolean_fields() | CHECKED_WITH_THE_DATASET
             | ANY_VALUE)
  missing = set(config_fields(config_lib.get_base_config())) - covered
  assert not missing, f'fields without a bad value in this file: {sorted(missing)}'


def run_or_exit_error(config, workdir, capsys) -> str:
  """The `Error:` main prints for `config`, which must exit 2 before the workdir exists."""
  config.allow_cpu_with_gpu = True  # a CPU-only jaxlib on a GPU machine stops first otherwise
  with pytest.raises(SystemExit) as exited:
    main.run_or_exit(config, str(workdir))
  assert exited.value.code == errors.EXIT_CODE
  err = capsys.readouterr().err
  assert err.count('Error: ') == 1 and 'Traceback' not in err, err
  assert not workdir.exists()
  return err[err.index('Error: '):]  # the last thing printed


def tiny_config_without_data():
  import tiny_config  # pylint: disable=g-import-not-at-top  (tests/, on pytest's path)
  return tiny_config.get_config()


@pytest.mark.parametrize('field, value, allowed',
                         BAD_VALUES
                         + [(f, unknown_choice(options), 'use one of')
                            for f, options in config_lib.choice_fields().items()]
                         + [(f, least - 1, f'use {"a positive integer" if least == 1 else f"an integer >= {least}"}')
                            for f, least in config_lib.INTEGER_MINIMUMS.items()])
def test_a_bad_value_exits_with_the_field_and_what_is_allowed(tmp_path, capsys, field, value,
                                                             allowed):
  config = tiny_config_without_data()
  set_field(config, field, value)
  line = run_or_exit_error(config, tmp_path / 'run', capsys)
  assert f'config.{field}' in line and allowed in line, line


def parse_command_line(argv):
  """main.parse_flags on a fresh set of flags: (the config, or None when it exited 2)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  argv = ['main', f'--config={REPO / "tests" / "tiny_config.py"}', *argv]
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  main.parse_flags(argv, flag_values)
  return flag_values.config


@pytest.mark.parametrize('override, allowed', [
    *[(f'--config.{f}=maybe', 'takes bool values') for f in sorted(boolean_fields())],
    ('--config.train.batch_size=abc', 'takes int values (the config has 32)'),
    ('--config.train.num_epochs=1.5', 'takes int values'),
    ('--config.train.base_lr=fast', 'takes float values'),
])
def test_a_value_of_the_wrong_type_exits_with_the_type(capsys, override, allowed):
  with pytest.raises(SystemExit) as exited:
    parse_command_line([override])
  assert exited.value.code == errors.EXIT_CODE
  [line] = [l for l in capsys.readouterr().err.splitlines() if l.startswith('Error: ')]
  assert line.startswith(f'Error: {override}: ') and allowed in line, line


@pytest.mark.parametrize('field, value, message', [
    ('data.eval_split', 'test', "Unknown split 'test'"),
    ('data.train_split', 'train[300:]', 'incompatible with 256 examples'),
    ('finetune.auto_split', 'train[200:100]', 'it selects no examples'),
])
def test_a_split_the_dataset_lacks_is_refused_before_it_is_generated(tmp_path, field, value,
                                                                     message):
  config = tiny_config_without_data()
  config.data.data_dir = str(tmp_path)
  set_field(config, field, value)
  with pytest.raises(errors.ConfigError) as raised:
    sources.load_source(config)
  text = errors.message(raised.value)
  assert f'config.{field}={value!r}: ' in text and message in text, text
  assert 'train (256 examples), validation (100 examples)' in text
  assert not list(tmp_path.iterdir())  # nothing generated


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
    (None, ['--config.train.batch_size=abc'],
     "Error: --config.train.batch_size=abc: invalid literal for int() with base 10: 'abc'. "
     'config.train.batch_size takes int values (the config has 32).'),
    (None, ['--config.train.image_size=100000'],
     'config.train.image_size=100000: resolutions must be positive integers up to 4096 px'),
], ids=['bad_value', 'unwritable_workdir', 'dataset_not_prepared', 'misspelt_field',
        'wrong_type', 'absurd_size'])
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
@pytest.mark.parametrize('tool, args, message', [
    ('fixres_jax.resolution', ['--train_res=128', '--aspect=wide'], "--aspect='wide': give"),
    ('fixres_jax.resolution', ['--train_res=128', '--dataset=no_such_dataset'],
     "--dataset='no_such_dataset'"),
    ('fixres_jax.resolution', ['--train_res=abc'], "--train_res=abc: invalid literal"),
    ('fixres_jax.data.prepare', ['--config=tests/tiny_config.py', '--short_side=64'],
     'Flag --out must have a value other than None'),
    ('fixres_jax.data.service', [], 'Give --port to start a dispatcher here'),
    ('fixres_jax.main', ['--config=tests/tiny_config.py', '--workdir=/tmp/x', '--bogus'],
     "Unknown command line flag 'bogus'"),
])
def test_every_tool_answers_bad_input_with_its_message_alone(tool, args, message):
  result = subprocess.run([sys.executable, '-m', tool, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == errors.EXIT_CODE, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and message in result.stderr, result.stderr[-3000:]
  assert result.stderr.rstrip().splitlines()[-1].startswith('Error: ')


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
