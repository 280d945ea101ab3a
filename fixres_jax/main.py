"""Runs the FixRes recipe: train at K_train, fine-tune at K_test, sweep test resolutions.

  python -m fixres_jax.main --config=configs/demo.py --workdir=/tmp/fixres_demo

This file only wires flags, logging and exit codes to recipe.run, the recipe as a library
call. Re-running the same command skips finished stages and resumes an interrupted one from
its last checkpoint.
"""

import os
import signal
import sys
from typing import NoReturn

from absl import flags
from absl import logging
from ml_collections import config_flags

from fixres_jax import cluster
from fixres_jax import config as config_lib
from fixres_jax import console
from fixres_jax import devices
from fixres_jax import errors
from fixres_jax import peer_errors
from fixres_jax import preemption
from fixres_jax import recipe
from fixres_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for multi-process runs outside the clusters jax '
                    'detects (SLURM, Cloud TPU, Open MPI, Kubernetes). Env: '
                    'JAX_COORDINATOR_ADDRESS.')
flags.DEFINE_integer('num_processes', None, 'Number of processes (env: JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 '
                     '(env: JAX_PROCESS_ID).')
flags.DEFINE_bool('library_logs', False,
                  "Show the libraries' lines below WARNING, hidden by default: tfds's INFO "
                  "lines (two per tf.data.Dataset, every epoch), jax's backend probing "
                  "(\"Unable to initialize backend 'tpu'\"), orbax's per-save lines, "
                  "TensorFlow's C++ INFO log and import lines; also tfds's warning that a "
                  'dataset about to be generated has no dataset_info.json. Other library '
                  'warnings show either way.')
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed() -> None:
  """Joins a multi-process run (flags, JAX_* env or a detected cluster); one process needs nothing."""
  cluster.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def quiet_library_logs() -> None:
  """Keeps library lines below WARNING off the console (console.py lists them); warnings show."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # TensorFlow's C++ INFO log
  logging.get_absl_handler().addFilter(console.keep_record)
  console.import_tensorflow_quietly()


def parse_flags(argv, flag_values=FLAGS):
  """absl's flag parsing, where a misspelt --config.FIELD or a value its type cannot take
  (--config.train.batch_size=abc) ends with its message alone."""
  try:
    return flag_values(argv)
  except flags.IllegalFlagValueError as e:
    errors.exit_with(illegal_value_message(e, flag_values))
  except flags.Error as e:  # an unknown flag: absl's message names it
    errors.exit_with(str(e))
  except (AttributeError, KeyError) as e:
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    # ml_collections: "'imge_size'\nDid you mean "image_size" instead of "imge_size"?"
    text = e
    while isinstance(text, BaseException) and text.args:  # AttributeError(KeyError(str))
      text = text.args[0]
    field, *hint = str(text).split('\n')
    field = field.strip('\'"')
    culprits = [o for o in overrides if field and field in o.split('.')]
    if not culprits:
      raise  # not an override of ours: an error in the config file itself, a bug
    errors.exit_with(f'{culprits[0]} names no config field: {field!r} does not exist. '
              f"{' '.join(hint)} The fields are those of {argv_config(argv)} "
              '(defaults in fixres_jax/config.py).'.replace('  ', ' '))


def illegal_value_message(error: Exception, flag_values) -> str:
  """absl's message ('--config.train.batch_size=abc: invalid literal for int() ...'), and
  for a config field, the type it takes and its value in the config file."""
  text = str(error).removeprefix('flag ')
  name = text.split('=')[0].removeprefix('--')
  if not name.startswith('config.'):
    return text
  try:
    value = config_lib.field_value(flag_values['config'].value, name.removeprefix('config.'))
  except (AttributeError, KeyError, TypeError):  # the config file itself did not load
    return text
  return (f'{text}. config.{name.removeprefix("config.")} takes {type(value).__name__} values '
          f'(the config has {value!r}).')


def argv_config(argv) -> str:
  return next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), 'the config')


def main(argv):
  del argv
  if not FLAGS.library_logs:
    quiet_library_logs()
  # Both read when jax creates its backend: first.
  devices.request_determinism(FLAGS.config)
  devices.provision_cpu_threads()
  workdir_lib.enable_compilation_cache(FLAGS.workdir)  # before anything compiles
  initialize_distributed()
  peer_errors.watch()  # another process's error ends this one too
  logging.info('JAX on %s.', devices.describe())
  preemption.install_handlers()  # once, for the whole run: a signal ends the run, not a stage
  run_or_exit(FLAGS.config, FLAGS.workdir)


def run_or_exit(config, workdir: str) -> None:
  """recipe.run(), where a user's mistake exits with its message alone, and a stop requested by a
  signal with 128 + the signal (143 for SIGTERM, 130 for SIGINT), also once recipe.run() is done."""
  try:
    devices.check_platform(config)
    recipe.run(config, workdir)
  except preemption.Stopped as e:
    stop_with(str(e), e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C twice, or with several processes (no handler there)
    stop_with('Interrupted.', 128 + signal.SIGINT)
  except errors.UserError as e:  # anything else is a bug: its traceback stays
    peer_errors.exit_with(errors.message(e), errors.EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except  (a bug: with several processes, it
    peer_errors.exit_on_crash(e)  # ends them all; with one, it goes on to its traceback)
    raise
  if preemption.STOP.is_set():  # it came during the last stage's final work
    stop_with(f'Stopped by signal {preemption.STOP.signum} after the last stage, whose '
              'outputs are written.', preemption.STOP.exit_code())


def stop_with(message: str, code: int) -> NoReturn:
  """A requested stop: its message as a warning (no traceback), exit `code`."""
  logging.warning('%s', message)
  sys.exit(code)


if __name__ == '__main__':
  errors.run_tool(main, flags_parser=parse_flags)
