"""Cached FixRes fine-tuning: exact statistics, stored features, checkpoint form, resume."""

import functools
import json
import os
import signal
import types

from flax import traverse_util
import jax
import numpy as np
import pytest

from fixres_jax import cached_finetune
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax.data import pipeline
from fixres_jax import finetune
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import preemption
from fixres_jax import recipe
from fixres_jax import train
import tiny_config

NUM_TRAIN = 256  # fixres_synthetic/tiny
BATCH = 24  # 256 = 10 x 24 + 16: the last batch of a pass is padded


def create_model(config, dataset):
  """The tiny model with random variables standing in for a trained one."""
  model = train.create_model(config, dataset.num_classes)
  return model, train.init_variables(model, config.train.image_size, config.seed)


def run_cached(config, workdir, dataset, variables, on_batch=None) -> dict:
  return cached_finetune.finetune_cached(config, str(workdir),
                                         recipe.finetune_data(config, dataset),
                                         parallel.create_mesh(), variables, on_batch)


def flatten(variables):
  return traverse_util.flatten_dict(checkpoint.to_host(variables), sep='/')


@pytest.fixture(scope='module')
def finished(synthetic_data_dir, tmp_path_factory):
  """One uninterrupted stage, with its features on disk and progress saved every 4 batches."""
  config = tiny_config.get_config()
  config.data.data_dir = synthetic_data_dir
  config.finetune.mode = 'cached'
  config.finetune.batch_size = BATCH
  config.finetune.cache_in_memory_mb = 0  # on disk, so that pass 2 can resume
  config.checkpoint.every_steps = 4  # pass progress saved after batches 4, 8 and 11 (the end)
  dataset = pipeline.load_dataset(config)
  model, variables = create_model(config, dataset)
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = run_cached(config, workdir, dataset, variables)
  moments = cached_finetune.population_moments(  # reads the finished pass 1
      config, workdir, recipe.finetune_data(config, dataset), parallel.create_mesh(), model,
      variables)
  batches = list(pipeline.config_eval_batches(config, dataset, config.data.train_split,
                                              config.finetune.test_res, BATCH))
  return types.SimpleNamespace(config=config, dataset=dataset, model=model,
                               variables=variables, workdir=workdir, result=result,
                               moments=moments, batches=batches)


def test_batch_moments_are_the_last_bn_batch_statistics(finished):
  model, variables = finished.model, finished.variables
  images = np.random.default_rng(0).normal(size=(16, 40, 40, 3)).astype(np.float32)
  _, updates = jax.jit(functools.partial(model.apply, finetune=True, mutable=['batch_stats']))(
      variables, images)
  block, bn = model.last_bn_path
  old, new = variables['batch_stats'][block][bn], updates['batch_stats'][block][bn]
  moments = cached_finetune.batch_moments(
      model, variables, {'image': images, 'mask': np.ones(16, np.float32)}, num_views=1)
  # Flax's running average: new = 0.9 old + 0.1 batch statistic.
  np.testing.assert_allclose(moments['mean'], (new['mean'] - 0.9 * old['mean']) / 0.1,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(moments['m2'] / moments['count'],
                             (new['var'] - 0.9 * old['var']) / 0.1, rtol=1e-4, atol=1e-5)


def test_population_statistics_equal_a_float64_computation(finished):
  images = np.concatenate([b['image'][b['mask'] > 0] for b in finished.batches])
  assert len(images) == NUM_TRAIN
  conv = jax.jit(functools.partial(cached_finetune.last_bn_input, finished.model))
  x = np.concatenate([conv(finished.variables, images),
                      conv(finished.variables, images[:, :, ::-1])]
                     ).astype(np.float64)  # both views of every real image, no padding
  moments = finished.moments  # merged over padded batches, saved and read back
  assert moments['count'] == x.size // x.shape[-1]
  np.testing.assert_allclose(moments['mean'], x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(moments['m2'] / moments['count'], x.var(axis=(0, 1, 2)),
                             rtol=1e-5)


@pytest.mark.parametrize('cache_dtype, in_memory_mb, rtol', [
    ('float32', 64, 1e-5), ('bfloat16', 0, 1e-2)])
def test_stored_features_equal_the_live_model(tmp_path, finished, cache_dtype, in_memory_mb,
                                              rtol):
  config, model = finished.config.copy_and_resolve_references(), finished.model
  config.finetune.cache_dtype = cache_dtype
  config.finetune.cache_in_memory_mb = in_memory_mb
  variables = cached_finetune.set_population_stats(
      finished.variables, model.last_bn_path, finished.moments['mean'],
      finished.moments['m2'] / finished.moments['count'])
  cache = cached_finetune.cache_features(config, tmp_path,
                                         recipe.finetune_data(config, finished.dataset),
                                         parallel.create_mesh(), model, variables)
  assert (cache.directory is None) == (in_memory_mb > 0)
  assert cache.num_valid == NUM_TRAIN

  live = jax.jit(lambda v, x: model.apply(v, x, return_features=True))
  last = len(finished.batches) - 1
  for index in (0, last):  # a full batch and the padded one
    batch, rows = finished.batches[index], slice(index * BATCH, (index + 1) * BATCH)
    real = batch['mask'] > 0
    stored = np.asarray(cache.features[rows][real], np.float32)
    for view, images in enumerate((batch['image'], batch['image'][:, :, ::-1])):
      logits, features = live(variables, images)
      np.testing.assert_allclose(stored[:, view], features[real], rtol=rtol, atol=rtol)
      head = models.apply_head(model, variables['params'][model.HEAD], stored[:, view])
      np.testing.assert_allclose(head, logits[real], rtol=10 * rtol, atol=10 * rtol)
    np.testing.assert_array_equal(cache.labels[rows][real], batch['label'][real])


def test_checkpoint_differs_only_in_head_and_last_bn_statistics(finished):
  model, config = finished.model, finished.config
  directory = finished.workdir / 'checkpoints' / 'finetune'
  loaded = checkpoint.load_variables(directory)

  before, after = flatten(finished.variables), flatten(loaded)
  assert after.keys() == before.keys()
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  last_bn = '/'.join(model.last_bn_path)
  assert changed == {'params/fc/kernel', 'params/fc/bias', f'batch_stats/{last_bn}/mean',
                     f'batch_stats/{last_bn}/var'}
  for k, v in flatten(finished.result).items():
    np.testing.assert_array_equal(v, after[k])
  moments = finished.moments
  np.testing.assert_allclose(after[f'batch_stats/{last_bn}/mean'], moments['mean'],
                             rtol=1e-6)
  np.testing.assert_allclose(after[f'batch_stats/{last_bn}/var'],
                             moments['m2'] / moments['count'], rtol=1e-6)

  # The 'sgd' mode's state restores from it: the same form, finished.
  cfg = config.finetune
  steps = NUM_TRAIN // BATCH
  state = finetune.create_finetune_state(
      model, finished.variables, cfg, finetune.create_schedule_per_512(cfg, steps, BATCH),
      models.finetuned_names(model, False))
  with checkpoint.create_manager(directory) as manager:
    restored = checkpoint.restore_state(manager, state)
  assert int(restored.step) == int(cfg.num_epochs * steps)
  # The features are deleted once the checkpoint holds the result; pass 1's moments stay.
  assert [n for n in os.listdir(finished.workdir / 'feature_cache')
          if not n.startswith('moments')] == []


class Interrupted(Exception):
  pass


def test_interrupted_passes_resume_to_the_same_result(tmp_path, finished):
  calls = []

  def interrupt_at(stop):
    def hook(name, batches_done):
      calls.append((name, batches_done))
      if (name, batches_done) == stop:
        raise Interrupted()
    return hook

  def run(stop):
    calls.clear()
    return run_cached(finished.config, tmp_path, finished.dataset, finished.variables,
                      interrupt_at(stop))

  with pytest.raises(Interrupted):
    run(('statistics', 6))
  with pytest.raises(Interrupted):
    run(('features', 7))
  assert calls[0] == ('statistics', 5)  # pass 1 resumed after its save at batch 4
  resumed = run(None)
  assert calls[0] == ('features', 5)  # pass 1 was finished; pass 2 resumed after batch 4
  assert calls[-1] == ('features', 11)

  for key, value in flatten(finished.result).items():
    np.testing.assert_array_equal(flatten(resumed)[key], value, err_msg=key)


def test_a_signal_stops_a_pass_at_the_next_batch_and_it_resumes(tmp_path, finished):
  """SIGTERM in the middle of either pass: it saves that pass's progress and stops at once
  (a pass can outlast a scheduler's grace period); the re-run resumes after that batch."""
  calls = []

  def signal_at(stop):
    def hook(name, batches_done):
      calls.append((name, batches_done))
      if (name, batches_done) == stop:
        preemption.STOP.record(signal.SIGTERM)  # what the handler does on SIGTERM
    return hook

  def run(stop):
    calls.clear()
    try:
      return run_cached(finished.config, tmp_path, finished.dataset, finished.variables,
                        signal_at(stop))
    finally:
      preemption.STOP.clear()

  with pytest.raises(preemption.Stopped, match='pass 1 .* after batch 3 of 11'):
    run(('statistics', 3))
  assert calls[-1] == ('statistics', 3)  # stopped before the next batch
  with pytest.raises(preemption.Stopped, match='pass 2 .* after batch 6 of 11'):
    run(('features', 6))
  assert calls[0] == ('statistics', 4) and calls[-1] == ('features', 6)
  resumed = run(None)
  assert calls[0] == ('features', 7) and calls[-1] == ('features', 11)
  for key, value in flatten(finished.result).items():
    np.testing.assert_array_equal(flatten(resumed)[key], value, err_msg=key)


@pytest.mark.slow
def test_main_runs_the_cached_mode_and_sweeps(tmp_path, finished):
  config = finished.config.copy_and_resolve_references()
  config.init_from = str(checkpoint.save_variables(tmp_path / 'trained',
                                                   finished.variables).parent)
  config.stages = ('finetune', 'sweep')
  config.sweep.resolutions = (40,)
  config.finetune.cache_in_memory_mb = 64
  workdir = tmp_path / 'run'
  recipe.run(config, str(workdir))
  records = json.loads((workdir / 'sweep.json').read_text())
  assert {(r['model'], r['test_res']) for r in records} >= {('trained', 40), ('finetuned', 40)}
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  cache_record, = [m for m in metrics if m['stage'] == 'finetune_cache']
  assert cache_record['num_examples'] == NUM_TRAIN and cache_record['num_views'] == 2
  assert cache_record['cache_bytes'] == 11 * BATCH * (2 * 2 * 16 + 4)  # 16 bfloat16 features
  assert any(m['stage'] == 'finetune' for m in metrics)


@pytest.mark.parametrize('field, value, message', [
    ('mode', 'adam', "mode='adam': use one of"),
    ('augment', 'v2', 'augment'),
    ('train_bn_affine', True, 'train_bn_affine'),
    ('cache_dtype', 'float16', 'cache_dtype')])
def test_config_rejects_what_cached_mode_cannot_do(field, value, message):
  config = config_lib.get_base_config()
  config.finetune.mode = 'cached'
  config.finetune[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config, device_count=8)
