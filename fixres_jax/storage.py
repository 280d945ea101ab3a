"""Where the run's files live: local paths as they are, gs:// through fsspec (gcsfs).

Every writer in the project goes through etils epath (orbax too, for its directories and
metadata; its arrays go through tensorstore). With TensorFlow installed, epath would send
gs:// to tf.io.gfile, which knows a single endpoint (no emulator, no STORAGE_EMULATOR_HOST).
Importing this module makes epath use its fsspec backend instead, so one client, gcsfs,
serves every non-array write, on Cloud Storage and on a local emulator alike:

  STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT   gcsfs's endpoint (epath, metrics, the lock)
  TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT  tensorstore's (orbax's arrays); set from
                                                 STORAGE_EMULATOR_HOST when absent, with
                                                 GOOGLE_AUTH_TOKEN_FOR_TESTING (no login)

Every gcsfs request has a deadline (REQUEST_TIMEOUT_S, each of gcsfs's retries), and
check_ready first connects to the endpoint within CONNECT_TIMEOUT_S: an unreachable one stops
the run at start, named, instead of retrying for minutes.

Object storage cannot append, so files written a line at a time (metrics.jsonl, TensorBoard
events, profiles) are written to a local staging directory and uploaded by `Staging.sync`.
The workdir lock (`RemoteLock`) is an object holding its owner and a heartbeat.
"""

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid

from absl import logging
from etils import epath
import fsspec

from fixres_jax import errors


LOCK_LEASE_S = 300  # a lock whose heartbeat is older than this is abandoned
LOCK_HEARTBEAT_S = 60
CONNECT_TIMEOUT_S = 10  # reaching the endpoint at start
REQUEST_TIMEOUT_S = 60  # each gcsfs request (gcsfs retries a failed one up to 6 times)
CLOUD_STORAGE_ENDPOINT = 'https://storage.googleapis.com'

# Before any gs:// path is resolved: epath caches its backend choice on first use, and its
# gcsfs instance, made with fsspec's defaults for 'gs': a deadline for every request (gcsfs
# has none of its own).
os.environ.setdefault('EPATH_USE_TF', 'false')
fsspec.config.conf.setdefault('gs', {}).setdefault('requests_timeout', REQUEST_TIMEOUT_S)


class StorageError(errors.UserError, RuntimeError):
  """A gs:// workdir that cannot work: packages, credentials or bucket; the message says the fix."""


def is_remote(path) -> bool:
  return '://' in str(path)


def check_ready(workdir) -> None:
  """Fails at start, with the fix, when a gs:// workdir cannot be used from this machine."""
  if not is_remote(workdir):
    return
  if not str(workdir).startswith('gs://'):
    raise StorageError(f'--workdir={workdir}: only local paths and gs:// are supported.')
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise StorageError(
        f'--workdir={workdir} needs gcsfs ({e}): pip install -r requirements.txt') from e
  emulator = os.environ.get('STORAGE_EMULATOR_HOST')
  if emulator:
    check_reachable(emulator, 'STORAGE_EMULATOR_HOST')
    os.environ.setdefault('TENSORSTORE_GCS_HTTP_URL', emulator)
    os.environ.setdefault('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator')  # tensorstore's: no login
    logging.info('Cloud Storage emulator at %s (checkpoint arrays: %s).', emulator,
                 os.environ['TENSORSTORE_GCS_HTTP_URL'])
  else:
    check_credentials(workdir)
    check_reachable(CLOUD_STORAGE_ENDPOINT, 'Cloud Storage')
  bucket = str(workdir)[len('gs://'):].split('/')[0]
  if not fsspec.filesystem('gs').exists(bucket):
    raise StorageError(f'--workdir={workdir}: the bucket gs://{bucket} does not exist or '
                       f'cannot be read: create it (gcloud storage buckets create '
                       f'gs://{bucket}) or fix the name.')


def check_reachable(endpoint: str, what: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
  """Connects to the storage endpoint's host and port within `timeout_s`.

  Raises:
    StorageError: naming the endpoint, when the connection fails or takes longer.
  """
  url = urllib.parse.urlsplit(endpoint if '://' in endpoint else f'http://{endpoint}')
  port = url.port or (443 if url.scheme == 'https' else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=timeout_s).close()
  except OSError as e:  # refused, unresolvable, or timed out (socket.timeout is one)
    raise StorageError(
        f'The storage endpoint {endpoint} ({what}) cannot be reached from this machine within '
        f'{timeout_s:g} s ({e}): start it or fix the address (STORAGE_EMULATOR_HOST), or check '
        'the network.') from e


def check_credentials(workdir) -> None:
  import google.auth  # pylint: disable=g-import-not-at-top  (a gcsfs dependency)
  try:
    google.auth.default()
  except google.auth.exceptions.DefaultCredentialsError as e:
    raise StorageError(
        f'--workdir={workdir} needs Google Cloud credentials, and none were found ({e}). '
        'Run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a '
        'service-account key, or run on a Cloud VM with a service account.') from e


class Staging:
  """A local directory mirroring part of a workdir, for files that grow by appends.

  For a local workdir it is the workdir itself and `sync` does nothing. For a remote one it is
  a temporary directory: `sync` uploads the files that changed since the last sync, whole
  (object storage has no append), so callers sync on a cadence, never per write.
  """

  def __init__(self, workdir):
    self.workdir = epath.Path(workdir)
    self.remote = is_remote(workdir)
    self.root = epath.Path(tempfile.mkdtemp(prefix='fixres_staging_')) if self.remote \
        else self.workdir
    self.synced = {}  # relative path -> (size, mtime) at its last upload
    self.last_sync = time.monotonic()

  def local(self, relative: str) -> epath.Path:
    """The local path of WORKDIR/relative, holding the remote file's content if any."""
    path = self.root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if self.remote and not path.exists() and (self.workdir / relative).exists():
      path.write_bytes((self.workdir / relative).read_bytes())
      self.synced[relative] = _signature(path)
    return path

  def sync(self, every_s: float = 0.0) -> None:
    """Uploads changed files, at most once per `every_s` seconds."""
    if not self.remote or time.monotonic() - self.last_sync < every_s:
      return
    for directory, _, files in os.walk(self.root):
      for name in files:
        local = os.path.join(directory, name)
        relative = os.path.relpath(local, self.root)
        signature = _signature(epath.Path(local))
        if self.synced.get(relative) != signature:
          (self.workdir / relative).parent.mkdir(parents=True, exist_ok=True)
          (self.workdir / relative).write_bytes(epath.Path(local).read_bytes())
          self.synced[relative] = signature
    self.last_sync = time.monotonic()

  def close(self) -> None:
    self.sync()
    if self.remote:
      shutil.rmtree(self.root, ignore_errors=True)


def _signature(path: epath.Path) -> tuple:
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


class RemoteLock:
  """An exclusive lock on a gs:// workdir: the object WORKDIR/NAME, kept fresh by a heartbeat.

  A lock is abandoned, and taken over, when its heartbeat is older than LOCK_LEASE_S, or at
  once when its owner was a process of this machine that no longer exists (a kill -9).
  """

  def __init__(self, workdir, name: str, error_type=StorageError):
    self.path = epath.Path(workdir) / name
    self.record = {'pid': os.getpid(), 'host': socket.gethostname(), 'token': uuid.uuid4().hex}
    self.stop = threading.Event()
    held = self._read()
    if held is not None and not _abandoned(held):
      raise error_type(
          f'--workdir={workdir} is in use by pid {held["pid"]} on {held["host"]} (heartbeat '
          f'{time.time() - held["heartbeat"]:.0f} s ago). Two runs in one workdir would '
          'overwrite each other: wait for it to finish, stop it, or choose another workdir. '
          f'If that run is dead, the lock frees itself {LOCK_LEASE_S} s after its last '
          f'heartbeat, or delete {self.path}.')
    if held is not None:
      logging.warning('Taking over the abandoned lock %s of pid %d on %s.', self.path,
                      held['pid'], held['host'])
    self._write(create=held is None)
    if self._read()['token'] != self.record['token']:  # another run wrote in between
      raise error_type(f'--workdir={workdir} was locked by another run as this one started.')
    self.thread = threading.Thread(target=self._beat, daemon=True)
    self.thread.start()

  def _read(self):
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None

  def _write(self, create: bool = False) -> None:
    data = json.dumps({**self.record, 'heartbeat': time.time()}).encode()
      # mode='create' is a precondition (ifGenerationMatch=0): only one of two runs creates it.
    fsspec.filesystem('gs').pipe_file(os.fspath(self.path), data,
                                      mode='create' if create else 'overwrite')

  def _beat(self) -> None:
    while not self.stop.wait(LOCK_HEARTBEAT_S):
      try:
        self._write()
      except Exception as e:  # pylint: disable=broad-except  (the next beat retries)
        logging.warning('Could not refresh the workdir lock %s: %s', self.path, e)

  def release(self) -> None:
    self.stop.set()
    self.thread.join()
    held = self._read()
    if held is not None and held['token'] == self.record['token']:
      self.path.unlink()


def _abandoned(held: dict) -> bool:
  if time.time() - held['heartbeat'] > LOCK_LEASE_S:
    return True
  if held['host'] != socket.gethostname():
    return False
  try:
    os.kill(held['pid'], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # alive, another user's
    return False
  return False
