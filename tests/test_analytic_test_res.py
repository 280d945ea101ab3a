"""One analytic K_test*: the reproduction study and a run's own sweep compute the same number
(analysis.analytic_test_res on the run's config)."""

from fixres_jax import analysis
from fixres_jax.data import pipeline
from studies import reproduce


def test_the_study_and_the_run_sweep_give_the_same_analytic_k_test(synthetic_data_dir,
                                                                   tmp_path):
  plan = reproduce.Plan(train_res=(16,), seeds=(0, 1), quick=True, data_dir=synthetic_data_dir)
  for seed in plan.seeds:
    # The config of the sweep run whose sweep_meta.json records K_test* (select_and_sweep's).
    sweep = reproduce.eval_config(plan, 16, seed, tmp_path / 'trained', [16, 24],
                                  parametric=True)
    in_run = analysis.analytic_test_res(sweep, pipeline.load_dataset(sweep))
    in_study = reproduce.analytic_test_res(plan, 16, seed)
    assert in_study == in_run
    assert in_study['image_shapes'].endswith(f'images of {reproduce.FIT_SPLIT}')
  # Each run draws its Monte Carlo with its own seed: the study must use that seed, too.
  assert (reproduce.analytic_test_res(plan, 16, 0)['expected_sigma']
          != reproduce.analytic_test_res(plan, 16, 1)['expected_sigma'])


def test_a_k_train_shows_each_seeds_analytic_k_test():
  from studies import reproduce_report  # pylint: disable=g-import-not-at-top
  by_seed = {0: {'test_res': 88, 'test_res_exact': 85.11, 'expected_sigma': 0.658},
             1: {'test_res': 88, 'test_res_exact': 85.34, 'expected_sigma': 0.6562}}
  summary = reproduce.summarize_analytic(by_seed)
  assert summary['test_res_exact'] == 85.11 and set(summary['by_seed']) == {0, 1}
  assert reproduce_report.over_seeds(summary, 'test_res_exact', '.1f') == (
      '85.1-85.3 over the seeds')
  assert reproduce_report.over_seeds(summary, 'test_res', 'd') == '88'
  # results.json written before seeds were kept: the one value.
  assert reproduce_report.over_seeds({'expected_sigma': 0.658}, 'expected_sigma', '.3f') == (
      '0.658')
