"""Training batches per second through the tf.data service with 1 and 2 workers, and locally.

COMMAND
  python -m benchmarks.service_throughput --data_dir=TFDS_DIR [--workers=1,2] [--seconds=20] \
      [--out=docs/benchmarks/service_cpu.json]

For each worker count, `python -m fixres_jax.data.service` starts a dispatcher and that many
workers on 127.0.0.1 (another process); the train stage's batches then read --seconds of
batches through it (config.data.service), and the same pipeline reads them locally, in the
same round. All processes share this machine's cores: the figures show the service's
overhead and that its batches keep flowing, not a speed-up (that needs workers on other
cores or hosts).
"""

import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import output
from fixres_jax import config as config_lib
from fixres_jax.data import pipeline
from fixres_jax.data import service

flags.DEFINE_string('data_dir', '', 'tfds data dir holding fixres_synthetic.')
flags.DEFINE_string('dataset', 'fixres_synthetic/reproduce', 'The dataset read.')
flags.DEFINE_integer('image_size', 128, 'K_train of the train transform.')
flags.DEFINE_integer('batch', 64, 'Batch.')
flags.DEFINE_list('workers', ['1', '2'], 'Worker counts.')
flags.DEFINE_float('seconds', 20.0, 'Seconds timed per run.')
flags.DEFINE_string('out', '', 'Also write the JSON here.')
FLAGS = flags.FLAGS


def start_service(num_workers: int):
  port, *worker_ports = service.free_local_ports(num_workers + 1)
  process = subprocess.Popen(
      [sys.executable, '-m', 'fixres_jax.data.service', f'--port={port}',
       '--workers=' + ','.join(f'127.0.0.1:{p}' for p in worker_ports)],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  while 'running' not in process.stdout.readline():
    if process.poll() is not None:
      raise RuntimeError('the service command exited')
  return process, f'127.0.0.1:{port}'


def images_per_second(batches) -> float:
  next(batches)  # start-up (the service's job creation) is not throughput
  start, count = time.perf_counter(), 0
  while time.perf_counter() - start < FLAGS.seconds:
    count += len(next(batches)['label'])
  return count / (time.perf_counter() - start)


def main(argv):
  del argv
  config = config_lib.get_base_config()
  config.data.name = FLAGS.dataset
  config.data.data_dir = FLAGS.data_dir
  config.data.train_split = 'train'
  config.data.shuffle_buffer = 4096
  config.train.image_size = FLAGS.image_size
  config.train.batch_size = FLAGS.batch
  dataset = pipeline.load_dataset(config)
  load_before = os.getloadavg()[0]
  runs = []
  for num_workers in (int(w) for w in FLAGS.workers):
    process, address = start_service(num_workers)
    try:
      remote_config = config.copy_and_resolve_references()
      remote_config.data.service = address
      remote = images_per_second(pipeline.stage_batches(remote_config, dataset, 'train', 0))
    finally:
      process.terminate()
      process.wait()
    local = images_per_second(pipeline.stage_batches(config, dataset, 'train', 0))
    runs.append({'workers': num_workers, 'service_img_per_s': round(remote, 1),
                 'local_img_per_s': round(local, 1), 'ratio': round(remote / local, 3)})
  result = {'kind': 'service', 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'cpu_count': os.cpu_count(),
            'load_average_before_after': [round(load_before, 2), round(os.getloadavg()[0], 2)],
            'config': {'dataset': FLAGS.dataset, 'transform': f'train@{FLAGS.image_size}',
                       'batch': FLAGS.batch, 'seconds': FLAGS.seconds},
            'runs': runs}
  output.emit(result, FLAGS.out)


if __name__ == '__main__':
  app.run(main)
