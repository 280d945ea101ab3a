"""The real main as 2 and 4 processes (gloo CPU collectives on 127.0.0.1).

Two processes equal one; processes found from SLURM's environment alone; SIGTERM to every
process of four or to one of them stops all at one step, with a checkpoint and exit 143, and the
re-runs resume to the uninterrupted result; two processes build the adapter bank one does; an
error on one process ends both, with its message.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flax import traverse_util

from fixres_jax import adapters
from fixres_jax import checkpoint
from fixres_jax import transform_record
from fixres_jax.data import pipeline
import xla_flags
import test_sources
import tiny_config

REPO = pathlib.Path(__file__).parent.parent

pytestmark = pytest.mark.slow

# 4 data shards: 1, 2 and 4 processes read the same global batches.
TRAIN = ('--config.data.num_shards=4', "--config.stages=('train',)",
         '--config.train.num_epochs=4')


# The signal comes as the loop starts (so that it always lands before the end): the processes
# stop within a few steps of it, whatever the machine's speed. From SIGTERM to exit: the
# notice, the first step (compiled first), the save: seconds on an idle machine; bounded
# loosely for loaded CI machines (4 processes took 181 s on 2 cores at load average 20).
STEPS_TO_STOP = 8
SECONDS_TO_STOP = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main_command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'fixres_jax.main', '--config=tests/tiny_config.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *TRAIN, *extra]


def environment(devices_per_process, **extra):
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu',
              XLA_FLAGS=xla_flags.with_devices(devices_per_process),
              **extra)


def slurm_environment(job_id: int, num_tasks: int, task: int) -> dict:
  """What srun gives each task of a one-node job (jax.distributed reads these itself)."""
  return environment(1, SLURM_JOB_ID=str(job_id), SLURM_NTASKS=str(num_tasks),
                     SLURM_PROCID=str(task), SLURM_LOCALID=str(task),
                     SLURM_STEP_NODELIST='localhost', SLURM_STEP_NUM_NODES='1',
                     SLURM_NODEID='0')


def free_slurm_job_id() -> int:
  """A job id whose coordinator port (jax: 61440 + id % 4096) is free here."""
  for job_id in range(os.getpid() % 4096, os.getpid() % 4096 + 4096):
    try:
      with socket.socket() as s:
        s.bind(('127.0.0.1', 61440 + job_id % 4096))
      return job_id
    except OSError:
      continue
  raise RuntimeError('no free port in 61440-65535')


class Processes:
  """n processes of main, their output in files (so a test can watch it while they run)."""

  def __init__(self, workdir, data_dir, n, log_dir, *extra):
    address = f'127.0.0.1:{free_port()}'
    self.logs = [log_dir / f'process{i}.log' for i in range(n)]
    self.processes = []
    for i, log in enumerate(self.logs):
      with open(log, 'wb') as out:
        self.processes.append(subprocess.Popen(
            main_command(workdir, data_dir, f'--coordinator_address={address}',
                         f'--num_processes={n}', f'--process_id={i}', *extra),
            cwd=REPO, env=environment(1), stdout=out, stderr=subprocess.STDOUT))

  def output(self, i) -> str:
    return self.logs[i].read_text(errors='replace')

  def wait_for(self, i, text, timeout=300) -> None:
    start = time.time()
    while text not in self.output(i):
      assert all(p.poll() is None for p in self.processes), self.output(i)[-3000:]
      assert time.time() - start < timeout, f'{text!r} never logged'
      time.sleep(0.1)

  def wait(self, timeout=600) -> list:
    for p in self.processes:
      p.wait(timeout=timeout)
    return [p.returncode for p in self.processes]


def preempted_steps(processes) -> list:
  return [int(re.search(r'preempted at step (\d+)', processes.output(i)).group(1))
          for i in range(len(processes.logs))]


def saved_steps(workdir) -> list:
  return sorted(int(p.name) for p in (workdir / 'checkpoints' / 'train').iterdir()
                if p.name.isdigit())


def final_train_loss(workdir):
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['loss'] for r in records if r['stage'] == 'train' and 'loss' in r][-1]


def assert_same_variables(a_dir, b_dir, rtol, atol):
  a = checkpoint.load_variables(a_dir / 'checkpoints' / 'train')
  b = checkpoint.load_variables(b_dir / 'checkpoints' / 'train')
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture(scope='module')
def slurm_run(tmp_path_factory, synthetic_data_dir):
  """An uninterrupted 2-process run that finds its peers from SLURM's variables alone."""
  workdir = tmp_path_factory.mktemp('slurm_env') / 'run'
  job_id = free_slurm_job_id()
  processes = [subprocess.Popen(
      main_command(workdir, synthetic_data_dir), cwd=REPO,
      env=slurm_environment(job_id, 2, i) | {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0].decode() for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  return workdir, outputs


def test_slurm_variables_alone_bring_up_two_processes(slurm_run):
  workdir, outputs = slurm_run
  for i, out in enumerate(outputs):
    assert f'1 local / 2 global devices, process {i} of 2' in out, out[-3000:]
  # Compiled programs are kept for the next (re-queued) run.
  assert any((workdir / 'compilation_cache').iterdir())


def test_two_processes_match_one(tmp_path, synthetic_data_dir, slurm_run):
  one = tmp_path / 'one'
  subprocess.run(main_command(one, synthetic_data_dir), cwd=REPO, env=environment(2),
                 check=True, timeout=600, capture_output=True)
  two, _ = slurm_run
  np.testing.assert_allclose(final_train_loss(two), final_train_loss(one), rtol=1e-4)
  assert_same_variables(one, two, rtol=1e-3, atol=1e-5)


# Four processes, not also two: tests/test_slurm.py sends SIGTERM to a two-task job already,
# and the slow tier's time is better spent elsewhere.
@pytest.mark.parametrize('num_processes', [4])
def test_sigterm_stops_every_process_at_one_step_and_resumes(
    num_processes, tmp_path, synthetic_data_dir, slurm_run):
  workdir = tmp_path / 'run'
  last = num_processes - 1

  # (a) Every process gets SIGTERM, as from SLURM or a TPU maintenance event.
  (tmp_path / 'a').mkdir()
  run = Processes(workdir, synthetic_data_dir, num_processes, tmp_path / 'a')
  run.wait_for(last, 'Training 32 steps')
  sent = time.time()
  for p in run.processes:
    p.send_signal(signal.SIGTERM)
  assert run.wait() == [143] * num_processes, run.output(0)[-3000:]
  assert time.time() - sent < SECONDS_TO_STOP
  first = preempted_steps(run)
  assert len(set(first)) == 1 and first[0] <= STEPS_TO_STOP
  assert saved_steps(workdir)[-1] == first[0]

  # (b) Only the last process gets it: the others learn it through jax's coordination service.
  (tmp_path / 'b').mkdir()
  run = Processes(workdir, synthetic_data_dir, num_processes, tmp_path / 'b')
  run.wait_for(last, 'Training 32 steps')
  sent = time.time()
  run.processes[last].send_signal(signal.SIGTERM)
  assert run.wait() == [143] * num_processes, run.output(0)[-3000:]
  assert time.time() - sent < SECONDS_TO_STOP
  second = preempted_steps(run)
  assert len(set(second)) == 1 and first[0] < second[0] <= first[0] + STEPS_TO_STOP
  assert f'Resumed from {workdir / "checkpoints" / "train"} at step {first[0]}' in run.output(0)
  assert saved_steps(workdir)[-1] == second[0]

  # The re-run finishes where an uninterrupted run does.
  (tmp_path / 'c').mkdir()
  run = Processes(workdir, synthetic_data_dir, num_processes, tmp_path / 'c')
  assert run.wait() == [0] * num_processes, run.output(0)[-3000:]
  reference, _ = slurm_run
  exact = num_processes == 2  # same processes, same reductions
  assert_same_variables(reference, workdir, rtol=1e-6 if exact else 1e-3,
                        atol=1e-7 if exact else 1e-5)


def test_two_processes_build_the_adapter_bank_one_does(tmp_path, synthetic_data_dir, slurm_run):
  """Two processes build the bank, each saving every adapter, and it is one process's bank:
  the same K_test and transform records, the last BN's statistics (global moments) to float
  precision, the frozen backbone bit for bit. The head sees each process's cached features in
  that process's own order, so on 128 images and 8 steps it follows another path: its move
  from the trained head points the same way (cosine 0.83 here), not to the same point."""
  trained, _ = slurm_run
  bank_args = ("--config.stages=('finetune',)", '--config.finetune.mode=cached',
               '--config.finetune.adapter_resolutions=(32,)')
  one, two = tmp_path / 'one', tmp_path / 'two'
  for workdir in (one, two):
    shutil.copytree(trained, workdir)
  subprocess.run(main_command(one, synthetic_data_dir, *bank_args), cwd=REPO,
                 env=environment(2), check=True, timeout=600, capture_output=True)
  (tmp_path / 'logs').mkdir()
  run = Processes(two, synthetic_data_dir, 2, tmp_path / 'logs', *bank_args)
  assert run.wait() == [0, 0], run.output(0)[-3000:]
  assert adapters.resolutions(two) == adapters.resolutions(one) == [32, 40]
  start = flat(checkpoint.load_variables(trained / 'checkpoints' / 'train'))
  head = [key for key in start if key.startswith('params/fc/')]
  for k in (32, 40):
    a, b = (flat(adapters.load_adapter(w, k)) for w in (one, two))
    assert a.keys() == b.keys() and adapters.read_record(two, k) == adapters.read_record(one, k)
    for key in a:
      if key.startswith('batch_stats/'):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=f'{k} {key}')
      elif key not in head:
        np.testing.assert_array_equal(b[key], a[key], err_msg=f'{k} {key}')
    moves = [np.concatenate([(x[key] - start[key]).ravel() for key in head]) for x in (a, b)]
    cosine = moves[0] @ moves[1] / (np.linalg.norm(moves[0]) * np.linalg.norm(moves[1]))
    assert cosine > 0.5, (k, cosine)


def test_two_processes_score_each_candidate_with_its_adapter(tmp_path, synthetic_data_dir,
                                                            slurm_run):
  """finetune.auto_model='adapted' on two processes: each candidate's adapter is fitted over
  both processes' shards and scored, process 0's choice is every process's, and the stage
  fine-tunes there."""
  trained, _ = slurm_run
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  (tmp_path / 'logs').mkdir()
  run = Processes(workdir, synthetic_data_dir, 2, tmp_path / 'logs',
                  "--config.stages=('finetune',)", '--config.finetune.mode=cached',
                  '--config.finetune.test_res=auto', '--config.finetune.auto_model=adapted',
                  '--config.finetune.auto_resolutions=(32,40)')
  assert run.wait() == [0, 0], run.output(0)[-3000:]
  choice = json.loads((workdir / 'auto_test_res.json').read_text())
  assert choice['model'] == 'adapted' and [r['test_res'] for r in choice['records']] == [32, 40]
  assert choice['test_res'] == max(choice['records'],
                                   key=lambda r: (r['top1'], -r['loss']))['test_res']
  for k in (32, 40):
    assert f'of the adapted model at {k}' in run.output(0)
  assert transform_record.read(workdir, 'finetune')['image_size'] == choice['test_res']


def flat(variables) -> dict:
  return traverse_util.flatten_dict(checkpoint.to_host(variables), sep='/')


def test_an_error_on_one_process_ends_every_process(tmp_path, synthetic_data_dir):
  """Every training image process 1 reads (shards 2 and 3 of 4) is corrupt: process 1 stops
  on it with its message, and process 0, waiting in a collective, stops with that message
  too, instead of waiting for a process that is gone."""
  root = test_sources.make_folder(tmp_path / 'data')
  config = test_sources.folder_config(tiny_config.get_config(), root)
  dataset = pipeline.load_dataset(config)
  corrupt = [pathlib.Path(ex['file_name'].decode()) for shard in (2, 3)
             for ex in dataset.read('train', shard, 4).as_numpy_iterator()]
  for path in corrupt:
    path.write_bytes(b'')
  (tmp_path / 'logs').mkdir()
  run = Processes(tmp_path / 'run', synthetic_data_dir, 2, tmp_path / 'logs',
                  '--config.data.name=folder', f'--config.data.folder={root}',
                  '--config.train.batch_size=8')
  assert run.wait(timeout=300) == [2, 2], run.output(0)[-3000:]
  assert f'Error: Cannot decode {len(corrupt)} image(s)' in run.output(1)
  assert 'Error: process 1 stopped, so this one stops too. Its error: Cannot decode' in (
      run.output(0))
  assert corrupt[0].name in run.output(0) and 'Traceback' not in run.output(0)
