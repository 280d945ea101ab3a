"""The demo: K_test chosen on held-out training images, an output that says what it shows, and
the seed report (studies/demo.py) that docs/DEMO.md and README's table come from."""

import json
import pathlib
import types

from etils import epath
import numpy as np
import pytest

from fixres_jax import analysis
from fixres_jax import config as config_lib
from fixres_jax.data import sources
from studies import common
from studies import demo

REPO = pathlib.Path(__file__).parent.parent


def test_demo_chooses_k_test_on_images_it_never_trains_on():
  config = common.load_config_file(REPO / 'configs' / 'demo.py')
  config_lib.validate(config, device_count=8)
  assert config.finetune.test_res == analysis.AUTO
  sizes = {'train': types.SimpleNamespace(num_examples=10_000, shard_lengths=[10_000])}
  (name, train_start, train_end), = sources.resolve_split(config.data.train_split, sizes)
  for split in (config.finetune.auto_split, config.sweep.parametric_split):
    (held_name, held_start, held_end), = sources.resolve_split(split, sizes)
    assert held_name == name and held_end > held_start
    assert held_start >= train_end or held_end <= train_start, (split, config.data.train_split)


def records(top1: dict) -> list:
  """sweep.json records from {(model, test_res): top1}."""
  return [{'model': m, 'test_res': k, 'top1': v} for (m, k), v in top1.items()]


def test_the_output_says_where_things_are_and_what_the_table_shows(tmp_path, tiny_config):
  tiny_config.finetune.test_res = analysis.AUTO
  (tmp_path / 'auto_test_res.json').write_text(json.dumps(
      {'test_res': 40, 'split': 'train[90%:]', 'resolutions': [32, 40], 'records': []}))
  text = analysis.describe_outputs(tiny_config, tmp_path, records({
      ('trained', 32): 0.5, ('trained', 40): 0.6, ('finetuned', 32): 0.4,
      ('finetuned', 40): 0.7}))
  assert "'finetuned' is the same network after FixRes fine-tuning at K_test=40 (chosen on " \
         'the held-out train[90%:])' in text
  assert 'tests best at K_test=40 (60.00%, 50.00% at K_train)' in text
  assert "fine-tuned network's best is 70.00% at K_test=40" in text
  for name in ('sweep.csv', 'sweep.png', 'checkpoints'):
    assert str(tmp_path / name) in text


def write_run(root, seed, selected, top1, generated=False, losses=(2.2, 1.9, 1.5), name='',
              model='trained'):
  """A finished demo workdir as demo.run_seed and fixres_jax.main leave it; `losses` are the
  training losses logged at steps 50, 100 and 150 of 300."""
  workdir = root / (f'seed_{seed}_{name}' if name else f'seed_{seed}')
  workdir.mkdir(parents=True)
  logged = [{'stage': 'train', 'step': step, 'loss': loss, 'step_time_s': 0.1}
            for step, loss in zip((50, 100, 150), losses)]
  logged += [{'stage': 'train', 'step': 300, 'loss': 1.0},
             {'stage': 'finetune', 'step': 10, 'loss': 0.5}]
  (workdir / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in logged) + '\n')
  (workdir / 'config.json').write_text(json.dumps({'train': {'image_size': 64},
                                                   'model': {'output_stride': 32}}))
  (workdir / 'auto_test_res.json').write_text(json.dumps(
      {'test_res': selected, 'split': 'train[90%:]', 'resolutions': [64, 96], 'model': model,
       'records': [{'test_res': k, 'calibrated_loss': 0.5, 'temperature': 0.5, 'loss': 0.6,
                    'top1': top1.get(('trained', k), 0.0)} for k in (64, 96)]}))
  (workdir / 'sweep_meta.json').write_text(json.dumps(
      {'analytic_test_res': {'test_res': 88}, 'eval_split': 'validation'}))
  (workdir / 'sweep.json').write_text(json.dumps(records(top1)))
  (workdir / 'demo.log').write_text(
      'I1129 builder.py:110] Generated fixres_synthetic/default/1.0.0 in 41.5 s.\n'
      if generated else 'no generation\n')
  (workdir / demo.TIME_FILE).write_text(json.dumps(
      {'seed': seed, 'wall_seconds': 300.0, 'cpu_seconds': 400.0 + seed,
       'generated_dataset': generated, 'load_average_5min': [1.0, 2.0], 'command': 'x'}))


def test_report_states_each_claim_from_every_seed(tmp_path):
  root = tmp_path / 'runs'
  # Seed 2's fine-tuned network falls behind the trained one at the chosen K_test.
  gains = {0: 0.02, 1: 0.03, 2: -0.01}
  for seed, gain in gains.items():
    write_run(root, seed, 96, {('trained', 64): 0.70, ('trained', 96): 0.76,
                               ('finetuned', 64): 0.68, ('finetuned', 96): 0.76 + gain},
              generated=seed == 0)
  readme = tmp_path / 'README.md'
  readme.write_text(
      f'intro\n{demo.README_START}\nSTALE TABLE\n{demo.README_END}\nend\n')
  result = demo.write_report(root, [0, 1, 2, 3], tmp_path / 'docs', 'cmd',
                             readme=epath.Path(readme))
  assert [r['seed'] for r in result['runs']] == [0, 1, 2]  # seed 3 has not run
  claims = result['summary']['claims']
  assert claims['selected_above_train_res'] is True
  assert claims['selected_vs_train_res']['diffs'] == pytest.approx([0.06] * 3)
  assert claims['finetuned_vs_trained']['diffs'] == pytest.approx(list(gains.values()))
  doc = (tmp_path / 'docs' / 'DEMO.md').read_text()
  assert ('K_train = 64**: on the held-out slice the trained network scores best above it on '
          'every seed ([96, 96, 96]): HOLDS') in doc
  assert '+1.33 pts' in doc and 'per seed +2.0, +3.0, -1.0): DOES NOT HOLD' in doc
  assert '| 96 | 76.00 ± 0.00 | 77.33 ± 2.08 |' in doc  # the sweep, mean ± std
  assert 'of which generating the dataset 42 s wall' in doc
  text = readme.read_text()
  assert text.startswith('intro\n') and text.endswith('end\n') and 'STALE' not in text
  assert '(2 of 3 seeds ahead)' in text and 'vary with the processor' in text
  assert json.loads((tmp_path / 'docs' / 'demo.json').read_text())['command'] == 'cmd'


def test_report_says_whether_the_demo_is_a_measuring_instrument(tmp_path):
  root = tmp_path / 'runs'
  # Seed 1 is still on the plateau at 10% of its steps (step 50 of 300 logs 2.2 > 0.9 ln 10)
  # and chooses another K_test; seed 2's fine-tuning adds only half a point.
  plans = {0: (96, 0.02, (1.9, 1.7)), 1: (112, 0.03, (2.2, 1.9)), 2: (96, 0.005, (2.0, 1.8))}
  for seed, (selected, gain, losses) in plans.items():
    write_run(root, seed, selected, {('trained', 64): 0.70, ('trained', selected): 0.76,
                                     ('finetuned', selected): 0.76 + gain}, losses=losses)
  # Seeds 0 and 2 again on two devices; seed 1's perturbed run has not finished.
  write_run(root, 0, 96, {('trained', 64): 0.70, ('trained', 96): 0.765,
                          ('finetuned', 96): 0.77}, name=demo.PERTURBED)
  write_run(root, 2, 96, {('trained', 64): 0.70, ('trained', 96): 0.745,
                          ('finetuned', 96): 0.77}, name=demo.PERTURBED)
  demo.write_report(root, [0, 1, 2], tmp_path / 'docs', 'cmd', perturbed_seeds=[0, 1, 2])
  doc = (tmp_path / 'docs' / 'DEMO.md').read_text()
  assert ('per seed: 1.900, 2.200, 2.000 against 0.9 ln 10 = 2.072: above on seeds [1]'
          in doc)
  assert '2 of 3 seeds chose 96 ([96, 112, 96]' in doc
  assert 'adds +2.00, +3.00, +0.50 points per seed' in doc and 'does not hold' in doc
  assert 'seeds 0, 2 again on two XLA:CPU devices' in doc
  assert 'K_test chosen 96, 96 (was 96, 96)' in doc
  assert ('moved by +0.50, -1.50 (trained) and -1.00, +0.50 (fine-tuned) points on '
          '`validation` (target: at most 1): holds for the fine-tuned network, not for the '
          'trained one.') in doc
  assert demo.move_verdict({'trained_at_selected': [0.5, -1.0],
                            'finetuned_at_selected': [0.2]}) == 'holds'
  assert demo.move_verdict({'trained_at_selected': [0.5, -1.2],
                            'finetuned_at_selected': [1.5, 0.0]}) == 'does not hold'


def test_a_variant_reuses_the_training_it_leaves_as_it_was(tmp_path, monkeypatch):
  root = epath.Path(tmp_path)
  write_run(root, 0, 96, {('trained', 96): 0.76, ('finetuned', 96): 0.77})
  (root / 'seed_0' / 'checkpoints' / 'train' / '300').mkdir(parents=True)
  calls = []
  monkeypatch.setattr(demo, 'run_seed', lambda root, seed, data_dir, overrides=(), env=None,
                      name='': calls.append((seed, name, list(overrides))))
  demo.run_variant(root, 0, 'finetune_lr_0.08', 'data', ['--config.x=1'])
  demo.run_variant(root, 0, 'output_stride_32', 'data')
  assert (root / 'seed_0_finetune_lr_0.08' / 'checkpoints' / 'train' / '300').exists()
  assert not (root / 'seed_0_output_stride_32').exists()  # trains from scratch
  assert calls == [(0, 'finetune_lr_0.08', ['--config.x=1', '--config.finetune.base_lr=0.08']),
                   (0, 'output_stride_32', ['--config.model.output_stride=32'])]


def test_report_sets_each_variant_beside_the_demo(tmp_path):
  root = tmp_path / 'runs'
  for seed in (0, 1):
    write_run(root, seed, 96, {('trained', 64): 0.70, ('trained', 96): 0.76,
                               ('finetuned', 96): 0.78})
    write_run(root, seed, 96, {('trained', 96): 0.76, ('finetuned', 96): 0.765 + seed / 100},
              name='finetune_lr_0.08', losses=(2.3 - seed / 10, 1.9, 1.5))
  result = demo.write_report(root, [0, 1], tmp_path / 'docs', 'cmd',
                             variants=['finetune_lr_0.08', 'uncalibrated_loss'])
  assert list(result['variants']) == ['finetune_lr_0.08']  # the other has not run
  doc = (tmp_path / 'docs' / 'DEMO.md').read_text()
  assert '| the demo | none | 96, 96 | 76.00 ± 0.00 | 78.00 ± 0.00 | +2.00, +2.00 | 2.200 |' \
         in doc
  assert ('| finetune_lr_0.08 | finetune.base_lr=0.08 | 96, 96 | 76.00 ± 0.00 | 77.00 ± 0.71 '
          '| +0.50, +1.50 | 2.300 |') in doc


def test_a_report_of_adapted_choices_takes_claim_one_from_the_trained_choice(tmp_path):
  """With finetune.auto_model='adapted' the runs' held-out records score fine-tuned networks:
  claim 1 (the trained network is best above K_train) reads the trained_choice variant's."""
  root = tmp_path / 'runs'
  for seed in (0, 1):
    write_run(root, seed, 96, {('trained', 64): 0.70, ('trained', 80): 0.78,
                               ('trained', 96): 0.76, ('finetuned', 96): 0.80}, model='adapted')
    write_run(root, seed, 80 - 16 * seed, {('trained', 64): 0.70, ('trained', 80): 0.78,
                                           ('finetuned', 80 - 16 * seed): 0.79},
              name=demo.TRAINED_CHOICE)
  result = demo.write_report(root, [0, 1], tmp_path / 'docs', 'cmd',
                             variants=[demo.TRAINED_CHOICE])
  doc = (tmp_path / 'docs' / 'DEMO.md').read_text()
  assert "auto_model='adapted'" in doc and 'keeps the K_test whose fine-tuned network' in doc
  assert ('The network fine-tuned at each K_test (its adapter) on the held-out slice, per '
          'candidate K_test') in doc
  assert ('The trained network on the held-out slice (variant trained_choice), per candidate '
          'K_test') in doc
  # Seed 1's trained network scores best at 64, K_train: claim 1 fails on the held-out part.
  assert result['summary']['claims']['selected_above_train_res'] is False
  assert ('on the held-out slice the trained network scores best above it on every seed '
          "([80, 64], as finetune.auto_model='trained' chooses (variant trained_choice)): "
          'DOES NOT HOLD') in doc
  assert result['summary']['claims']['finetuned_vs_trained']['diffs'] == pytest.approx(
      [0.04, 0.04])
  # Without the variant the report says what claim 1's held-out part needs.
  demo.write_report(root, [0, 1], tmp_path / 'alone', 'cmd')
  assert "(its own held-out choice needs --variants=trained_choice)" in (
      tmp_path / 'alone' / 'DEMO.md').read_text()


def test_a_report_without_plateau_records_keeps_the_previous_plateau_section(tmp_path):
  previous = tmp_path / 'DEMO.md'
  previous.write_text('# The demo over seeds\n\nMachine: CPU A, 2 cores; Python 3. The digits '
                      'vary.\n\n## Time\n\nold\n\n' + demo.PLATEAU_HEADING +
                      '\n\nWhat the curves show.\n\n| variant |\n')
  carried = demo.carried_plateau_section(epath.Path(previous))
  assert carried[0] == demo.PLATEAU_HEADING
  assert 'recorded on: CPU A, 2 cores; Python 3' in carried[2]
  assert carried[2].endswith('What the curves show.\n\n| variant |')
  # A second report carries it again as it is, naming the same (first) machine once.
  previous.write_text('Machine: CPU B, 2 cores. The digits vary.\n\n' + '\n'.join(carried))
  assert demo.carried_plateau_section(epath.Path(previous)) == carried
  assert demo.carried_plateau_section(epath.Path(tmp_path / 'missing.md')) == []


def test_report_sets_the_same_seeds_on_another_machine_beside_its_own(tmp_path):
  root = tmp_path / 'runs'
  for seed, trained in ((0, 0.76), (1, 0.78)):
    write_run(root, seed, 96, {('trained', 64): 0.70, ('trained', 96): trained,
                               ('finetuned', 96): trained + 0.01})
  demo.write_report(root, [0, 1], tmp_path / 'first', 'cmd one')
  earlier = json.loads((tmp_path / 'first' / 'demo.json').read_text())
  earlier['machine'] = 'CPU Z, 2 cores'
  earlier['runs'][1]['trained_at_selected'] = 0.80
  earlier['runs'][1]['selected_test_res'] = 112
  (tmp_path / 'earlier.json').write_text(json.dumps(earlier))

  demo.write_report(root, [0, 1], tmp_path / 'second', 'cmd two',
                    other_machines=[str(tmp_path / 'earlier.json')])
  doc = (tmp_path / 'second' / 'DEMO.md').read_text()
  assert '## The same seeds on another processor' in doc
  assert 'Measured by `cmd one` on CPU Z, 2 cores' in doc
  assert '| 1 | 112 / 96 | 70.00 / 70.00 (+0.00) | 80.00 / 78.00 (-2.00) |' in doc
  assert ('The same K_test on 1 of 2 seeds; the largest move of top-1 at the chosen K_test: '
          '2.00') in doc
  # The next report carries the other machine on, and never lists its own machine as another.
  demo.write_report(root, [0, 1], tmp_path / 'third', 'cmd three',
                    other_machines=[str(tmp_path / 'second' / 'demo.json')])
  carried = json.loads((tmp_path / 'third' / 'demo.json').read_text())['other_machines']
  assert [entry['machine'] for entry in carried] == ['CPU Z, 2 cores']


@pytest.mark.parametrize('gains,errors,says', [
    # Gains far apart, each measured to a third of a point: the networks differ.
    ([0.5, 1.45, 1.15, 0.75, 4.2], [0.32, 0.48, 0.33, 0.37, 0.56],
     "images make 8 % of their variance and most of it is the seeds' networks themselves"),
    # Gains as far apart as the images alone would put them.
    ([1.0, 1.5, 2.0], [0.5, 0.5, 0.5],
     'images make 100 % of their variance and most of it is which images the validation split '
     'holds. A gain of +1 on every seed would need a true gain of about +2.0'),
])
def test_the_gains_spread_is_split_between_the_images_and_the_networks(gains, errors, says):
  runs = [{'paired': {'standard_error': e, 'num_images': 2000, 'only_finetuned': 30,
                      'only_trained': 20}} for e in errors]
  line = demo.paired_precision_line(runs, gains)
  assert says in line, line
  assert f'standard error of {", ".join("%.2f" % e for e in errors)} points' in line


def test_the_perturbed_seeds_moves_are_measured_image_by_image_on_more_images(
    tmp_path, monkeypatch):
  root = tmp_path / 'runs'
  for seed in (0, 1):
    write_run(root, seed, 96, {('trained', 64): 0.70, ('trained', 96): 0.76,
                               ('finetuned', 96): 0.78})
  # On validation the trained network moved 1.5 points; on PRECISE_DATASET 0.4.
  for seed in (0, 1):
    write_run(root, seed, 96, {('trained', 64): 0.70, ('trained', 96): 0.775,
                               ('finetuned', 96): 0.785}, name=demo.PERTURBED)
  first_ten = np.arange(1000) < 10
  hits = {  # per (workdir, stage) on 1,000 images; seed 1 did not move
      ('seed_0_perturbed', 'train'): np.arange(1000) < 604,
      ('seed_0', 'train'): np.arange(1000) >= 400,
      ('seed_1_perturbed', 'train'): np.arange(1000) >= 300,
      ('seed_1', 'train'): np.arange(1000) >= 300,
      **{(name, 'finetune'): ~first_ten
         for name in ('seed_0', 'seed_0_perturbed', 'seed_1', 'seed_1_perturbed')}}
  asked = []

  def fake_hits(workdir, seed, test_res, data_dir, dataset=''):
    asked.append((workdir.name, seed, test_res, data_dir, dataset))
    if dataset != demo.PRECISE_DATASET:
      return {'train': first_ten, 'finetune': ~first_ten}
    return {stage: hits[(workdir.name, stage)] for stage in ('train', 'finetune')}

  monkeypatch.setattr(demo, 'hits_per_image', fake_hits)
  result = demo.write_report(root, [0, 1], tmp_path / 'docs', 'cmd', perturbed_seeds=[0, 1],
                             data_dir='/data')
  assert ('seed_0_perturbed', 0, 96, '/data', demo.PRECISE_DATASET) in asked
  moved = result['perturbed'][0]['precise']
  assert moved['trained_at_selected']['difference'] == pytest.approx(0.4)
  # 400 of the 1,000 images right by the perturbed network only, 396 by the base one only.
  assert moved['trained_at_selected']['only_first'] == 400
  assert moved['trained_at_selected']['only_second'] == 396
  assert moved['trained_at_selected']['standard_error'] == pytest.approx(
      100 * np.std(np.r_[np.ones(400), -np.ones(396), np.zeros(204)], ddof=1) / np.sqrt(1000))
  assert moved['trained_at_selected']['base_top1'] == pytest.approx(60.0)
  assert moved['finetuned_at_selected']['difference'] == 0
  doc = (tmp_path / 'docs' / 'DEMO.md').read_text()
  assert ('moved by +1.50, +1.50 (trained) and +0.50, +0.50 (fine-tuned) points on '
          '`validation`') in doc
  assert (f'Image by image on 1000 validation images of the same kind (`{demo.PRECISE_DATASET}`'
          in doc)
  assert ('+0.40 ± %.2f, +0.00 ± 0.00 (trained) and +0.00 ± 0.00, +0.00 ± 0.00 (fine-tuned) '
          'points' % moved['trained_at_selected']['standard_error']) in doc
  # The moves' root mean square against two seeds' networks (top-1 60 % and 70 %) there.
  assert ('target: at most 1): holds. Their root mean square is 0.28 (trained) and 0.00 '
          '(fine-tuned); two of these seeds differ there by 10.00 and 0.00') in doc


@pytest.mark.slow
def test_hits_per_image_are_the_sweeps_top1_image_by_image(tmp_path, synthetic_data_dir):
  import jax  # pylint: disable=g-import-not-at-top
  from fixres_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from fixres_jax import evaluate  # pylint: disable=g-import-not-at-top
  from fixres_jax import parallel  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = common.load_config_file(REPO / demo.CONFIG)
  config.data.data_dir, config.data.name = synthetic_data_dir, 'fixres_synthetic/tiny'
  dataset = pipeline.load_dataset(config)
  model = train.create_model(config, dataset.num_classes)
  variables = {}
  for stage, seed in (('train', 0), ('finetune', 1)):  # two different (untrained) networks
    init = model.init(jax.random.PRNGKey(seed), np.zeros((1, 32, 32, 3)), train=False)
    init['params']['fc']['kernel'] = jax.random.normal(jax.random.PRNGKey(seed),
                                                       init['params']['fc']['kernel'].shape)
    variables[stage] = checkpoint.to_host(init)
    checkpoint.save_variables(tmp_path / 'checkpoints' / stage, variables[stage])
  hits = demo.hits_per_image(epath.Path(tmp_path), 0, 32, synthetic_data_dir,
                             'fixres_synthetic/tiny')
  assert hits['train'].shape == hits['finetune'].shape == (
      dataset.num_examples(config.data.eval_split),)
  assert (hits['train'] != hits['finetune']).any()
  for stage, found in hits.items():
    batches = pipeline.config_eval_batches(config, dataset, config.data.eval_split, 32)
    expected = evaluate.evaluate_model(evaluate.jit_eval_step(model), variables[stage],
                                       batches, parallel.create_mesh())
    assert found.mean() == pytest.approx(expected['top1'], abs=1e-6)
