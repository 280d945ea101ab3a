"""Latency at each K_test: the timing, the accuracy-latency frontier, the budget for 'auto'."""

import json

import jax
import jax.numpy as jnp
import pytest

from fixres_jax import analysis
from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import latency
from fixres_jax import models
from fixres_jax import parallel


def test_time_forward_reports_a_warm_call_per_image():
  model = models.create_model('resnet', 3, stage_sizes=(1,), num_filters=4)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  # As the sweep holds them: replicated on the run's mesh (8 devices here).
  variables = parallel.replicate(variables, parallel.create_mesh())
  timing = latency.time_forward(model, variables, 24, batch_size=4, repeats=3)
  assert (timing['test_res'], timing['batch_size'], timing['repeats']) == (24, 4, 3)
  assert timing['ms_per_image'] > 0
  assert timing['ms_per_batch'] == pytest.approx(4 * timing['ms_per_image'])
  assert timing['images_per_second'] == pytest.approx(1000 / timing['ms_per_image'])
  described = latency.describe_stack()
  assert described['device'].startswith('cpu: ') and 'cores' in described['device']
  assert described['stack'].startswith(f'jax {jax.__version__}')


def test_the_frontier_keeps_the_k_test_nothing_beats_on_both_counts():
  records = [{'model': 'trained', 'test_res': k, 'top1': t}
             for k, t in [(64, 0.80), (80, 0.85), (96, 0.84), (112, 0.90)]]
  records.append({'model': 'finetuned', 'test_res': 96, 'top1': 0.5})
  timings = {k: {'ms_per_image': ms, 'images_per_second': 1000 / ms}
             for k, ms in [(64, 1.0), (80, 1.5), (96, 2.0), (112, 3.0)]}
  points = latency.frontier(records, timings)
  front = {(p['model'], p['test_res']) for p in points if p['pareto']}
  # 96 is slower than 80 and less accurate: off the front; each model has its own front.
  assert front == {('trained', 64), ('trained', 80), ('trained', 112), ('finetuned', 96)}
  assert next(p for p in points if p['test_res'] == 112)['ms_per_image'] == 3.0


def test_auto_picks_the_best_k_test_within_the_budget():
  records = [{'test_res': k, 'top1': t, 'loss': 1.0, 'ms_per_image': ms}
             for k, t, ms in [(64, 0.80, 1.0), (96, 0.85, 2.0), (128, 0.90, 4.0)]]
  assert analysis.best_record(analysis.within_budget(records, 0.0), 'top1')['test_res'] == 128
  assert analysis.best_record(analysis.within_budget(records, 2.5), 'top1')['test_res'] == 96
  with pytest.raises(errors.ConfigError, match=r'the fastest, 64, takes 1 ms per image'):
    analysis.within_budget(records, 0.5)


def test_a_budget_needs_the_timing():
  config = config_lib.get_base_config()
  config_lib.validate(config, 1)  # the defaults time the sweep, without a budget
  config.finetune.auto_max_ms_per_image = 5.0
  config.sweep.latency_batch_size = 0
  with pytest.raises(errors.ConfigError, match='latency_batch_size'):
    config_lib.validate(config, 1)
  config.finetune.auto_max_ms_per_image = -1.0
  config.sweep.latency_batch_size = 32
  with pytest.raises(errors.ConfigError, match='auto_max_ms_per_image'):
    config_lib.validate(config, 1)


@pytest.mark.slow
def test_the_run_writes_its_frontier_and_auto_keeps_to_the_budget(tmp_path, tiny_config):
  from fixres_jax import recipe  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.finetune.test_res = analysis.AUTO
  config.finetune.auto_resolutions = (24, 32, 40)
  config.finetune.auto_max_ms_per_image = 1e6  # every K_test qualifies: the choice is timed
  config.sweep.parametric = False
  recipe.run(config, str(tmp_path))
  choice = json.loads((tmp_path / 'auto_test_res.json').read_text())
  assert choice['max_ms_per_image'] == 1e6
  assert all(r['ms_per_image'] > 0 for r in choice['records'])
  frontier = json.loads((tmp_path / 'frontier.json').read_text())
  assert frontier['batch_size'] == config.sweep.latency_batch_size
  assert {(p['model'], p['test_res']) for p in frontier['points']} == {
      (m, k) for m in ('trained', 'finetuned') for k in config.sweep.resolutions}
  assert any(p['pareto'] for p in frontier['points'])
  assert (tmp_path / 'frontier.png').stat().st_size > 0
