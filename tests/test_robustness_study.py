"""studies.robustness: the paired comparisons and the report, on made-up sweeps."""

import json
import re

import numpy as np

from studies import robustness

RESOLUTIONS = (48, 64, 96)


def fake_run(seed: int, finetuned_gain: dict) -> dict:
  """A seed's collect_seed: fine-tuning adds finetuned_gain[set] to top-1 (and some noise)."""
  rng = np.random.default_rng(seed)
  records = {}
  for s in robustness.SETS:
    for m in robustness.MODELS:
      for k in RESOLUTIONS:
        gain = np.ravel(finetuned_gain[s])[seed % np.size(finetuned_gain[s])]  # one per seed, or all
        top1 = 0.6 + (gain if m == 'finetuned' else 0) + rng.normal(0, 0.002)
        records[(s, m, k)] = {'top1': top1, 'ece': 0.1 - (top1 - 0.6) / 2, 'nll': 1 - top1}
  return {'records': records, 'train_res': 64, 'finetune_test_res': 96}


def test_the_report_says_where_fine_tuning_helps_and_hurts(tmp_path):
  gains = dict.fromkeys(robustness.SETS, 0.0)
  gains.update(validation=0.05, synthetic_blur=-0.05, synthetic_noise=[0.02, -0.02, 0.01])
  runs = {seed: fake_run(seed, gains) for seed in range(3)}
  summary = robustness.summarize(runs)
  operating = summary['operating']
  assert robustness.verdict(operating['validation']['top1']) == 'helps'
  assert robustness.verdict(operating['synthetic_blur']['top1']) == 'hurts'
  assert robustness.verdict(operating['synthetic_noise']['top1']) == 'unclear'
  assert robustness.verdict(operating['validation']['ece'], higher_is_better=False) == 'helps'
  assert operating['validation']['top1']['margin'] > 0.04
  lines = robustness.finding_lines(summary)
  assert 'better on validation;' in lines[0] and 'worse on synthetic_blur;' in lines[0]
  text = robustness.render(summary, 'python -m studies.robustness', 'a machine')
  assert '## What was found' in text and re.search(r'\| \+[45]\.\d\d ± 0\.\d\d \| helps', text)
  # README's block renders the same from the JSON as from the run.
  result = json.loads(json.dumps({'summary': summary}))
  assert robustness.readme_block_from_json(result) == robustness.readme_block(summary)
  fig = robustness.plot(summary)
  assert len(fig.axes) == 2 * len(robustness.SETS)
