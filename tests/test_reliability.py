"""Nothing lost, every error clear: kills, NaNs, bad configs, bad workdirs, bad data."""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import recipe
from fixres_jax import stage
from fixres_jax import train
from fixres_jax import workdir as workdir_lib
import xla_flags

REPO = pathlib.Path(__file__).parent.parent


def main_command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'fixres_jax.main', '--config=tests/tiny_config.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *extra]


def environment():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu',
              XLA_FLAGS=xla_flags.with_devices(2))


TRAIN_ONLY = ("--config.stages=('train',)", '--config.train.num_epochs=4',
              '--config.checkpoint.every_steps=3')


def wait_for_checkpoint(directory, process, timeout=300):
  start = time.time()
  while time.time() - start < timeout:
    if directory.exists() and any(p.name.isdigit() for p in directory.iterdir()):
      return
    assert process.poll() is None, process.communicate()[0][-3000:]
    time.sleep(0.2)
  raise TimeoutError('no checkpoint appeared')


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path, synthetic_data_dir):
  reference = tmp_path / 'reference'
  subprocess.run(main_command(reference, synthetic_data_dir, *TRAIN_ONLY), cwd=REPO,
                 env=environment(), check=True, timeout=600, capture_output=True)

  killed = tmp_path / 'killed'
  process = subprocess.Popen(main_command(killed, synthetic_data_dir, *TRAIN_ONLY), cwd=REPO,
                             env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
  wait_for_checkpoint(killed / 'checkpoints' / 'train', process)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  saved = [int(p.name) for p in (killed / 'checkpoints' / 'train').iterdir() if p.name.isdigit()]
  total = 4 * (256 // 32)
  assert saved and max(saved) < total
  result = subprocess.run(main_command(killed, synthetic_data_dir, *TRAIN_ONLY), cwd=REPO,
                          env=environment(), timeout=600, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  a = checkpoint.load_variables(reference / 'checkpoints' / 'train')
  b = checkpoint.load_variables(killed / 'checkpoints' / 'train')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, synthetic_data_dir):
  workdir = tmp_path / 'run'
  process = subprocess.Popen(
      main_command(workdir, synthetic_data_dir, *TRAIN_ONLY[:2],
                   '--config.train.num_epochs=50', '--config.checkpoint.every_steps=1000'),
      cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = workdir / 'metrics.jsonl'
  start = time.time()
  while not metrics.exists():  # training has started
    assert process.poll() is None and time.time() - start < 300
    time.sleep(0.2)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=60)[0].decode()
  assert time.time() - sent < 30
  assert process.returncode == 143, output[-3000:]
  assert 'preempted' in output
  with ocp.CheckpointManager(workdir / 'checkpoints' / 'train') as manager:
    assert manager.latest_step() is not None and manager.latest_step() < 50 * 8


def run_until_line(command, text, timeout=600):
  """Runs `command`, sends SIGTERM once a line containing `text` appears; (exit code, the
  output before the signal, the output after it)."""
  process = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  watchdog = threading.Timer(timeout, process.kill)  # a line that never comes ends the test
  watchdog.start()
  before, after = [], []
  try:
    for line in process.stdout:
      (after if after else before).append(line)
      if not after and text in line:
        process.send_signal(signal.SIGTERM)
        after.append('')  # from here on, the lines come after the signal
    return process.wait(), ''.join(before), ''.join(after)
  finally:
    watchdog.cancel()


@pytest.mark.slow
def test_sigterm_during_the_last_evaluation_ends_the_run(tmp_path, synthetic_data_dir):
  """The signal comes during the train stage's final evaluation, after its last step: the run
  exits 143 and fine-tuning never starts; the re-run resumes and finishes every stage."""
  command = main_command(tmp_path, synthetic_data_dir)
  code, before, after = run_until_line(command, '[train] Evaluating at step 16')
  assert code == 143, (before + after)[-3000:]
  assert 'Received signal 15' in after and 'Traceback' not in after, after[-3000:]
  assert '[finetune]' not in after and 'fine-tuning' not in after, after[-3000:]
  assert not (tmp_path / 'checkpoints' / 'finetune').exists()

  result = subprocess.run(command, cwd=REPO, env=environment(), timeout=600,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {tmp_path / "checkpoints" / "train"} at step 16' in result.stderr
  assert '[finetune] step 8/8' in result.stderr
  assert (tmp_path / 'sweep.json').exists()


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
  directory = tmp_path / 'checkpoints'
  manager = checkpoint.create_manager(directory, async_save=False)
  state = {'w': np.arange(4.0)}
  checkpoint.save_state(manager, 1, state)
  manager.wait_until_finished()
  # What a kill during the write of step 2 leaves: orbax's temporary directory.
  (directory / '2.orbax-checkpoint-tmp-1234').mkdir()
  (directory / '2.orbax-checkpoint-tmp-1234' / 'partial').write_text('x')
  manager.close()
  manager = checkpoint.create_manager(directory)
  assert manager.latest_step() == 1
  restored = checkpoint.restore_state(manager, state)
  np.testing.assert_array_equal(restored['w'], state['w'])


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_good_checkpoint(tmp_path, tiny_config):
  config = tiny_config
  config.stages = ('train',)
  config.checkpoint.every_steps = 2
  config.train.log_every_steps = 1
  config.train.num_epochs = 8
  config.train.warmup_epochs = 0
  config.train.base_lr = 1e4  # diverges within a few steps
  with pytest.raises(FloatingPointError, match=r'at step \d+'):
    recipe.run(config, str(tmp_path))
  variables = checkpoint.load_variables(tmp_path / 'checkpoints' / 'train')
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


@pytest.mark.parametrize('field, value, message', [
    ('train.image_size', 0, 'train.image_size=0'),
    ('finetune.test_res', -8, 'finetune.test_res=-8'),
    ('data.crop_pct', 1.5, 'crop_pct=1.5'),
    ('train.batch_size', 12, 'train.batch_size=12 is not a positive multiple of the 8 devices'),
    ('stages', ('train', 'evaluate'), "stages has ['evaluate']"),
])
def test_config_validation_names_the_field(field, value, message):
  config = config_lib.get_base_config()
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
    config_lib.validate(config, device_count=8)


def test_stages_given_as_a_comma_separated_list():
  assert config_lib.parse_stages(('finetune,sweep',)) == ('finetune', 'sweep')
  assert config_lib.parse_stages(('train', 'sweep')) == ('train', 'sweep')


@pytest.mark.slow
def test_misspelt_field_is_refused_before_anything_runs(tmp_path):
  result = subprocess.run(
      main_command(tmp_path / 'w', tmp_path, '--config.train.batchsize=64'), cwd=REPO,
      env=environment(), capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'batchsize' in result.stderr
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_finetune_without_a_trained_checkpoint_says_what_to_do(tmp_path, tiny_config):
  tiny_config.stages = ('finetune', 'sweep')
  with pytest.raises(ValueError, match='init_from'):
    recipe.run(tiny_config, str(tmp_path))


def test_other_number_of_classes_suggests_init_head(tmp_path, tiny_config):
  model = train.create_model(tiny_config, num_classes=7)
  checkpoint.save_variables(tmp_path / 'converted', train.init_variables(model, 32, seed=0))
  tiny_config.init_from = str(tmp_path / 'converted')
  tiny_config.stages = ('finetune',)
  with pytest.raises(ValueError, match='init_head=False'):
    recipe.run(tiny_config, str(tmp_path / 'run'))


def test_unwritable_workdir_fails_at_start(tmp_path):
  locked = tmp_path / 'readonly'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(locked, os.W_OK):  # root ignores permission bits: use a file as parent
      target = tmp_path / 'a_file' / 'workdir'
      (tmp_path / 'a_file').write_text('')
    else:
      target = locked / 'workdir'
    with pytest.raises(workdir_lib.WorkdirError, match='Cannot write'):
      workdir_lib.check_writable(target, needed_bytes=0)
  finally:
    locked.chmod(0o700)


def test_full_disk_fails_at_start(tmp_path):
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'free but the run writes about 4096.0 PiB there \(checkpoints'):
    workdir_lib.check_writable(tmp_path, needed_bytes={'checkpoints': 2**62})


def test_two_runs_in_one_workdir_are_refused(tmp_path):
  with workdir_lib.WorkdirLock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirError, match=f'in use by pid {os.getpid()}'):
      workdir_lib.WorkdirLock(tmp_path)
  workdir_lib.WorkdirLock(tmp_path).release()  # free again once the first run ends


def test_out_of_memory_suggests_a_batch():
  def oom_step(state, batch):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 1 GiB')
  with pytest.raises(MemoryError, match='Try 32 per device: --config.train.batch_size=256'):
    stage.run_step(oom_step, None, None, global_batch=512)
