"""A Cloud Storage emulator on 127.0.0.1 for tests: gcp-storage-emulator, served in-process.

Two fidelity fixes, both things real Cloud Storage does: it names an object's generation in
the `x-goog-generation` header of every download (tensorstore, orbax's array writer, reads it
there to commit OCDBT manifests; the emulator only puts it in the object's JSON), and it
serves `moveTo` (gcsfs renames with it, and falls back to copy and delete only after retrying
the emulator's "not implemented" with back-off). The shim adds both.
The emulator ignores `ifGenerationMatch` preconditions, so what relies on them (the lock's
create-if-absent) is tested for its behaviour between successive runs, not for a race.
"""

import functools
from http import HTTPStatus
import socket

from gcp_storage_emulator import server as server_lib
from gcp_storage_emulator import settings
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

BUCKET = 'fixres-test'


def _with_generation(download):
  @functools.wraps(download)
  def wrapped(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = obj['generation']
      response['x-goog-metageneration'] = obj['metageneration']
    except NotFound:
      pass
    return download(request, response, storage, *args, **kwargs)
  return wrapped


def _move(request, response, storage, *args, **kwargs):
  """objects.move: a copy within the bucket, then the source deleted."""
  del args, kwargs
  bucket = request.params['bucket_name']
  try:
    moved = objects._copy(request.base_url, storage, bucket, request.params['object_id'],  # pylint: disable=protected-access
                          bucket, request.params['dest_object_id'])
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  objects._delete(storage, bucket, request.params['object_id'])  # pylint: disable=protected-access
  response.json(moved)


def _patch_server() -> None:
  if getattr(objects.download, '__wrapped__', None):
    return
  original = objects.download
  objects.download = _with_generation(original)  # objects.get calls it for alt=media
  for _, handlers in server_lib.HANDLERS:
    for method, handler in handlers.items():
      if handler is original:
        handlers[method] = objects.download
  move = (rf'^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
          r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {server_lib.POST: _move})
  server_lib.HANDLERS = (move, *server_lib.HANDLERS)  # the router reads it per request


def start():
  """Starts an emulator holding an empty BUCKET; returns (server, 'http://127.0.0.1:PORT')."""
  _patch_server()
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  server = server_lib.create_server('127.0.0.1', port, in_memory=True, default_bucket=BUCKET)
  server.start()
  return server, f'http://127.0.0.1:{port}'


def environment(url: str) -> dict:
  """What points gcsfs (epath, metrics, the lock) and tensorstore (checkpoints) at `url`."""
  return {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
          'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'x',
          # gcsfs asks a control API, absent from the emulator, whether a bucket is zonal.
          'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}
