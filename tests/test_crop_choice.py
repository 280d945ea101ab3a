"""K_test='auto' choosing the crop fraction with K_test, and the sweep over crop fractions."""

import json

import numpy as np
import pytest

from fixres_jax import analysis
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import evaluate
from fixres_jax import parallel
from fixres_jax import recipe
from fixres_jax import train
from fixres_jax import transform_record

# Held-out top-1 of each (K_test, crop fraction): the best pair, (40, 0.5), is found by neither
# choice made one at a time (K_test at crop 1.0 gives 24, then the crop at 24 gives 1.0).
SCORES = {(24, 0.5): 0.5, (24, 1.0): 0.8, (40, 0.5): 0.9, (40, 1.0): 0.3}


@pytest.fixture
def scored(monkeypatch, tiny_config):
  """Selection on made-up scores: every pass it reads (split, K_test, crop) is recorded."""
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  reads = []

  def read(config, dataset, split, image_size, *args, **kwargs):
    reads.append((split, image_size, config.data.crop_pct))
    return reads[-1]

  def score(step_fn, variables, batches, mesh, **kwargs):
    _, test_res, crop_pct = batches
    return {'top1': SCORES[test_res, crop_pct], 'loss': 1.0}

  monkeypatch.setattr(pipeline, 'config_eval_batches', read)
  monkeypatch.setattr(pipeline, 'eval_set_batches', pytest.fail)
  monkeypatch.setattr(evaluate, 'evaluate_model', score)
  monkeypatch.setattr(parallel, 'replicate', lambda variables, mesh: variables)
  config = tiny_config
  config.finetune.test_res = 'auto'
  config.finetune.auto_resolutions = (24, 40)
  config.finetune.auto_crop_pcts = (0.5, 1.0)
  return config, reads


def test_auto_chooses_the_pair_with_the_best_held_out_score(tmp_path, scored, tiny_dataset):
  config, reads = scored
  model = train.create_model(config, tiny_dataset.num_classes)
  resolved = analysis.resolve_test_res(config, tmp_path, tiny_dataset, None, {}, model)

  assert (resolved.finetune.test_res, resolved.data.crop_pct) == (40, 0.5)
  assert (config.finetune.test_res, config.data.crop_pct) == ('auto', 0.875)  # left alone
  # Every pair, one pass each, on the held-out training slice and nothing else.
  assert sorted(reads) == sorted((config.finetune.auto_split, k, c) for k, c in SCORES)
  choice = json.loads((tmp_path / 'auto_test_res.json').read_text())
  assert (choice['test_res'], choice['crop_pct'], choice['crop_pcts']) == (40, 0.5, [0.5, 1.0])
  assert {(r['test_res'], r['crop_pct']): r['top1'] for r in choice['records']} == SCORES

  # A re-run reuses the choice; other candidate crops choose again.
  reads.clear()
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, {}, model) == (40, 0.5)
  assert not reads
  config.finetune.auto_crop_pcts = (1.0,)
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, {}, model) == (24, 1.0)
  assert len(reads) == 2


def test_auto_without_crop_candidates_keeps_the_configured_crop(tmp_path, scored,
                                                                tiny_dataset):
  config, reads = scored
  config.finetune.auto_crop_pcts = ()
  config.data.crop_pct = 1.0
  model = train.create_model(config, tiny_dataset.num_classes)
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, {}, model) == (24, 1.0)
  assert [c for _, _, c in reads] == [1.0, 1.0]
  # A record written before crops were chosen holds for data.crop_pct alone.
  choice = json.loads((tmp_path / 'auto_test_res.json').read_text())
  for key in ('crop_pct', 'crop_pcts'):
    del choice[key]
  (tmp_path / 'auto_test_res.json').write_text(json.dumps(choice))
  reads.clear()
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, {}, model) == (24, 1.0)
  assert not reads


def test_the_sweep_crops_default_to_the_config_and_the_fine_tuned_models():
  config = config_lib.get_base_config()
  assert analysis.sweep_crop_pcts(config, None) == (0.875,)
  assert analysis.sweep_crop_pcts(config, 0.875) == (0.875,)
  assert analysis.sweep_crop_pcts(config, 1.0) == (0.875, 1.0)
  config.sweep.crop_pcts = (0.95, 1.0)
  assert analysis.sweep_crop_pcts(config, 0.5) == (0.95, 1.0)


def crop_records():
  """Sweep records of two models at two crop fractions and two K_test."""
  return [{'eval': 'validation', 'model': m, 'test_res': k, 'crop_pct': c,
           'top1': 0.5 + 0.1 * i + 0.01 * k / 8, 'loss': 1.0}
          for i, (m, c) in enumerate([('trained', 0.875), ('finetuned', 0.875),
                                      ('trained', 1.0), ('finetuned', 1.0)])
          for k in (32, 40)]


def test_the_table_and_plot_show_each_crop_fraction():
  records = crop_records()
  table = analysis.format_table(records)
  header = table.splitlines()[0]
  for name in ('trained crop 0.875', 'finetuned crop 0.875', 'trained crop 1',
               'finetuned crop 1'):
    assert name in header, header
  # K_test 32: trained and fine-tuned at crop 0.875, then at crop 1.
  assert table.splitlines()[1].split() == ['32', '54.00%', '64.00%', '74.00%', '84.00%']
  meta = {'train_res': 32, 'eval_split': 'validation',
          'analytic_test_res': {'test_res_exact': 38.0}}
  figure = analysis.plot_sweep(records, meta)
  labels = [line.get_label() for line in figure.axes[0].get_lines()]
  assert sum(label.endswith(('crop 0.875', 'crop 1')) for label in labels) == 4, labels
  sentence = analysis.best_sentence(records, 32)
  assert sentence.startswith('The trained network tests best at K_test=40, crop 1 (75.00%, '
                             '74.00% at K_train).'), sentence
  assert sentence.endswith('85.00% at K_test=40, crop 1.')
  # One crop fraction: the table as before it had crops.
  one = [r for r in records if r['crop_pct'] == 0.875]
  assert analysis.format_table(one).splitlines()[0].split() == ['K_test', 'trained',
                                                               'finetuned']


@pytest.mark.parametrize('field,value,message', [
    ('finetune.auto_crop_pcts', (0.0, 1.0), 'numbers in (0, 1]'),
    ('finetune.auto_crop_pcts', (1.0,), "test_res='auto'"),
    ('sweep.crop_pcts', (0.9, 0.9), 'names a crop fraction twice'),
    ('sweep.crop_pcts', (float('nan'),), 'numbers in (0, 1]'),
])
def test_bad_crop_lists_are_refused(field, value, message):
  config = config_lib.get_base_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(errors.ConfigError, match=message.replace('(', r'\(').replace(']', r'\]')):
    config_lib.validate(config, device_count=8)


@pytest.mark.parametrize('mode,size', [('margin', 0), ('center', 232)])
def test_crop_lists_are_refused_where_crop_pct_plays_no_part(mode, size):
  config = config_lib.get_base_config()
  config.data.test_crop_mode, config.data.test_resize_size = mode, size
  config.sweep.crop_pcts = (0.875, 1.0)
  with pytest.raises(errors.ConfigError, match='ignores crop_pct'):
    config_lib.validate(config, device_count=8)


@pytest.mark.slow  # the finetune stage (cached) and the sweep on the tiny model
def test_a_joint_choice_fine_tunes_and_sweeps_at_its_crop(tmp_path, tiny_config,
                                                          tiny_dataset, monkeypatch):
  """Validation is read by the sweep only; the cached mode's passes, the transform record
  and the sweep use the chosen crop fraction."""
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  reads = []
  config_eval_batches, read = pipeline.config_eval_batches, pipeline._read

  def recording_eval_batches(config, dataset, split, image_size, *args, **kwargs):
    reads.append(('pass', split, image_size, config.data.crop_pct))
    return config_eval_batches(config, dataset, split, image_size, *args, **kwargs)

  def recording_read(dataset, split, *args, **kwargs):
    reads.append(('read', split))
    return read(dataset, split, *args, **kwargs)

  monkeypatch.setattr(pipeline, 'config_eval_batches', recording_eval_batches)
  monkeypatch.setattr(pipeline, '_read', recording_read)
  config = tiny_config
  model = train.create_model(config, tiny_dataset.num_classes)
  checkpoint.save_variables(tmp_path / 'init', train.init_variables(model, 32, seed=0))
  config.init_from = str(tmp_path / 'init')
  config.stages = ('finetune', 'sweep')
  config.finetune.mode = 'cached'
  config.finetune.test_res = 'auto'
  config.finetune.auto_resolutions = (24, 32)
  config.finetune.auto_crop_pcts = (0.5, 1.0)
  config.sweep.resolutions = (32,)
  config.sweep.parametric = False
  config.sweep.latency_batch_size = 0
  workdir = tmp_path / 'run'
  recipe.run(config, str(workdir))

  choice = json.loads((workdir / 'auto_test_res.json').read_text())
  chosen = (choice['test_res'], choice['crop_pct'])
  best = analysis.best_record(choice['records'], 'top1')
  assert chosen == (best['test_res'], best['crop_pct'])
  passes = [r[1:] for r in reads if r[0] == 'pass']
  grid = [(config.finetune.auto_split, k, c) for k in (24, 32) for c in (0.5, 1.0)]
  assert passes[:4] == grid
  # The cached mode's two passes over the training split, at the chosen pair.
  assert passes[4:6] == [(config.data.train_split, *chosen)] * 2
  first_sweep_read = reads.index(('read', config.data.eval_split))
  assert all(r[1] != config.data.eval_split for r in reads[:first_sweep_read])
  assert transform_record.read(workdir, 'finetune')['crop_pct'] == chosen[1]

  records = json.loads((workdir / 'sweep.json').read_text())
  assert {(r['model'], r['crop_pct']) for r in records} == {
      (m, c) for m in ('trained', 'finetuned') for c in (0.875, chosen[1])}
  meta = json.loads((workdir / 'sweep_meta.json').read_text())
  assert meta['finetune_test_res']['crop_pct'] == chosen[1]
  # Another crop fraction gives other pixels, so other scores (the tiny network is random).
  losses = {r['crop_pct']: r['loss'] for r in records if r['model'] == 'trained'}
  assert len(set(losses.values())) == 2
  assert np.isfinite(list(losses.values())).all()
