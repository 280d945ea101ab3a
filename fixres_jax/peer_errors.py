"""An error on one process of a multi-process run ends every process, with its message.

The processes of a run meet in every collective, so when one of them stops on an error (a
corrupt image in the shard only it reads, a path only its host lacks) the others wait in
their next collective: until jax's heartbeat timeout, or, at a barrier such as jax's own
shutdown, far longer. Instead the failing process posts its message in jax's coordination
service and exits at once (exit_with), skipping that shutdown barrier; every process watches
for such a post in a daemon thread (watch) and, when one appears, prints it and exits with
the same code. Checkpoints already written stay: orbax moves a step into place only once it
is complete. With one process neither does anything beyond printing and exiting.
"""

import atexit
import os
import sys
import threading
import time
import traceback
from typing import NoReturn

from jax._src import distributed  # the coordination service's client: jax has no public one

KEY = 'fixres_jax/error'
POLL_SECONDS = 1.0


def coordination_client():
  """jax's client of the coordination service, or None in a single-process run (read from
  jax.distributed's state: asking the backend could itself fail, inside an error handler)."""
  state = distributed.global_state
  return state.client if (state.num_processes or 1) > 1 else None


def exit_with(text: str, code: int) -> NoReturn:
  """Prints 'Error: TEXT', tells the other processes (they end with it), exits with `code`."""
  print(f'Error: {text}', file=sys.stderr, flush=True)
  client = coordination_client()
  if client is None:
    sys.exit(code)
  process = distributed.global_state.process_id
  try:
    client.key_value_set(KEY, f'{process}:{code}:{text}')
  except Exception:  # pylint: disable=broad-except  (another process posted first)
    pass
  if process == 0:  # it hosts the service: the others must read the post before it goes
    time.sleep(3 * POLL_SECONDS)
  sys.stdout.flush()
  os._exit(code)  # not sys.exit: jax's shutdown barrier would wait for the others


def exit_on_crash(error: BaseException) -> None:
  """A bug on one process of several: its traceback, then exit_with (exit 1); one process:
  returns, and the exception goes on with its traceback."""
  if coordination_client() is None:
    return
  traceback.print_exception(error)
  exit_with(f'{type(error).__name__} (traceback above): {error}', 1)


def watch() -> None:
  """Starts the daemon thread that ends this process when another one posts an error."""
  client = coordination_client()
  if client is None:
    return
  stop = threading.Event()

  def poll():
    while not stop.wait(POLL_SECONDS):
      try:
        post = client.key_value_try_get(KEY)
      except Exception:  # pylint: disable=broad-except  (no post: NOT_FOUND)
        continue
      process, code, text = post.split(':', 2)
      if int(process) != distributed.global_state.process_id:  # (its own: exiting already)
        print(f'Error: process {process} stopped, so this one stops too. Its error: {text}',
              file=sys.stderr, flush=True)
        os._exit(int(code))

  thread = threading.Thread(target=poll, name='peer_errors', daemon=True)
  thread.start()
  # Registered after jax.distributed.initialize's own exit hook, so it runs first: the thread
  # ends before the client it polls is shut down.
  atexit.register(lambda: (stop.set(), thread.join()))
