"""The variant studies' shared report helpers (studies/variant_grid.py)."""

from studies import recipe
from studies import variant_grid

LABELS = {'baseline': 'baseline', 'ra': 'repeated augmentation'}


def results(top1_by_variant):
  return {name: {'runs': [{'seed': seed, 'top1': top1} for seed, top1 in enumerate(values)]}
          for name, values in top1_by_variant.items()}


def test_never_learned_names_each_run_at_chance_level_with_its_seed():
  text = variant_grid.never_learned(
      results({'baseline': [0.80, 0.12], 'ra': [0.199, 0.201]}), LABELS, 'top1')
  assert 'baseline seed 1 (12.0%)' in text
  assert 'repeated augmentation seed 0 (19.9%)' in text
  assert 'seed 1 (20.1%)' not in text and '80.0%' not in text


def test_never_learned_says_nothing_when_every_run_learned():
  assert variant_grid.never_learned(results({'baseline': [0.7, 0.8]}), LABELS, 'top1') == ''


def test_the_recipe_report_names_the_demo_k_train_when_only_other_variants_ran():
  assert recipe.measured_train_res({}) == recipe.TRAIN_RES
  runs = {'baseline': {'runs': [{'train_res': 96}]}}
  assert recipe.measured_train_res(runs) == 96
