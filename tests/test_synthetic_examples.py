"""fixres_synthetic's examples rendered by worker processes: the same bytes, in the same order."""

import os

import pytest
import tensorflow_datasets as tfds

from fixres_jax.data import synthetic
from fixres_jax.data.synthetic import examples


def test_small_splits_are_rendered_in_the_parent():
  assert examples.count_workers(examples.PARALLEL_MIN_EXAMPLES - 1) == 0
  cores = len(os.sched_getaffinity(0))
  workers = examples.count_workers(100_000)
  assert workers == (cores if cores > 1 else 0)
  # Never more workers than chunks.
  chunks = examples.PARALLEL_MIN_EXAMPLES // examples.CHUNK_EXAMPLES + 1
  assert examples.count_workers(examples.PARALLEL_MIN_EXAMPLES) <= chunks


@pytest.mark.slow  # starts worker processes
@pytest.mark.parametrize('num_examples,num_workers,chunk_size', [
    (23, 2, 4),  # a short last chunk
    (10, 4, 4),  # a worker with nothing to do
    (9, 3, 1),
])
def test_workers_render_the_parents_bytes_in_order(num_examples, num_workers, chunk_size):
  expected = [synthetic.generate_example(0, 'validation', i) for i in range(num_examples)]
  rendered = examples.generate_examples(0, 'validation', num_examples, num_workers, chunk_size)
  assert list(rendered) == expected


@pytest.mark.slow
def test_a_failing_worker_stops_the_generation(monkeypatch):
  with pytest.raises(RuntimeError, match='worker exited with code 1'):
    list(examples.generate_examples(0, 'test', 8, 2, chunk_size=2))  # no split 'test'

  # A reader that stops early leaves no worker behind.
  started, start = [], examples.start_worker
  monkeypatch.setattr(examples, 'start_worker',
                      lambda args: started.append(start(args)) or started[-1])
  rendered = examples.generate_examples(0, 'train', 64, 2, chunk_size=4)
  next(rendered)
  rendered.close()
  assert len(started) == 2 and all(worker.poll() is not None for worker in started)


@pytest.mark.slow
def test_the_builder_writes_the_workers_examples(tmp_path, monkeypatch):
  monkeypatch.setattr(examples, 'count_workers', lambda num_examples: 2)
  config = synthetic.FixresSyntheticConfig(name='workers', num_train=40, num_validation=3)
  builder = tfds.builder('fixres_synthetic', config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
  written = {ex['file_name'].decode(): (ex['image'], int(ex['label']))
             for ex in tfds.as_numpy(ds)}
  for index in range(40):
    example = synthetic.generate_example(0, 'train', index)
    assert written[example['file_name']] == (example['image'], example['label'])
