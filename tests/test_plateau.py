"""studies.plateau: when a run leaves chance level, and its report."""

import json
import math

from etils import epath

from studies import common
from studies import plateau


def record(losses, variant='baseline', seed=0):
  return {'loss': losses, 'num_classes': 10, 'variant': variant, 'seed': seed,
          'overrides': plateau.VARIANTS[variant][1],
          'probes': [{'step': 1, 'grad_norm': {'conv1': 4.0, 'fc': 1.0},
                      'param_norm': {'conv1': 2.5, 'fc': 3.0}},
                     {'step': 21, 'grad_norm': {'conv1': 0.05, 'fc': 0.5},
                      'param_norm': {'conv1': 2.7, 'fc': 2.0}}]}


def test_left_chance_is_the_first_step_whose_trailing_mean_is_below_the_line():
  chance = math.log(10)
  losses = [chance] * 50 + [1.0] * 50
  # The 20-step trailing mean crosses 0.9 ln 10 once 4 of its 20 losses are 1.0.
  assert plateau.left_chance_step(record(losses)) == 54
  assert plateau.left_chance_step(record([chance] * 100)) is None


def test_report_names_every_variant_that_ran_and_its_change(tmp_path):
  root = epath.Path(tmp_path / 'runs')
  runs = (('baseline', 0, [2.3] * 30), ('baseline', 1, [2.3] * 10 + [1.0] * 20),
          ('contrast_x2', 0, [1.0] * 30))
  for name, seed, losses in runs:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / f'seed_{seed}.json').write_text(json.dumps(record(losses, name, seed)))
  text = plateau.report(root, (0, 1), epath.Path(tmp_path))
  assert '| baseline | none | >30, 13 | 30 |' in text
  assert "| contrast_x2 | dataset texture_contrast=(24.0, 144.0), dataset" not in text
  assert '| contrast_x2 | dataset texture_contrast=(24.0, 144.0) | 1 | 30 |' in text
  assert '| 1 | 13 | 3.00 -> 2.00 | 4.00 -> 0.050 |' in text
  assert (tmp_path / 'plateau_loss.png').exists()
  assert (tmp_path / 'plateau_gradients.png').exists()


def test_the_latest_style_is_the_dataset_as_it_is_and_the_last_row_the_demo_as_it_is():
  from fixres_jax.data.synthetic import render  # pylint: disable=g-import-not-at-top
  style = render.DEFAULT_STYLE
  assert {k: getattr(style, k) for k in plateau.V4} == plateau.V4
  config = common.demo_config('', 0)
  style_name, changes = plateau.VARIANTS['demo_v5']
  assert style_name == 'v4'
  for key, value in {**plateau.START, **changes}.items():
    section, field = key.split('.')
    assert config[section][field] == value, key
  assert all(name in plateau.STYLES for name, _ in plateau.VARIANTS.values())
