"""A user's mistake ends with the project's message alone and a non-zero exit; a bug keeps its
traceback. Through the real command line, as a user meets them."""

import pathlib
import subprocess
import sys

import pytest

from fixres_jax import errors

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).parent.parent


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
def test_user_error_prints_its_message_alone(tmp_path, workdir, extra, message):
  # An empty data dir: imagenet2012 is not prepared there.
  result = run_main(workdir or tmp_path / 'run', tmp_path / 'tfds', *extra)
  assert result.returncode == errors.EXIT_CODE, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert message in result.stderr
  # The message is the last thing printed.
  assert result.stderr.rstrip().splitlines()[-1] in result.stderr[result.stderr.index('Error: '):]
  assert not (tmp_path / 'run' / 'checkpoints').exists()


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
