"""gs:// workdirs against a local Cloud Storage emulator (tests/gcs_emulator.py) on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

from etils import epath
import fsspec
import pytest

import gcs_emulator
from fixres_jax import metrics
from fixres_jax import storage
from fixres_jax import workdir as workdir_lib
from test_reliability import REPO, environment, main_command


@pytest.fixture(scope='module')
def emulator_url():
  server, url = gcs_emulator.start()
  yield url
  server.stop()


@pytest.fixture
def gcs(emulator_url, monkeypatch):
  """A fresh gs:// directory in the emulator, with this process pointed at it."""
  for name, value in gcs_emulator.environment(emulator_url).items():
    monkeypatch.setenv(name, value)
  return epath.Path(f'gs://{gcs_emulator.BUCKET}/{uuid.uuid4().hex[:8]}')


def names(directory: epath.Path) -> set:
  return {os.path.relpath(p, os.fspath(directory).replace('gs://', ''))
          for p in fsspec.filesystem('gs').find(os.fspath(directory))}


def test_missing_credentials_stop_at_start(tmp_path, monkeypatch):
  monkeypatch.delenv('STORAGE_EMULATOR_HOST', raising=False)
  monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', str(tmp_path / 'missing.json'))
  with pytest.raises(storage.StorageError, match='needs Google Cloud credentials.*gcloud auth'):
    storage.check_ready('gs://some-bucket/run')


def test_missing_gcsfs_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'gcsfs', None)
  with pytest.raises(storage.StorageError, match='needs gcsfs.*pip install -r requirements'):
    storage.check_ready('gs://some-bucket/run')


def test_emulator_host_alone_points_checkpoints_there_too(gcs, emulator_url, monkeypatch):
  monkeypatch.delenv('TENSORSTORE_GCS_HTTP_URL')
  monkeypatch.delenv('GOOGLE_AUTH_TOKEN_FOR_TESTING')
  storage.check_ready(gcs)
  assert os.environ['TENSORSTORE_GCS_HTTP_URL'] == emulator_url
  assert os.environ['GOOGLE_AUTH_TOKEN_FOR_TESTING']


def test_missing_bucket_is_named(gcs):
  storage.check_ready(gcs)  # the emulator's bucket exists
  with pytest.raises(storage.StorageError, match='gs://no-such-bucket does not exist'):
    storage.check_ready('gs://no-such-bucket/run')


def closed_port() -> int:
  """A port on 127.0.0.1 that nothing listens on."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_an_unreachable_endpoint_stops_at_start_with_its_address(monkeypatch):
  url = f'http://127.0.0.1:{closed_port()}'
  for name, value in gcs_emulator.environment(url).items():
    monkeypatch.setenv(name, value)
  start = time.monotonic()
  with pytest.raises(storage.StorageError,
                     match=f'endpoint {url} \\(STORAGE_EMULATOR_HOST\\) cannot be reached'):
    storage.check_ready(f'gs://{gcs_emulator.BUCKET}/run')
  assert time.monotonic() - start < storage.CONNECT_TIMEOUT_S


def test_a_silent_endpoint_stops_within_the_connect_deadline(monkeypatch):
  """An address that never answers (a blackholed route) times out instead of hanging."""
  import socket  # pylint: disable=g-import-not-at-top
  def never_answers(address, timeout=None):
    del address
    assert timeout == storage.CONNECT_TIMEOUT_S
    raise socket.timeout('timed out')
  monkeypatch.setattr(socket, 'create_connection', never_answers)
  with pytest.raises(storage.StorageError, match='within 10 s \\(timed out\\)'):
    storage.check_reachable('http://10.255.255.1:4443', 'STORAGE_EMULATOR_HOST')


def test_every_gcsfs_request_has_a_deadline(gcs):
  storage.check_ready(gcs)
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  assert backend.fsspec_backend.fs(gcs).requests_timeout == storage.REQUEST_TIMEOUT_S  # epath's
  assert fsspec.filesystem('gs').requests_timeout == storage.REQUEST_TIMEOUT_S


@pytest.mark.slow
def test_main_with_an_unreachable_endpoint_exits_at_once(tmp_path):
  url = f'http://127.0.0.1:{closed_port()}'
  env = dict(environment(), **gcs_emulator.environment(url))
  result = subprocess.run(main_command(f'gs://{gcs_emulator.BUCKET}/run', tmp_path), cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert result.stderr.rstrip().splitlines()[-1].startswith(
      f'Error: The storage endpoint {url} (STORAGE_EMULATOR_HOST) cannot be reached')


def test_metrics_are_uploaded_on_sync_not_per_write(gcs):
  writer = metrics.MetricWriter(gcs, 'train')
  for step in range(1, 11):
    writer.write(step, {'loss': 1.0 / step})
  assert not (gcs / 'metrics.jsonl').exists()  # SYNC_EVERY_S has not passed: nothing sent
  writer.sync()
  assert len((gcs / 'metrics.jsonl').read_text().splitlines()) == 10
  writer.close()
  assert any(n.startswith('tensorboard/train/events.out.tfevents') for n in names(gcs))
  # A resumed run appends to what the workdir holds.
  writer = metrics.MetricWriter(gcs, 'finetune')
  writer.write(1, {'loss': 0.5})
  writer.close()
  records = [json.loads(line) for line in (gcs / 'metrics.jsonl').read_text().splitlines()]
  assert [r['stage'] for r in records] == ['train'] * 10 + ['finetune']


def test_second_run_in_a_remote_workdir_is_refused(gcs):
  with workdir_lib.WorkdirLock(gcs):
    assert '.lock' in names(gcs)
    with pytest.raises(workdir_lib.WorkdirError, match=f'in use by pid {os.getpid()}'):
      workdir_lib.WorkdirLock(gcs)
  assert '.lock' not in names(gcs)
  workdir_lib.WorkdirLock(gcs).release()  # free again once the first run ends


def write_lock(gcs, pid, host, age_s):
  (gcs / '.lock').write_text(json.dumps({'pid': pid, 'host': host, 'token': 'other',
                                         'heartbeat': time.time() - age_s}))


def test_lock_of_a_killed_process_is_taken_over(gcs):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  write_lock(gcs, dead.pid, os.uname().nodename, age_s=1)
  workdir_lib.WorkdirLock(gcs).release()


def test_lock_of_another_host_waits_for_its_lease(gcs):
  write_lock(gcs, 1, 'another-host', age_s=10)
  with pytest.raises(workdir_lib.WorkdirError, match='another-host.*frees itself'):
    workdir_lib.WorkdirLock(gcs)
  write_lock(gcs, 1, 'another-host', age_s=storage.LOCK_LEASE_S + 1)
  workdir_lib.WorkdirLock(gcs).release()


def run_environment(url):
  return dict(environment(), **gcs_emulator.environment(url))


@pytest.mark.slow
def test_train_killed_resumed_finetuned_and_swept_on_gcs(gcs, emulator_url,
                                                         synthetic_data_dir):
  """Every file a run writes, written to the emulator; a kill -9 then resumes from it."""
  env = run_environment(emulator_url)
  fast_sweep = ('--config.sweep.resolutions=(32,)', '--config.sweep.parametric=False',
                '--config.finetune.mode=cached')
  process = subprocess.Popen(main_command(gcs, synthetic_data_dir, *fast_sweep), cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  start = time.time()
  while 'checkpoints/train/5/commit_success.txt' not in names(gcs):  # orbax's on GCS
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.time() - start < 300, 'no checkpoint appeared'
    time.sleep(0.5)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert json.loads((gcs / '.lock').read_text())['pid'] == process.pid  # left by the kill
  result = subprocess.run(main_command(gcs, synthetic_data_dir, *fast_sweep), cwd=REPO,
                          env=env, timeout=600, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {gcs}/checkpoints/train at step' in result.stderr
  saved = names(gcs)
  for name in ('config.json', 'sweep.json', 'sweep.csv', 'sweep.png', 'stats.json',
               'features.png', 'feature_cache/moments_p0.json'):
    assert name in saved, sorted(saved)
  assert {n.split('/')[1] for n in saved if n.startswith('tensorboard/')} >= {'train',
                                                                              'finetune'}
  assert any(n.startswith('checkpoints/train/16/') for n in saved)
  assert any(n.startswith('checkpoints/finetune/') for n in saved)
  assert '.lock' not in saved
  records = [json.loads(line) for line in (gcs / 'metrics.jsonl').read_text().splitlines()]
  assert max(r['step'] for r in records if r['stage'] == 'train') == 16
  assert {r['stage'] for r in records} >= {'train', 'finetune_cache'}
  assert json.loads((gcs / 'config.json').read_text())['finetune']['mode'] == 'cached'


def test_on_disk_feature_cache_on_gcs_is_refused_with_the_fix(tiny_config):
  from fixres_jax import cached_finetune  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='set config.finetune.cache_dir to a local disk'):
    cached_finetune.cache_location(tiny_config, 'gs://bucket/run')
  tiny_config.finetune.cache_dir = '/tmp/features'
  assert cached_finetune.cache_location(tiny_config, 'gs://bucket/run') == '/tmp/features'
