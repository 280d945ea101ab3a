"""launch/slurm.sh on a real one-node SLURM (launch/local_slurm.sh): a 2-task CPU job of the
tiny config runs every stage; `scancel --signal=TERM` mid-run checkpoints, exits 143 and the
requeued job resumes to sweep.json."""

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time

import pytest

import xla_flags

REPO = pathlib.Path(__file__).parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which('sbatch') is None,
                       reason='SLURM is not installed (apt-get install slurm-wlm munge; '
                       '.ci/run installs them)'),
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
  """A running one-node SLURM; yields the environment its clients need."""
  state = tmp_path_factory.mktemp('slurm')
  env = dict(os.environ, STATE_DIR=str(state), SLURMCTLD_PORT=str(free_port()),
             SLURMD_PORT=str(free_port()), SLURM_CONF=str(state / 'slurm.conf'))
  script = str(REPO / 'launch' / 'local_slurm.sh')
  result = subprocess.run(['bash', script, 'start'], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  yield env
  subprocess.run(['bash', script, 'stop'], env=env, timeout=60)


def job_field(env, job_id, field) -> str:
  out = subprocess.run(['scontrol', 'show', 'job', job_id], env=env, capture_output=True,
                       text=True, check=True, timeout=30).stdout
  return re.search(rf'\b{field}=(\S+)', out).group(1)


def wait_until(condition, what, timeout=600):
  start = time.time()
  while not condition():
    assert time.time() - start < timeout, f'timed out waiting for {what}'
    time.sleep(1)


def test_scancel_term_checkpoints_and_the_requeued_job_finishes(slurm, tmp_path,
                                                                 synthetic_data_dir):
  workdir = tmp_path / 'run'
  log = tmp_path / 'job.log'
  env = dict(slurm, GPUS_PER_NODE='0', NODES='1', TASKS_PER_NODE='2', CPUS_PER_TASK='1',
             TIME='00:30:00', LOG=str(log), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=xla_flags.with_devices(1))
  submitted = subprocess.run(
      ['bash', 'launch/slurm.sh', 'tests/tiny_config.py', str(workdir),
       f'--config.data.data_dir={synthetic_data_dir}',
       "--config.stages=('train','finetune','sweep')"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert submitted.returncode == 0, submitted.stderr
  job_id = re.search(r'Submitted batch job (\d+)', submitted.stdout).group(1)

  def logged(text):
    return log.exists() and text in log.read_text(errors='replace')

  wait_until(lambda: logged('Training 16 steps'), 'training to start')
  subprocess.run(['scancel', '--signal=TERM', job_id], env=env, check=True, timeout=30)
  # Both tasks checkpoint one step and exit 143; the job script requeues the job.
  wait_until(lambda: job_field(env, job_id, 'Restarts') == '1', 'the requeue', timeout=120)
  text = log.read_text(errors='replace')
  steps = re.findall(r'train stage preempted at step (\d+)', text)
  assert len(steps) == 2 and len(set(steps)) == 1, text[-3000:]
  assert (workdir / 'checkpoints' / 'train' / steps[0]).is_dir()
  # SLURM holds a requeued job back for two minutes; let it start sooner, but not within the
  # second its old run was cancelled (slurmd would take the new credential for the revoked one).
  time.sleep(5)
  subprocess.run(['scontrol', 'update', f'JobId={job_id}', 'StartTime=now'], env=env,
                 check=True, timeout=30)
  wait_until(lambda: job_field(env, job_id, 'JobState') in ('COMPLETED', 'FAILED'),
             'the requeued job')
  text = log.read_text(errors='replace')
  state = (pathlib.Path(env['STATE_DIR']) / 'slurmctld.log').read_text()
  assert job_field(env, job_id, 'JobState') == 'COMPLETED', text[-3000:] + state[-2000:]
  assert f'at step {steps[0]}' in text and 'Resumed from' in text
  records = json.loads((workdir / 'sweep.json').read_text())
  assert {r['model'] for r in records} >= {'trained', 'finetuned'}
