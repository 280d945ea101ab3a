"""The sweep stage (records, statistics, figures, one trace per resolution) and K_test='auto'."""

import collections
import csv
import dataclasses
import json
import pathlib

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_flags

from fixres_jax import analysis
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import evaluate
from fixres_jax import parallel
from fixres_jax import parametric
from fixres_jax import recipe
from fixres_jax import train
from test_sources import folder_config, make_folder

CONFIGS = pathlib.Path(__file__).parent.parent / 'configs'


def create_models(config, dataset):
  """A randomly initialised 'trained' model and a different 'finetuned' one (no training)."""
  model = train.create_model(config, dataset.num_classes)
  trained = train.init_variables(model, config.train.image_size, seed=0)
  finetuned = train.init_variables(model, config.train.image_size, seed=1)
  return model, {'trained': trained, 'finetuned': finetuned}


@pytest.mark.slow  # the whole sweep: every resolution and model, the fits, the figures
def test_sweep_writes_records_statistics_and_figures(tmp_path, tiny_config, tiny_dataset,
                                                     monkeypatch):
  traced = []
  step = evaluate.eval_step

  def counting_step(model, variables, batch, adaptation=None):
    traced.append(batch['image'].shape[1])  # runs only while jax traces
    return step(model, variables, batch, adaptation)

  monkeypatch.setattr(evaluate, 'eval_step', counting_step)
  evaluate.jit_eval_step.cache_clear()  # traces of earlier tests would not count
  config = tiny_config
  # The central crop at K_train as the target: the map at K_train is then the identity.
  config.sweep.parametric_target = parametric.TEST_TRANSFORM
  model, variables = create_models(config, tiny_dataset)
  mesh = parallel.create_mesh()
  result = analysis.sweep(config, tiny_dataset, mesh, variables, model,
                          finetune_test_res=(40, 'config.finetune.test_res'))
  analysis.write_sweep(tmp_path, result)

  # Two programs per resolution: the parametric fit's (the trained model alone) and the
  # scored pass's (both models in one program), each traced once.
  resolutions = set(config.sweep.resolutions) | {config.train.image_size}
  assert collections.Counter(traced) == {r: 1 + len(variables) for r in resolutions}

  records = json.loads((tmp_path / 'sweep.json').read_text())
  assert records == result.records
  names = ('trained', 'finetuned', 'parametric')
  assert {(r['model'], r['test_res']) for r in records} == {
      (m, r) for m in names for r in config.sweep.resolutions}
  for r in records:
    assert 0 <= r['top1'] <= r['top5'] <= 1 and 0 <= r['zero_fraction'] <= 1
    assert r['crop_pct'] == config.data.crop_pct  # one crop fraction by default
    assert r['num_images'] == tiny_dataset.num_examples(config.data.eval_split)
  by_key = {(r['model'], r['test_res']): r for r in records}
  with (tmp_path / 'sweep.csv').open() as f:
    rows = list(csv.DictReader(f))
  assert [(r['model'], int(r['test_res'])) for r in rows] == list(by_key)
  assert [float(r['top1']) for r in rows] == [r['top1'] for r in records]

  # The trained model's metrics are those of the model evaluated alone; at K_train the
  # adaptation is the identity.
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  k_train = config.train.image_size
  batches = pipeline.config_eval_batches(config, tiny_dataset, config.data.eval_split, k_train)
  expected = evaluate.evaluate_model(evaluate.jit_eval_step(model), variables['trained'],
                                     batches, mesh)
  for key in ('top1', 'top5', 'zero_fraction', 'num_images'):
    assert by_key[('trained', k_train)][key] == pytest.approx(expected[key], abs=1e-6)
  assert result.meta['parametric']['maps'][k_train] == [1.0, 0.0]
  assert ({**by_key[('parametric', k_train)], 'model': 'trained'}
          == by_key[('trained', k_train)])

  stats = json.loads((tmp_path / 'stats.json').read_text())
  assert stats['edges'] == pytest.approx(evaluate.HISTOGRAM_EDGES.tolist())
  num_features = np.shape(variables['trained']['params']['fc']['kernel'])[0]
  for s in stats['records']:
    r = by_key[(s['model'], s['test_res'])]
    assert s['num_values'] == r['num_images'] * num_features
    assert s['zero_fraction'] == pytest.approx(r['zero_fraction'], abs=1e-6)
    assert sum(s['counts']) == pytest.approx(s['num_values'] * (1 - s['zero_fraction']))
    quantiles = list(s['quantiles'].values())
    assert quantiles == sorted(quantiles) and s['mean'] > 0 and s['std'] > 0

  meta = json.loads((tmp_path / 'sweep_meta.json').read_text())
  assert meta['seconds'] > 0 and set(meta['seconds_per_resolution']) == {
      str(r) for r in config.sweep.resolutions}
  assert meta['analytic_test_res']['test_res_exact'] > k_train  # train crops zoom in
  assert meta['finetune_test_res'] == {'test_res': 40, 'chosen': 'config.finetune.test_res',
                                       'crop_pct': config.data.crop_pct}
  assert meta['crop_pcts'] == [config.data.crop_pct]
  for name in ('sweep.png', 'features.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow  # a sweep
def test_the_parametric_target_is_fitted_on_the_train_transform(tiny_config, tiny_dataset):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.sweep.resolutions, config.sweep.latency_batch_size = (config.train.image_size,), 0
  assert config.sweep.parametric_target == parametric.TRAIN_TRANSFORM  # the default
  model, variables = create_models(config, tiny_dataset)
  mesh = parallel.create_mesh()
  meta = analysis.sweep(config, tiny_dataset, mesh, {'trained': variables['trained']},
                        model).meta['parametric']
  views = pipeline.train_view_batches(config, tiny_dataset, config.sweep.parametric_split)
  expected = evaluate.fit_pooled_features(evaluate.jit_eval_step(model), parallel.replicate(
      variables['trained'], mesh), views, mesh)
  assert meta['target'] == 'train_transform'
  assert meta['target_fit'] == pytest.approx(dataclasses.asdict(expected))
  # The random crops zoom in: another law than the central crop's at the same K_train.
  k_train = config.train.image_size
  assert meta['target_fit']['scale'] != pytest.approx(meta['fits'][k_train]['scale'], rel=1e-3)
  assert meta['maps'][k_train] != pytest.approx([1.0, 0.0], abs=1e-3)


@pytest.mark.slow  # three sweeps' worth of passes
def test_the_sweep_fits_on_the_passes_of_the_auto_choice(tmp_path, tiny_config, tiny_dataset,
                                                         monkeypatch):
  config = tiny_config
  config.sweep.resolutions, config.sweep.latency_batch_size = (24, 40), 0
  config.finetune.test_res = 'auto'
  config.sweep.parametric_split = config.finetune.auto_split
  model, variables = create_models(config, tiny_dataset)
  mesh = parallel.create_mesh()
  trained = {'trained': variables['trained']}
  passes = {}
  analysis.select_test_res(config, tmp_path, tiny_dataset, mesh, variables['trained'], model,
                           passes)
  assert sorted(passes) == [(config.finetune.auto_split, k, config.data.crop_pct)
                            for k in (24, 40)]
  expected = analysis.sweep(config, tiny_dataset, mesh, trained, model).meta['parametric']
  fit, fitted = evaluate.fit_pooled_features, []
  monkeypatch.setattr(evaluate, 'fit_pooled_features',
                      lambda *args: fitted.append(args) or fit(*args))
  reused = analysis.sweep(config, tiny_dataset, mesh, trained, model,
                          passes=passes).meta['parametric']
  assert len(fitted) == 1  # the target's, on the train transform; none at a swept K_test
  for k_test in (24, 40):
    assert reused['fits'][k_test] == pytest.approx(expected['fits'][k_test])
    assert reused['maps'][k_test] == pytest.approx(expected['maps'][k_test])


@pytest.mark.slow  # two sweeps
def test_sweep_skips_a_corrupt_validation_image_under_skip_corrupt(tmp_path, tiny_config):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / 'data')
  image = root / 'validation' / 'dog' / '0_rgb.jpg'
  image.write_bytes(image.read_bytes()[:image.stat().st_size // 3])
  config = folder_config(tiny_config, root)
  config.sweep.resolutions = (32,)
  dataset = pipeline.load_dataset(config)
  model, variables = create_models(config, dataset)
  mesh = parallel.create_mesh()
  with pytest.raises(ValueError, match=r'dog/0_rgb\.jpg.*skip_corrupt=True'):
    analysis.sweep(config, dataset, mesh, variables, model)
  config.data.skip_corrupt = True
  result = analysis.sweep(config, dataset, mesh, variables, model)
  assert [r['num_images'] for r in result.records] == [5, 5, 5]  # of 6, the bad one skipped


def sweep_plot_inputs():
  """Records where the parametric curve equals the trained one at K_train, and their meta."""
  top1 = {'trained': (0.50, 0.60, 0.55), 'finetuned': (0.52, 0.66, 0.61),
          'parametric': (0.50, 0.63, 0.58)}
  records = [{'model': name, 'test_res': res, 'top1': value}
             for name, values in top1.items() for res, value in zip((32, 40, 48), values)]
  meta = {'train_res': 32, 'eval_split': 'validation',
          'analytic_test_res': {'test_res_exact': 42.5},
          'finetune_test_res': {'test_res': 40, 'chosen': 'config.finetune.test_res'}}
  return records, meta


def test_sweep_plot_marks_the_fine_tuning_test_res(tmp_path):
  records, meta = sweep_plot_inputs()
  fig = analysis.plot_sweep(records, meta)
  ax = fig.axes[0]
  lines = {line.get_label(): line for line in ax.get_lines()}
  label = 'fine-tuned at K_test = 40\n(config.finetune.test_res)'
  assert label in [text.get_text() for text in ax.get_legend().get_texts()]
  assert list(lines[label].get_xdata()) == [40, 40]  # a vertical line at the chosen K_test
  assert lines[label].get_color() == lines['finetuned'].get_color()
  analysis.save_figure(fig, tmp_path / 'sweep.png')
  assert (tmp_path / 'sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  # No fine-tuned model (or no K_test recorded): nothing to mark.
  del meta['finetune_test_res']
  for kept in (records, [r for r in records if r['model'] != 'finetuned']):
    labels = [line.get_label() for line in analysis.plot_sweep(kept, meta).axes[0].get_lines()]
    assert not any(l.startswith('fine-tuned at') for l in labels), labels


def test_sweep_plot_curves_do_not_hide_one_another():
  records, meta = sweep_plot_inputs()
  lines = {line.get_label(): line
           for line in analysis.plot_sweep(records, meta).axes[0].get_lines()}
  curves = [lines[name] for name in ('trained', 'finetuned', 'parametric')]
  assert len({(c.get_marker(), c.get_linestyle()) for c in curves}) == 3
  # At K_train the parametric curve is the trained one: it is drawn over it, dashed and with
  # smaller markers, and the trained markers are hollow, so both stay visible.
  trained, parametric = lines['trained'], lines['parametric']
  assert parametric.get_linestyle() == '--' and trained.get_linestyle() == '-'
  assert parametric.get_zorder() > trained.get_zorder()
  assert parametric.get_markersize() < trained.get_markersize()
  assert trained.get_fillstyle() == 'none'


def test_feature_sums_match_a_numpy_histogram():
  features = np.abs(np.random.default_rng(0).standard_cauchy((16, 24))).astype(np.float32)
  features[features < 0.3] = 0.0
  mask = np.array([1.0] * 12 + [0.0] * 4, np.float32)
  sums = jax.jit(evaluate.feature_sums)(features, mask)
  kept = features[:12]
  np.testing.assert_array_equal(sums['histogram'],
                                parametric.histogram(kept, evaluate.HISTOGRAM_EDGES))
  assert float(sums['feature_count']) == kept.size
  assert float(sums['feature_sum']) == pytest.approx(kept.sum(), rel=1e-5)
  assert float(sums['feature_sq_sum']) == pytest.approx((kept**2).sum(), rel=1e-5)


@pytest.mark.slow
def test_auto_test_res_is_chosen_on_the_training_split(tmp_path, tiny_config, tiny_dataset,
                                                       monkeypatch):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  evaluated, finetuned_at = [], []
  eval_batches, stage_batches = pipeline.config_eval_batches, pipeline.stage_batches

  def recording_eval_batches(config, dataset, split, image_size, *args, **kwargs):
    evaluated.append((split, image_size))
    return eval_batches(config, dataset, split, image_size, *args, **kwargs)

  def recording_stage_batches(config, dataset, stage, start_step):
    finetuned_at.append(config.finetune.test_res)
    return stage_batches(config, dataset, stage, start_step)

  monkeypatch.setattr(pipeline, 'config_eval_batches', recording_eval_batches)
  monkeypatch.setattr(pipeline, 'stage_batches', recording_stage_batches)
  config = tiny_config
  model, variables = create_models(config, tiny_dataset)
  checkpoint.save_variables(tmp_path / 'init', variables['trained'])
  config.init_from = str(tmp_path / 'init')
  config.stages = ('finetune',)
  config.finetune.test_res = 'auto'
  config.finetune.auto_resolutions = (24, 40)
  workdir = tmp_path / 'run'
  recipe.run(config, str(workdir))

  choice = json.loads((workdir / 'auto_test_res.json').read_text())
  assert evaluated == [(config.finetune.auto_split, r) for r in (24, 40)]
  assert choice['test_res'] in (24, 40)
  assert choice['test_res'] == max(choice['records'],
                                   key=lambda r: (r['top1'], -r['loss']))['test_res']
  assert finetuned_at == [choice['test_res']]
  assert config.finetune.test_res == 'auto'  # the caller's config is left as it was

  # A re-run finds the recorded choice and evaluates nothing.
  evaluated.clear()
  assert analysis.select_test_res(config, workdir, tiny_dataset, None, None, model) == (
      choice['test_res'], config.data.crop_pct)
  assert not evaluated


@pytest.mark.parametrize('metric,expected', [('top1', 112), ('loss', 96),
                                             ('calibrated_loss', 128)])
def test_best_test_res_follows_the_chosen_metric(metric, expected):
  records = [{'test_res': 80, 'top1': 0.85, 'loss': 0.57, 'calibrated_loss': 0.40},
             {'test_res': 96, 'top1': 0.86, 'loss': 0.46, 'calibrated_loss': 0.38},
             {'test_res': 112, 'top1': 0.88, 'loss': 0.59, 'calibrated_loss': 0.36},
             # top-1 tie: the lower loss
             {'test_res': 128, 'top1': 0.88, 'loss': 0.60, 'calibrated_loss': 0.35}]
  assert analysis.best_record(records, metric)['test_res'] == expected


def test_a_recorded_choice_is_not_reused_for_another_metric(tmp_path, tiny_config,
                                                            tiny_dataset, monkeypatch):
  config = tiny_config
  config.finetune.auto_resolutions = (24, 40)
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  (tmp_path / 'auto_test_res.json').write_text(json.dumps(
      {'test_res': 24, 'split': config.finetune.auto_split, 'metric': 'top1',
       'resolutions': [24, 40], 'records': []}))
  evaluated = []
  monkeypatch.setattr(evaluate, 'evaluate_model', lambda step_fn, variables, batches, mesh, **kwargs: (
      evaluated.append(1) or {'top1': 0.5, 'loss': 1.0 if len(evaluated) == 1 else 0.5}))
  monkeypatch.setattr(pipeline, 'config_eval_batches', lambda *args: None)
  monkeypatch.setattr(parallel, 'replicate', lambda variables, mesh: variables)
  config.finetune.auto_metric = 'loss'
  model, _ = create_models(config, tiny_dataset)
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, {}, model) == (
      40, config.data.crop_pct)
  assert len(evaluated) == 2
  assert json.loads((tmp_path / 'auto_test_res.json').read_text())['metric'] == 'loss'


def test_the_adapted_choice_scores_each_candidate_with_its_own_adapter(tmp_path, tiny_config,
                                                                       tiny_dataset,
                                                                       monkeypatch):
  """auto_model='adapted': each K_test is scored with the variables adapted there, so the
  choice follows them where the trained network would choose another K_test."""
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.finetune.test_res = 'auto'
  config.finetune.auto_resolutions = (24, 40)
  config.finetune.auto_metric = 'loss'
  # A choice of the trained network at 24 is on file: not the adapted model's to reuse.
  (tmp_path / 'auto_test_res.json').write_text(json.dumps(
      {'test_res': 24, 'split': config.finetune.auto_split, 'metric': 'loss',
       'resolutions': [24, 40], 'records': []}))
  trained = {'name': 'trained'}
  # The trained network is best at 24, the adapted one at 40.
  loss_of = {('trained', 24): 0.3, ('trained', 40): 0.5, ('adapted_24', 24): 0.6,
             ('adapted_40', 40): 0.4}
  adapted, histograms = [], []

  def adapt(test_res, crop_pct):
    adapted.append((test_res, crop_pct))
    return {'name': f'adapted_{test_res}'}

  def scores(step_fn, variables, batches, mesh, histogram=False):
    histograms.append(histogram)
    return {'top1': 0.5, 'loss': loss_of[variables['name'], batches]}

  monkeypatch.setattr(evaluate, 'evaluate_model', scores)
  monkeypatch.setattr(pipeline, 'config_eval_batches',
                      lambda config, dataset, split, test_res: test_res)
  monkeypatch.setattr(parallel, 'replicate', lambda variables, mesh: variables)
  model, _ = create_models(config, tiny_dataset)
  passes = {}
  config.finetune.auto_model = 'adapted'
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, trained, model, passes,
                                  adapt) == (40, config.data.crop_pct)
  assert adapted == [(24, config.data.crop_pct), (40, config.data.crop_pct)]
  # The parametric fits take the trained network's features: the adapted passes give none.
  assert histograms == [False, False] and passes == {}
  choice = json.loads((tmp_path / 'auto_test_res.json').read_text())
  assert choice['model'] == 'adapted'
  assert [r['loss'] for r in choice['records']] == [0.6, 0.4]

  # The same settings reuse it; the trained network's choice is made anew, and differs.
  adapted.clear()
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, trained, model, passes,
                                  adapt)[0] == 40 and not adapted
  config.finetune.auto_model = 'trained'
  assert analysis.select_test_res(config, tmp_path, tiny_dataset, None, trained,
                                  model)[0] == 24 and not adapted


def test_the_adapted_choice_needs_the_cached_modes_settings():
  config = config_lib.get_base_config()
  config.finetune.auto_model = 'adapted'
  config.finetune.augment = 'v2'
  config_lib.validate(config, device_count=8)  # a fixed K_test: nothing is adapted
  config.finetune.test_res = 'auto'
  with pytest.raises(ValueError, match=r"augment='v2' is random, so auto_model='adapted' "
                                       r"cannot store its features.*auto_model='trained'"):
    config_lib.validate(config, device_count=8)
  config.finetune.augment = 'flip'
  config_lib.validate(config, device_count=8)  # with finetune.mode='sgd' too


@pytest.mark.parametrize('value,expected', [('auto', 'auto'), ('96', 96)])
def test_test_res_takes_auto_or_an_integer_on_the_command_line(value, expected):
  argv = ['main', f'--config={CONFIGS / "demo.py"}', f'--config.finetune.test_res={value}']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)  # as main.py declares it
  flag_values(argv)
  assert flag_values.config.finetune.test_res == expected
  config_lib.validate(flag_values.config, device_count=8)


@pytest.mark.parametrize('field,value,message', [
    ('test_res', 'best', "'auto'"),
    ('auto_split', 'validation[:10%]', 'slice of the training split'),
])
def test_validate_rejects_bad_auto_settings(field, value, message):
  config = config_lib.get_base_config()
  config.finetune[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config, device_count=8)


def test_validate_rejects_a_parametric_fit_on_validation():
  config = config_lib.get_base_config()
  config.sweep.parametric_split = 'validation'
  with pytest.raises(ValueError, match='sweep.parametric_split'):
    config_lib.validate(config, device_count=8)


@pytest.mark.parametrize('name', sorted(p.stem for p in CONFIGS.glob('*.py')))
def test_recipes_are_valid(name):
  argv = ['main', f'--config={CONFIGS / name}.py']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  config_lib.validate(config, device_count=8)
  # validate reads the fields; building the network (shapes only, nothing allocated, so
  # ResNet-50 and ResNeXt-101 are cheap) also catches a misspelt model or block name.
  model = train.create_model(config, num_classes=10)
  size = config.train.image_size
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  assert variables['params']
