"""launch/tpu_pod.sh through a fake `gcloud` that records its calls and runs what a worker would.

The fake keeps the slice's state in a file, copies the repository to a worker home for `scp`,
and runs `ssh --command` with bash in that home. On the worker, `sudo` and `python3.11` are
fakes too: the venv they make holds a `pip` that records its arguments and a `python3` that
records its argv, environment and session once the test lets it go, after the launcher has
returned: the run outlives the ssh session.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).parent.parent

GCLOUD = r'''
import json, os, shutil, subprocess, sys
state = os.path.join(os.environ['FAKE_DIR'], 'state')
args = sys.argv[1:]
with open(os.path.join(os.environ['FAKE_DIR'], 'gcloud.jsonl'), 'a') as f:
  f.write(json.dumps(args) + '\n')
verb = ' '.join(a for a in args[:5] if not a.startswith('-'))
if verb.startswith('compute tpus tpu-vm describe'):
  if not os.path.exists(state):
    sys.exit('ERROR: NOT_FOUND')
  print(open(state).read())
elif 'create' in args:
  open(state, 'w').write('READY')
elif 'delete' in args:
  os.remove(state)
elif 'scp' in args:
  home = os.environ['FAKE_WORKER_HOME']
  shutil.copytree(args[-2], os.path.join(home, args[-1].split(':')[1]), dirs_exist_ok=True,
                  ignore=shutil.ignore_patterns('.git', '__pycache__'))
elif 'ssh' in args:
  command = next(a for a in args if a.startswith('--command='))[len('--command='):]
  home = os.environ['FAKE_WORKER_HOME']
  sys.exit(subprocess.run(['bash', '-c', command], cwd=home, env=dict(os.environ, HOME=home),
                          stdin=subprocess.DEVNULL).returncode)
'''

RECORDER = r'''
import json, os, sys, time
name = os.path.basename(sys.argv[0])
release = os.path.join(os.environ['FAKE_DIR'], 'release')
deadline = time.time() + 300  # a failed test never releases it: give up, never linger
while name == 'python3' and not os.path.exists(release) and time.time() < deadline:
  time.sleep(0.1)  # until the launcher has returned
record = {'tool': name, 'argv': sys.argv, 'cwd': os.getcwd(), 'sid': os.getsid(0),
          'tfds': os.environ.get('TFDS_DATA_DIR')}
with open(os.path.join(os.environ['FAKE_DIR'], 'worker.jsonl'), 'a') as f:
  f.write(json.dumps(record) + '\n')
if name == 'python3.11' and sys.argv[1:3] == ['-m', 'venv']:
  bin_dir = os.path.join(sys.argv[3], 'bin')
  os.makedirs(bin_dir, exist_ok=True)
  for tool in ('pip', 'python3'):
    os.symlink(sys.argv[0], os.path.join(bin_dir, tool))
'''


def executable(path: pathlib.Path, body: str) -> None:
  path.write_text(f'#!{sys.executable}\n{body}')
  path.chmod(0o755)


@pytest.fixture
def fake(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  executable(bin_dir / 'gcloud', GCLOUD)
  recorder = tmp_path / 'recorder'
  executable(recorder, RECORDER)
  for tool in ('sudo', 'python3.11'):
    (bin_dir / tool).symlink_to(recorder)
  (tmp_path / 'worker').mkdir()
  env = {'PATH': f'{bin_dir}:/usr/bin:/bin', 'FAKE_DIR': str(tmp_path),
         'FAKE_WORKER_HOME': str(tmp_path / 'worker'), 'TFDS_DATA_DIR': 'gs://b/tfds data'}
  return tmp_path, env


def launch(env, *extra, **more_env):
  return subprocess.run(['bash', str(REPO / 'launch' / 'tpu_pod.sh'), 'configs/demo.py',
                         'gs://b/run it', *extra], env=dict(env, **more_env),
                        capture_output=True, text=True, timeout=120)


def read_jsonl(path: pathlib.Path) -> list:
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_main(tmp_path) -> dict:
  (tmp_path / 'release').touch()
  start = time.time()
  while time.time() - start < 30:
    runs = [r for r in read_jsonl(tmp_path / 'worker.jsonl') if r['tool'] == 'python3']
    if runs:
      return runs[0]
    time.sleep(0.2)
  raise TimeoutError('main never started on the worker')


def test_fresh_slice_gets_a_venv_and_a_detached_run_with_every_argument_intact(fake):
  tmp_path, env = fake
  extra = ["--config.stages=('train',)", '--config.name=a b$c"d']
  result = launch(env, *extra)
  assert result.returncode == 0, result.stderr
  calls = read_jsonl(tmp_path / 'gcloud.jsonl')
  assert ['compute', 'tpus', 'tpu-vm', 'create', 'fixres', '--zone=us-central2-b',
          '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base'] in calls
  # The launcher has returned while main waits; main then goes on, in a session of its own.
  main = wait_for_main(tmp_path)
  worker = tmp_path / 'worker'
  assert main['argv'][0] == str(worker / 'fixres_venv' / 'bin' / 'python3')
  assert main['argv'][1:] == ['-m', 'fixres_jax.main', '--config=configs/demo.py',
                              '--workdir=gs://b/run it', *extra]
  assert main['cwd'] == str(worker / 'fixres_jax') and main['tfds'] == 'gs://b/tfds data'
  assert main['sid'] != os.getsid(0)
  tools = {r['tool']: r['argv'][1:] for r in read_jsonl(tmp_path / 'worker.jsonl')}
  assert tools['sudo'] == ['apt-get', 'install', '-y', 'python3.11-venv']
  assert tools['python3.11'] == ['-m', 'venv', str(worker / 'fixres_venv')]
  assert tools['pip'] == ['install', '-r', 'requirements.txt', '-c', 'requirements.lock',
                          'jax[tpu]==0.10.2']
  # When main ends, its log goes to the workdir.
  start = time.time()
  while not any('storage' in c for c in read_jsonl(tmp_path / 'gcloud.jsonl')):
    assert time.time() - start < 30
    time.sleep(0.2)
  copy = next(c for c in read_jsonl(tmp_path / 'gcloud.jsonl') if 'storage' in c)
  assert copy[:3] == ['storage', 'cp', 'run.log']
  assert copy[3].startswith('gs://b/run it/logs/') and copy[3].endswith('.log')


@pytest.mark.parametrize('state', ['PREEMPTED', 'TERMINATED'])
def test_preempted_slice_is_deleted_and_queued_again_on_spot(fake, state):
  tmp_path, env = fake
  (tmp_path / 'state').write_text(state)
  result = launch(env, QUEUED='1', SPOT='1')
  assert result.returncode == 0, result.stderr
  assert f'fixres is {state}' in result.stderr
  calls = [c for c in read_jsonl(tmp_path / 'gcloud.jsonl') if 'describe' not in c]
  assert calls[0] == ['compute', 'tpus', 'queued-resources', 'delete', 'fixres',
                      '--zone=us-central2-b', '--force', '--quiet']
  assert calls[1] == ['compute', 'tpus', 'queued-resources', 'create', 'fixres',
                      '--node-id=fixres', '--zone=us-central2-b', '--accelerator-type=v4-32',
                      '--runtime-version=tpu-ubuntu2204-base', '--spot']
  wait_for_main(tmp_path)


def test_ready_slice_is_reused(fake):
  tmp_path, env = fake
  (tmp_path / 'state').write_text('READY')
  result = launch(env)
  assert result.returncode == 0, result.stderr
  calls = read_jsonl(tmp_path / 'gcloud.jsonl')
  assert not [c for c in calls if 'create' in c or 'delete' in c]
  wait_for_main(tmp_path)
