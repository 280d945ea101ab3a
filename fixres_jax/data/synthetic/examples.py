"""fixres_synthetic's examples, rendered on every core and handed on in index order.

Example `index` of `split` is a pure function of (seed, split, index), so worker processes can
render disjoint chunks while the parent passes them on in order: the dataset written is byte
for byte the one a single process writes.

The workers are `python -c` subprocesses importing this module, not a multiprocessing pool:
a spawn or forkserver pool child first re-imports the parent's main module, which under
`python -m fixres_jax.main` is JAX, TensorFlow and Flax in every worker; these import NumPy,
Pillow and tensorflow-datasets only. Fork is no option once TensorFlow's and JAX's threads run.
"""

import math
import os
import pickle
import queue
import subprocess
import sys
import threading
from typing import Iterator, List

import numpy as np

from fixres_jax.data.synthetic import render

SPLIT_IDS = {'train': 0, 'validation': 1}
# Below this many examples a split is rendered in the parent: starting workers (interpreters
# importing NumPy, Pillow and tfds) would cost more than they save.
PARALLEL_MIN_EXAMPLES = 300
# Consecutive examples a worker renders and sends at once: large enough that pickling and
# pipes cost little, small enough that workers finish together.
CHUNK_EXAMPLES = 32
# Chunks a worker renders before the parent reads them: a worker whose turn has not come keeps
# rendering (and its CPU share) while the parent waits on another.
CHUNKS_AHEAD = 8
# A worker runs `python -c`: under `-m`, this module would be imported twice (by the package,
# then as __main__).
_WORKER_CODE = ('import sys; from fixres_jax.data.synthetic import examples; '
                'examples.serve(sys.argv[1:])')


def generate_example(seed: int, split: str, index: int, shift: str = '') -> dict:
  """Example `index` of `split`, as the builder stores it: JPEG bytes, label, file name.

  Args:
    shift: a name of render.SHIFTS: the same scene drawn in that style; '': DEFAULT_STYLE.
  """
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
  label = index % render.NUM_CLASSES
  jpeg, _ = render.render_jpeg(rng, label, render.SHIFTS[shift] if shift else
                               render.DEFAULT_STYLE)
  return {'image': jpeg, 'label': label, 'file_name': f'{split}/{index:08d}.jpg'}


def count_workers(num_examples: int) -> int:
  """Worker processes worth starting for a split: one per core, none for a small split."""
  if num_examples < PARALLEL_MIN_EXAMPLES:
    return 0
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  workers = min(cores or 1, math.ceil(num_examples / CHUNK_EXAMPLES))
  return workers if workers > 1 else 0


def generate_examples(seed: int, split: str, num_examples: int, num_workers: int,
                      chunk_size: int = CHUNK_EXAMPLES, shift: str = '') -> Iterator[dict]:
  """Examples 0..num_examples-1 of `split` in order, rendered by `num_workers` processes.

  With num_workers 0 the parent renders them itself. Worker w renders chunks w,
  w + num_workers, ... of `chunk_size` examples, the parent reads them in turn.

  Args:
    shift: as generate_example.

  Raises:
    RuntimeError: a worker died (its traceback is on stderr, which workers share).
  """
  if num_workers < 1:
    yield from (generate_example(seed, split, index, shift) for index in range(num_examples))
    return
  args = [str(seed), split, str(num_examples), str(chunk_size), str(num_workers),
          shift or '-']
  workers = [start_worker(args + [str(w)]) for w in range(num_workers)]
  try:
    for chunk in range(math.ceil(num_examples / chunk_size)):
      yield from read_chunk(workers[chunk % num_workers])
    for worker in workers:
      check_exit(worker.wait())
  finally:
    for worker in workers:
      worker.kill()  # the parent stopped early, or a worker failed: stop the others
      worker.wait()
      worker.stdout.close()


def start_worker(args: List[str]) -> subprocess.Popen:
  """A worker importing this copy of fixres_jax, sending pickled chunks on its stdout."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  path = os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p)
  # -P: the working directory, which may hold another checkout, is not on sys.path.
  return subprocess.Popen([sys.executable, '-P', '-c', _WORKER_CODE, *args],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=path))


def read_chunk(worker: subprocess.Popen) -> list:
  try:
    return pickle.load(worker.stdout)
  except EOFError:
    check_exit(worker.wait())
    raise RuntimeError('A fixres_synthetic worker stopped before sending all its examples.')


def check_exit(code: int) -> None:
  if code != 0:
    raise RuntimeError(f'A fixres_synthetic worker exited with code {code}; its error is above.')


def serve(argv: List[str]) -> None:
  """A worker's loop: a thread renders its chunks, up to CHUNKS_AHEAD ahead of the writing.

  Args:
    argv: seed, split, num_examples, chunk_size, num_workers, the shift ('-': none), this
      worker's number.
  """
  seed, split, shift = int(argv[0]), argv[1], '' if argv[5] == '-' else argv[5]
  num_examples, chunk_size, num_workers, worker = map(int, argv[2:5] + argv[6:7])
  # The pickles own the real stdout; anything printed goes to stderr instead.
  stream = os.fdopen(os.dup(sys.stdout.fileno()), 'wb')
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  starts = range(worker * chunk_size, num_examples, num_workers * chunk_size)
  chunks = queue.Queue(maxsize=CHUNKS_AHEAD)
  threading.Thread(target=render_chunks, daemon=True,
                   args=(seed, split, num_examples, chunk_size, starts, chunks, shift)).start()
  with stream:
    while (chunk := chunks.get()) is not None:
      if isinstance(chunk, Exception):
        raise chunk
      pickle.dump(chunk, stream)
      stream.flush()


def render_chunks(seed: int, split: str, num_examples: int, chunk_size: int, starts: range,
                  chunks: queue.Queue, shift: str = '') -> None:
  """Puts each chunk's examples on `chunks`, then None; or the error that stopped it."""
  try:
    for start in starts:
      chunks.put([generate_example(seed, split, index, shift)
                  for index in range(start, min(start + chunk_size, num_examples))])
    chunks.put(None)
  except Exception as e:  # pylint: disable=broad-except  (re-raised by the writing thread)
    chunks.put(e)
