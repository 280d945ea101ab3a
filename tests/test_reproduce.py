"""The reproduction script end to end on its --quick grid (fixres_synthetic/tiny)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from studies import claims
from studies import reproduce

REPO = pathlib.Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def run_quick(out, root, data_dir):
  """The CLI in its own process: many stages, kept out of the test process's memory."""
  subprocess.run([sys.executable, '-m', 'studies.reproduce', '--quick', '--seeds=0',
                  f'--out={out}', f'--results_root={root}', f'--data_dir={data_dir}'],
                 cwd=REPO, check=True, timeout=900, capture_output=True,
                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu'))


def test_quick_reproduction_writes_report(tmp_path, synthetic_data_dir):
  out, root = tmp_path / 'docs', tmp_path / 'runs'
  run_quick(out, root, synthetic_data_dir)

  for name in ('RESULTS.md', 'results.json', 'accuracy_vs_test_res.png', 'zero_fraction.png'):
    assert (out / name).stat().st_size > 0, name
  results = json.loads((out / 'results.json').read_text())
  assert {r['train_res'] for r in results['runs']} == set(reproduce.QUICK_TRAIN_RES)
  for run in results['runs']:
    # K_test is selected on the held-out training slice, and every fine-tuning ran there.
    assert run['selected_test_res'] in [r['test_res'] for r in run['heldout']]
    assert {'ft_selected', 'ft_train_res', 'bn_stats_only', 'cached'} <= set(run['variants'])
    for name in ('ft_selected', 'bn_stats_only', 'cached'):
      assert run['variants'][name]['test_res'] == run['selected_test_res']
    assert run['variants']['cached']['mode'] == 'cached'
    # The study's analytic K_test* is the one the run's own sweep computed.
    meta = json.loads((root / f"k{run['train_res']}_s{run['seed']}" / 'sweep' /
                       'sweep_meta.json').read_text())
    assert meta['analytic_test_res']['test_res'] == run['analytic_test_res']
  # The training epochs were chosen on the held-out slice, and every run used them.
  selection = results['epochs_selection']
  assert set(map(int, selection['heldout_top1'])) == set(reproduce.QUICK_EPOCHS)
  assert selection['chosen'] in reproduce.QUICK_EPOCHS
  configs = list(root.glob('k*_s*/train/config.json'))
  assert len(configs) == len(results['runs'])
  for path in configs:
    assert json.loads(path.read_text())['train']['num_epochs'] == selection['chosen']
  report = (out / 'RESULTS.md').read_text()
  for claim in ('### (a)', '### (b)', '### (c)', "### 'cached'"):
    line = next(l for l in report.splitlines() if l.startswith(claim))
    assert line.endswith(tuple(claims.VERDICTS.values())), line
  assert 'python -m studies.reproduce --quick' in report

  # A re-run reuses every finished run: only the report is written again.
  def finished():
    return {str(p): p.stat().st_mtime for p in root.glob('*/*/reproduce_*.json')}
  before = finished()
  run_quick(out, root, synthetic_data_dir)
  assert finished() == before
