"""The tf.data pipelines on the embedded dataset: exact eval, resumable training order."""

import jax
import numpy as np
import pytest

from fixres_jax import parallel
from fixres_jax.data import pipeline


def test_missing_dataset_says_how_to_prepare(tmp_path, tiny_config):
  config = tiny_config
  config.data.name = 'imagenet2012'
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='manual'):
    pipeline.load_dataset(config)


@pytest.mark.parametrize('num_devices', [1, 8])
def test_eval_counts_every_image_once(tiny_dataset, num_devices):
  num_images = tiny_dataset.num_examples('validation')
  global_batch = 24
  assert num_images % global_batch, 'the split must not be a multiple of the batch'
  mesh = jax.make_mesh((num_devices,), ('data',), devices=jax.devices()[:num_devices])
  batches = list(pipeline.eval_batches(tiny_dataset, 'validation', 32, global_batch))
  assert len(batches) == pipeline.num_eval_batches(tiny_dataset, 'validation', global_batch)
  assert all(b['image'].shape == (global_batch, 32, 32, 3) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == num_images and set(np.unique(mask)) == {0.0, 1.0}
  # Every real image appears once: the labels of masked rows equal the split's labels.
  labels = np.concatenate([b['label'] for b in batches])[mask == 1]
  expected = [int(ex['label']) for ex in tiny_dataset.builder.as_dataset(
      split='validation').as_numpy_iterator()]
  assert sorted(labels.tolist()) == sorted(expected)
  # Sharded on the mesh, the masked sum is still exact.
  total = sum(float(parallel.make_global_batch(b, mesh)['mask'].sum()) for b in batches)
  assert total == num_images


def test_train_batches_resume_at_any_step(tiny_dataset):
  kwargs = dict(split='train', image_size=32, global_batch=32, seed=3, shuffle_buffer=64)
  steps = pipeline.steps_per_epoch(tiny_dataset, 'train', 32)
  stream = pipeline.train_batches(tiny_dataset, **kwargs)
  first = [next(stream) for _ in range(steps + 2)]
  resumed = pipeline.train_batches(tiny_dataset, start_step=steps - 1, **kwargs)
  for expected in first[steps - 1:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['label'], expected['label'])
    np.testing.assert_array_equal(got['image'], expected['image'])
  # A new epoch reshuffles: epoch 2 does not repeat epoch 1's order.
  epoch1 = np.concatenate([b['label'] for b in first[:steps]])
  again = pipeline.train_batches(tiny_dataset, start_step=steps, **kwargs)
  epoch2 = np.concatenate([next(again)['label'] for _ in range(steps)])
  assert not np.array_equal(epoch1, epoch2)
