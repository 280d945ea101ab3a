"""The tf.data pipelines on the embedded dataset: exact eval, resumable training order."""

import itertools
import math

import jax
import numpy as np
import pytest
import tensorflow as tf

from fixres_jax import parallel
from fixres_jax.data import pipeline
from transforms import eval_at, train_at


def test_missing_dataset_says_how_to_prepare(tmp_path, tiny_config):
  config = tiny_config
  config.data.name = 'imagenet2012'
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='manual'):
    pipeline.load_dataset(config)


def test_first_use_hides_the_gpus_from_tensorflow(monkeypatch, tiny_config):
  """load_dataset and every read leave the GPUs to JAX (TensorFlow made to see one here)."""
  calls = []
  monkeypatch.setattr(tf.config, 'get_visible_devices', lambda device_type=None: ['GPU:0'])
  monkeypatch.setattr(tf.config, 'set_visible_devices', lambda *args: calls.append(args))
  dataset = pipeline.load_dataset(tiny_config)
  assert calls == [([], 'GPU')]
  pipeline.eval_batches(dataset, 'validation', 8, eval_at(32))
  assert calls == [([], 'GPU')] * 2


def test_tensorflow_already_started_with_a_gpu_is_only_a_warning(monkeypatch):
  def started(*args):
    raise RuntimeError('Visible devices cannot be modified after being initialized')
  monkeypatch.setattr(tf.config, 'get_visible_devices', lambda device_type=None: ['GPU:0'])
  monkeypatch.setattr(tf.config, 'set_visible_devices', started)
  pipeline.hide_gpus_from_tensorflow()


@pytest.mark.parametrize('num_devices', [1, 8])
def test_eval_counts_every_image_once(tiny_dataset, num_devices):
  num_images = tiny_dataset.num_examples('validation')
  global_batch = 24
  assert num_images % global_batch, 'the split must not be a multiple of the batch'
  mesh = jax.make_mesh((num_devices,), ('data',), devices=jax.devices()[:num_devices])
  batches = list(pipeline.eval_batches(tiny_dataset, 'validation', global_batch, eval_at(32)))
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


def test_the_next_epoch_starts_while_the_last_batches_are_read(monkeypatch):
  monkeypatch.setattr(pipeline, 'READ_AHEAD_BATCHES', 2)
  read, started = [], {}

  def epoch_batches(epoch, skip):
    started[epoch] = len(read)  # batches the consumer had taken when this epoch was asked for
    return ((epoch, i) for i in range(skip, 6))

  resumed = pipeline.read_epochs_ahead(epoch_batches, 6, epoch=2, skip=3)
  assert list(itertools.islice(resumed, 5)) == [(2, 3), (2, 4), (2, 5), (3, 0), (3, 1)]
  resumed.close()
  started.clear()
  stream = pipeline.read_epochs_ahead(epoch_batches, 6, epoch=2, skip=0)
  read.extend(itertools.islice(stream, 14))
  assert read == [(e, i) for e in (2, 3) for i in range(6)] + [(4, 0), (4, 1)]
  # Each next epoch is asked for when the consumer reaches the last 2 batches of the one
  # before, before it is needed.
  assert started[2] == 0 and 4 <= started[3] <= 6 and 10 <= started[4] <= 12
  stream.close()
  assert sorted(started) == [2, 3, 4]  # epoch 5's batches were never reached
  # A caller that stops after epoch 3: the batches end there, and epoch 4 never starts.
  started.clear()
  stream = pipeline.read_epochs_ahead(epoch_batches, 6, epoch=2, skip=0, end_epoch=4)
  assert list(stream) == [(e, i) for e in (2, 3) for i in range(6)]
  assert sorted(started) == [2, 3]


def test_train_batches_resume_at_any_step(tiny_dataset):
  kwargs = dict(split='train', global_batch=32, seed=3, transform=train_at(32),
                read=pipeline.ReadOptions(shuffle_buffer=64))
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


def shard_indices(dataset, seed, epoch, shard, num_shards, draws, **kwargs):
  """The example indices of a shard's training stream, in batch-row order."""
  stream = pipeline.shard_stream(dataset, 'train', shard, num_shards,
                                 pipeline.epoch_shard_seed(seed, epoch, shard), cache=False,
                                 **kwargs)
  return np.array([int(ex['index']) for ex in stream.take(draws).as_numpy_iterator()])


@pytest.mark.parametrize('num_shards', [1, 2])
def test_repeated_augmentation_stream(tiny_dataset, num_shards):
  """Every image 3 times an epoch (len_factor = repetitions), the copies in different BN
  groups of the same step with different crops; resuming mid-epoch gives the same stream."""
  batch, groups, reps = 24, 8, 3
  shard_batch = batch // num_shards
  per_group = shard_batch // (groups // num_shards)
  repeat = pipeline.Repetition(reps, 3.0, groups // num_shards)
  kwargs = dict(split='train', global_batch=batch, seed=5, transform=train_at(32),
                read=pipeline.ReadOptions(shuffle_buffer=1024, num_shards=num_shards),
                repeat=repeat)
  steps = pipeline.steps_per_epoch(tiny_dataset, 'train', batch, num_shards, repeat)
  per_shard = tiny_dataset.num_examples('train') // num_shards
  assert steps == math.ceil(per_shard * 3 / shard_batch)
  stream_kwargs = dict(shuffle_buffer=1024, repeat=repeat, shard_batch=shard_batch)
  rows = [shard_indices(tiny_dataset, 5, 0, shard, num_shards, steps * shard_batch,
                        **stream_kwargs).reshape(steps, shard_batch)
          for shard in range(num_shards)]
  for shard_rows in rows:
    counts = np.bincount(shard_rows.ravel())
    whole = per_shard * 3 // shard_batch * shard_batch // 3  # images whose 3 copies fit
    assert (counts[counts > 0] <= reps).all() and (counts == reps).sum() >= whole - 1
    for step in shard_rows:  # no image twice in one group of the same step
      for group in step.reshape(-1, per_group):
        assert len(set(group)) == len(group)
  batches = list(itertools.islice(pipeline.train_batches(tiny_dataset, **kwargs), steps))
  # Shard batches are concatenated; 'index' counts within a shard.
  global_rows = np.concatenate([r + shard * per_shard for shard, r in enumerate(rows)], axis=1)
  for step, b in zip(global_rows, batches):
    for index in np.unique(step):
      copies = np.flatnonzero(step == index)
      assert len(set(b['label'][copies])) == 1
      for i, j in itertools.combinations(copies, 2):  # independent augmentations
        assert not np.array_equal(b['image'][i], b['image'][j])
  resumed = pipeline.train_batches(tiny_dataset, start_step=steps // 2, **kwargs)
  for expected in batches[steps // 2:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['label'], expected['label'])
    np.testing.assert_array_equal(got['image'], expected['image'])


class _ImageNetSized:
  def num_examples(self, split):
    del split
    return 1_281_167


@pytest.mark.parametrize('num_shards', [1, 8, 64])
def test_official_recipe_epoch_is_5005_steps(num_shards):
  """RASampler(len_factor=2) epochs of the official recipe: 5,005 steps of 512 (x120 =
  600,600), whatever the number of data shards; without RA, the full batches of the split."""
  dataset = _ImageNetSized()
  assert pipeline.steps_per_epoch(dataset, 'train', 512, num_shards,
                                  pipeline.Repetition(3, 2.0)) == 5005
  assert pipeline.steps_per_epoch(dataset, 'train', 512, num_shards) == 2502


def test_progressive_resizing_changes_only_the_size_and_resumes(tiny_config, tiny_dataset):
  tiny_config.train.image_size_schedule = ((0, 24), (1, 32))
  steps = pipeline.stage_steps_per_epoch(tiny_config, tiny_dataset, 'train')
  stream = list(itertools.islice(
      pipeline.stage_batches(tiny_config, tiny_dataset, 'train', 0), steps + 2))
  assert [b['image'].shape[1] for b in stream] == [24] * steps + [32] * 2
  fixed = pipeline.train_batches(
      tiny_dataset, tiny_config.data.train_split, tiny_config.train.batch_size,
      tiny_config.seed, pipeline.train_transform(tiny_config, 32), 0,
      pipeline.read_options(tiny_config))
  for got, expected in zip(stream, fixed):  # the order of a fixed-size run
    np.testing.assert_array_equal(got['label'], expected['label'])
  np.testing.assert_array_equal(stream[-1]['image'], expected['image'])
  for start in (steps - 1, steps + 1):  # resumed in either segment
    resumed = pipeline.stage_batches(tiny_config, tiny_dataset, 'train', start)
    for expected in stream[start:]:
      np.testing.assert_array_equal(next(resumed)['image'], expected['image'])


def test_train_view_batches_are_the_train_transform_drawn_from_the_seed(tiny_config,
                                                                        tiny_dataset):
  """The parametric adaptation's target images: each image of the slice once, in the order
  and padding of the test pass, through random crops and flips that the seed fixes."""
  config, split = tiny_config, 'train[-10%:]'
  stack = lambda batches: {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  views = stack(list(pipeline.train_view_batches(config, tiny_dataset, split)))
  again = stack(list(pipeline.train_view_batches(config, tiny_dataset, split)))
  test = stack(list(pipeline.config_eval_batches(config, tiny_dataset, split,
                                                 config.train.image_size)))
  assert views['image'].shape == test['image'].shape  # K_train, padded as the test pass
  np.testing.assert_array_equal(views['label'], test['label'])
  np.testing.assert_array_equal(views['mask'], test['mask'])
  np.testing.assert_array_equal(views['image'], again['image'])
  real = views['mask'] == 1
  differs = lambda a, b: np.abs(a - b).reshape(len(a), -1).max(axis=1) > 1e-3
  assert differs(views['image'][real], test['image'][real]).all()
  config.seed += 1
  other = stack(list(pipeline.train_view_batches(config, tiny_dataset, split)))
  assert differs(views['image'][real], other['image'][real]).all()
