"""The launchers: --dry-run prints every command; the SLURM job runs python with every argument
word for word (through a fake sbatch, srun, scontrol and python on PATH that execute the job)."""

import os
import pathlib
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).parent.parent / 'launch'

# Arguments a shell would mangle if a launcher pasted them into a command line unquoted.
AWKWARD = ["--config.stages=('finetune','sweep')", '--config.note=two words, $HOME "and" \\ `x`',
           '--config.note2=a\nb']


@pytest.mark.parametrize('script, expected', [
    ('gpu_workstation.sh', ['python -m fixres_jax.main']),
    ('tpu_pod.sh', ['tpu-vm create', '--worker=all', 'pip install -r requirements.txt',
                    'python3 -m fixres_jax.main']),
])
def test_dry_run_prints_every_command(script, expected, tmp_path):
  result = subprocess.run(
      ['bash', str(LAUNCH / script), 'configs/demo.py', str(tmp_path / 'w'), '--dry-run',
       '--config.seed=7'], capture_output=True, text=True, check=True, timeout=60,
      env={'PATH': '/usr/bin:/bin', 'NODES': '3'})
  out = result.stdout.replace('\\ ', ' ')
  for fragment in expected + ['configs/demo.py', str(tmp_path / 'w'), '--config.seed=7']:
    assert fragment in out, (fragment, out)
  assert all(line.startswith('+ ') for line in out.splitlines())
  assert not (tmp_path / 'w').exists()  # nothing ran


def test_slurm_dry_run_prints_the_submission(tmp_path):
  result = subprocess.run(
      ['bash', str(LAUNCH / 'slurm.sh'), 'configs/demo.py', str(tmp_path / 'w'), '--dry-run',
       '--config.seed=7'], capture_output=True, text=True, check=True, timeout=60,
      env={'PATH': '/usr/bin:/bin', 'NODES': '3'})
  for fragment in ['+ sbatch', '--nodes=3', '--gpus-per-node=8', '--ntasks-per-node=8',
                   '--signal=TERM@300', '--requeue', 'srun python -m fixres_jax.main',
                   '--config=configs/demo.py', '--config.seed=7', 'scontrol requeue']:
    assert fragment in result.stdout, (fragment, result.stdout)
  assert '--gpus-per-task' not in result.stdout  # jax picks SLURM_LOCALID among all node GPUs


def fake_slurm(tmp_path, python_exit: int) -> dict:
  """sbatch runs its stdin script as job 42; srun runs its command; python records argv."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  scripts = {
      'sbatch': 'printf "%s\\n" "$@" > "$FAKE/sbatch_args"\n'
                'cat > "$FAKE/job.sh"\nSLURM_JOB_ID=42 bash "$FAKE/job.sh"',
      'srun': 'exec "$@"',
      'scontrol': 'echo "$@" > "$FAKE/scontrol"',
      'python': f'for a in "$@"; do printf "%s\\0" "$a"; done > "$FAKE/argv"\nexit {python_exit}',
  }
  for name, body in scripts.items():
    (bin_dir / name).write_text('#!/usr/bin/env bash\n' + body + '\n')
    (bin_dir / name).chmod(0o755)
  return {'PATH': f'{bin_dir}:/usr/bin:/bin', 'FAKE': str(tmp_path), 'GPUS_PER_NODE': '4'}


@pytest.mark.parametrize('python_exit, requeued', [(0, False), (143, True)])
def test_slurm_job_passes_every_argument_word_for_word(tmp_path, python_exit, requeued):
  workdir = tmp_path / 'run dir'
  result = subprocess.run(['bash', str(LAUNCH / 'slurm.sh'), 'configs/demo.py', str(workdir),
                           *AWKWARD], capture_output=True, text=True, timeout=60,
                          env=fake_slurm(tmp_path, python_exit))
  assert result.returncode == python_exit, result.stderr
  argv = (tmp_path / 'argv').read_text().split('\0')[:-1]
  assert argv == ['-m', 'fixres_jax.main', '--config=configs/demo.py',
                  f'--workdir={workdir}', *AWKWARD]
  sbatch_args = (tmp_path / 'sbatch_args').read_text().splitlines()
  assert '--gpus-per-node=4' in sbatch_args and '--ntasks-per-node=4' in sbatch_args
  # Only a preempted run (exit 143, checkpoint saved) puts the job back in the queue.
  assert (tmp_path / 'scontrol').exists() == requeued
  if requeued:
    assert (tmp_path / 'scontrol').read_text().split() == ['requeue', '42']


def test_quote_survives_a_second_shell():
  quoted = subprocess.run(['bash', '-c', 'source "$0"; quote "$@"', str(LAUNCH / 'common.sh'),
                           *AWKWARD], capture_output=True, text=True, check=True,
                          timeout=60).stdout.rstrip('\n')
  reparsed = subprocess.run(['bash', '-c', f'printf "%s\\0" {quoted}'], capture_output=True,
                            text=True, check=True, timeout=60).stdout.split('\0')[:-1]
  assert reparsed == AWKWARD


def test_missing_arguments_print_usage():
  result = subprocess.run(['bash', str(LAUNCH / 'slurm.sh')], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2
  assert 'expected CONFIG and WORKDIR' in result.stderr and 'Usage' in result.stdout
  assert os.access(LAUNCH / 'slurm.sh', os.X_OK)
