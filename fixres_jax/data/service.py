"""tf.data service: training transforms on other processes or hosts, the same batches in order.

Start a dispatcher and its workers (one command per host; the worker list is the same on every
host, each starts the workers whose host is its own):

  python -m fixres_jax.data.service --port=5050 --workers=localhost:5051,localhost:5052

then train with --config.data.service=localhost:5050 (from another host: DISPATCHER:5050; the
workers read the dataset's files, so they must see the same paths). Evaluation never goes
through the service: it stays exact and local.

Why the batches are the same. The trainer builds its usual training pipeline and sends it to
the dispatcher, split in two (remote_batches): the cheap part (read, shuffle, skip to the
resumed step, group into per-step batches of encoded images) runs in full on every worker;
the expensive part (decode, crop, resize, augment) runs on every num_workers-th step only,
chosen by tf.data's static HINT sharding (worker i of n takes steps i, i + n, ...). Every
random choice is seeded by the example's position, not by the worker, so a step's batch is
the one the local pipeline makes. Workers deliver in whatever order they finish; the trainer
puts the batches back in step order (a bounded reorder buffer). The cost: every worker reads
every encoded image (reading is a small fraction of decoding), the dispatcher needs the fixed
worker list (HINT sharding), and a missing or dead worker stalls training instead of losing
batches (the run then resumes from its last checkpoint like any interrupted run).
"""

import socket
import time
from typing import Callable, Iterator, List, Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from fixres_jax import errors

LOCAL_HOSTS = ('localhost', '127.0.0.1', '::1')


def remote_batches(streams: Sequence[tf.data.Dataset], transforms: Sequence[Callable],
                   shard_batch: int, first_step: int, num_steps: int, address: str,
                   options: tf.data.Options) -> Iterator[dict]:
  """The batches of steps first_step..first_step+num_steps-1, transformed by the service.

  Args:
    streams: per data shard, the encoded examples in training order (skipped to first_step).
    transforms: per data shard, the example -> {'image', 'label'} transform.
    shard_batch: examples per shard per step; a step's batch concatenates the shards'.
    address: the dispatcher, HOST:PORT.

  Yields:
    NumPy {'image', 'label'} batches, in step order.
  """
  grouped = tf.data.Dataset.zip(tuple(s.batch(shard_batch, drop_remainder=True)
                                      for s in streams))
  grouped = grouped.take(num_steps).enumerate(first_step)
  grouped = grouped.shard(tf.data.experimental.SHARD_HINT, tf.data.experimental.SHARD_HINT)
  examples = grouped.map(
      lambda step, groups: (tf.fill([shard_batch], step), groups)).unbatch()

  def transform(step, group):
    return step, tuple(fn(ex) for fn, ex in zip(transforms, group))

  ds = examples.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(shard_batch, drop_remainder=True).map(
      lambda step, group: dict(_concat(group), step=step[0]))
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
  ds = ds.apply(tf.data.experimental.service.distribute(
      processing_mode=tf.data.experimental.service.ShardingPolicy.HINT, service=address,
      compression=None))  # decoded pixels barely compress: no CPU spent trying
  return in_step_order(ds.prefetch(2).as_numpy_iterator(), first_step, num_steps)


def _concat(group) -> dict:
  return {k: tf.concat([b[k] for b in group], 0) for k in group[0]}


def in_step_order(batches: Iterator[dict], first_step: int, num_steps: int
                  ) -> Iterator[dict]:
  """Yields the batches by their 'step' field, first_step onwards, without it.

  Raises:
    RuntimeError: the stream ended before every step arrived (a worker was lost).
  """
  pending, expected = {}, first_step
  for batch in batches:
    pending[int(batch.pop('step'))] = batch
    while expected in pending:
      yield pending.pop(expected)
      expected += 1
  if expected != first_step + num_steps:
    raise RuntimeError(
        f'The tf.data service delivered steps up to {expected - 1} of {first_step}..'
        f'{first_step + num_steps - 1}: a worker was lost. Restart the workers and resume '
        'the run (it continues from its last checkpoint).')


def free_local_ports(count: int) -> List[int]:
  """`count` TCP ports free on 127.0.0.1 right now (for a dispatcher and its workers)."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def is_local(address: str) -> bool:
  host = address.rsplit(':', 1)[0]
  return host in LOCAL_HOSTS + (socket.gethostname(), socket.getfqdn())


def start_servers(port: int, workers: List[str], dispatcher: str = '') -> list:
  """Starts a dispatcher on `port` (if > 0) and the local ones of `workers`; returns them.

  Args:
    workers: every worker's HOST:PORT (the dispatcher's static list, for HINT sharding).
    dispatcher: the dispatcher the workers join; '' = localhost:port.
  """
  if not workers:
    raise ValueError('--workers is empty: list every worker as HOST:PORT (HINT sharding '
                     'needs the full list on the dispatcher).')
  servers = []
  if port:
    servers.append(tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=port, worker_addresses=workers)))
    logging.info('Dispatcher on port %d for workers %s.', port, workers)
  dispatcher = dispatcher or f'localhost:{port}'
  for address in workers:
    if is_local(address):
      servers.append(tf.data.experimental.service.WorkerServer(
          tf.data.experimental.service.WorkerConfig(
              dispatcher_address=dispatcher, worker_address=address,
              port=int(address.rsplit(':', 1)[1]))))
      logging.info('Worker %s joined %s.', address, dispatcher)
  return servers


def main(argv):
  del argv
  tf.config.set_visible_devices([], 'GPU')  # the accelerators belong to the trainer
  flags_ = flags.FLAGS
  if not flags_.port and not flags_.dispatcher:
    raise app.UsageError('Give --port to start a dispatcher here, or --dispatcher=HOST:PORT '
                         'to start only this host\'s workers.')
  try:
    servers = start_servers(flags_.port, flags_.workers, flags_.dispatcher)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(f'tf.data service: {len(servers)} server(s) running; train with '
        f'--config.data.service={flags_.dispatcher or f"localhost:{flags_.port}"}', flush=True)
  while True:  # serve until killed
    time.sleep(3600)


if __name__ == '__main__':
  flags.DEFINE_integer('port', 0, 'Start a dispatcher on this port (0: none here).')
  flags.DEFINE_list('workers', [], 'Every worker, HOST:PORT; the local ones start here.')
  flags.DEFINE_string('dispatcher', '', 'The dispatcher workers join ("": localhost:PORT).')
  errors.run_tool(main)
