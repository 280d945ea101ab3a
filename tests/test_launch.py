"""Each launcher prints, with --dry-run, the commands it would run."""

import pathlib
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).parent.parent / 'launch'


@pytest.mark.parametrize('script, expected', [
    ('gpu_workstation.sh', ['python -m fixres_jax.main']),
    ('slurm.sh', ['sbatch', '--nodes=3', 'srun python -m fixres_jax.main']),
    ('tpu_pod.sh', ['tpu-vm create', '--worker=all', 'pip install -r requirements.txt',
                    'python -m fixres_jax.main']),
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


def test_missing_arguments_print_usage():
  result = subprocess.run(['bash', str(LAUNCH / 'slurm.sh')], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2
  assert 'expected CONFIG and WORKDIR' in result.stderr and 'Usage' in result.stdout
