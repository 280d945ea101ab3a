"""A quiet console: the project's lines, and the libraries' only from warning level."""

import logging
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

import pytest

from fixres_jax import console
import xla_flags

REPO = pathlib.Path(__file__).parent.parent
LIBRARY_FILE = os.path.join(sysconfig.get_paths()['purelib'], 'tensorflow_datasets', 'x.py')

# What the libraries print unless told otherwise (and --library_logs brings back).
CHATTER = (
    "Unable to initialize backend 'tpu'", 'libtpu.so',  # jax probing for a TPU
    'has no dataset_info.json',  # tfds, before generating the dataset
    'Generating splits', 'Generating train examples', 'Shuffling',  # tfds's nested bars
    'Downloading and preparing dataset', 'Subsequent calls will reuse',  # tfds's prints
    'Creating a tf.data.Dataset', 'Constructing tf.data.Dataset',  # tfds, every epoch
    'oneDNN custom operations', 'absl::InitializeLog',  # TensorFlow's import
    'transition_steps',  # optax
)
# What `python -m fixres_jax.main` prints before its first training line, numbers masked.
STARTUP = [
    'I JAX on cpu: # x cpu (# local / # global devices, process # of #).',
    'I Generating fixres_synthetic/tiny/#.#.# into DATA (first use only)...',
    'I Generated fixres_synthetic/tiny/#.#.# in #.# s.',
    'I Reading fixres_synthetic/tiny/#.#.# from DATA/fixres_synthetic/tiny/#.#.#.',
    "I Dataset fixres_synthetic/tiny/#.#.#: # classes, {'train': #, 'validation': #}",
    'I Training # steps (# per epoch) at # px, global batch #, on # devices.',
]
FIRST_TRAINING_LINE = 'I [train] step #/# (#%) | '
ABSL_PREFIX = re.compile(r'^([DIWEF])\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ')


def record(pathname, level=logging.INFO, message='a line'):
  return logging.LogRecord('absl', level, pathname, 1, message, None, None)


def test_library_lines_below_warning_are_dropped():
  project = str(REPO / 'fixres_jax' / 'train.py')
  study = str(REPO / 'studies' / 'reproduce.py')
  assert console.keep_record(record(project)) and console.keep_record(record(study))
  assert not console.keep_record(record(LIBRARY_FILE))
  assert console.keep_record(record(LIBRARY_FILE, logging.WARNING))
  assert not console.keep_record(record(
      LIBRARY_FILE, logging.WARNING, 'Variant folder /d/x/1.0.0 has no dataset_info.json'))
  # The same words from the project's own code are not a library's chatter.
  assert console.keep_record(record(project, logging.WARNING, 'has no dataset_info.json'))


def test_stderr_lines_dropped_keeps_every_other_line(capfd):
  with console.stderr_lines_dropped(['oneDNN']):
    os.write(2, b'I port.cc:153] oneDNN custom operations are on.\nE a real error\n')
  assert capfd.readouterr().err == 'E a real error\n'


def run_main(workdir, data_dir, *extra):
  """fixres_jax.main's console (stdout and stderr) as a user's terminal would show it."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'JAX_PLATFORMS')}  # the defaults under test
  env.update(XLA_FLAGS=xla_flags.XLA_FLAGS, PYTHONUNBUFFERED='1')  # no device flags
  command = [sys.executable, '-m', 'fixres_jax.main', '--config=tests/tiny_config.py',
             f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
             "--config.stages=('train',)", '--config.train.num_epochs=1', *extra]
  result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600, check=False)
  text = result.stdout.decode()  # not text=True, which would turn each '\r' into a newline
  assert result.returncode == 0, text[-3000:]
  # A progress bar redraws its line after '\r': a terminal shows the last drawing.
  return [line.split('\r')[-1] for line in text.split('\n')], text


def mask(line: str, data_dir) -> str:
  """The line without absl's prefix (its level letter kept), data_dir and digits masked."""
  line = ABSL_PREFIX.sub(r'\1 ', line).replace(str(data_dir), 'DATA')
  return re.sub(r'\d+', '#', line)


@pytest.mark.slow
def test_main_prints_only_the_project_lines_before_training(tmp_path):
  data_dir = tmp_path / 'tfds'  # empty: the dataset is generated first
  lines, text = run_main(tmp_path / 'run', data_dir)
  masked = [mask(line, data_dir) for line in lines if line.strip()]
  first = next(i for i, line in enumerate(masked) if line.startswith(FIRST_TRAINING_LINE))
  assert masked[:first] == STARTUP, '\n'.join(lines[:first + 1])
  assert not [c for c in CHATTER if c in text], text[:5000]
  # Dataset generation draws one progress bar, ours (tfds's nested ones are hidden).
  bars = {mask(m.group(1), data_dir)
          for m in re.finditer(r'\r?([^\r\n:|]+):\s+\d+%\|', text)}
  assert bars == {'Generating fixres_synthetic/tiny/#.#.#'}, bars

  # --library_logs brings the libraries' lines back (the dataset is generated already).
  _, text = run_main(tmp_path / 'again', data_dir, '--library_logs')
  assert 'Creating a tf.data.Dataset' in text and 'Constructing tf.data.Dataset' in text
