"""The step benchmark's JSON, the GPU script's path (on the CPU) and the generated report.

The benchmarks run as subprocesses, the way their COMMANDs run them (and because
benchmarks/steps.py and benchmarks/report.py each define absl flags).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from benchmarks import report
from benchmarks import thunks
from fixres_jax import evaluate
from fixres_jax import models
from fixres_jax import stage
from fixres_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_TORCH = (importlib.util.find_spec('torch') is not None
             and importlib.util.find_spec('torchvision') is not None)

pytestmark = pytest.mark.slow


def run(command, **kwargs):
  completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                             timeout=300, **kwargs)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return completed


@pytest.fixture(scope='module')
def steps_json(tmp_path_factory):
  out = tmp_path_factory.mktemp('steps') / 'steps.json'
  run([sys.executable, '-m', 'benchmarks.steps', '--model=tiny', '--batch=2',
       '--train_res=32,48', '--test_res=40', '--warmup=1', '--iters=2', '--num_devices=1',
       '--torch', '--torch_res=32', '--torch_formats=channels_last', f'--out={out}'])
  return json.loads(out.read_text())


def test_steps_json_has_every_step_and_positive_ratios(steps_json):
  machine, config = steps_json['machine'], steps_json['config']
  assert machine['device_kind'] and machine['cpu_count'] >= 1 and machine['jax'] == jax.__version__
  assert config['batch'] == 2 and config['num_devices'] == 1
  flax = {(r['step'], r['resolution']): r for r in steps_json['records']
          if r['framework'] == 'flax'}
  assert set(flax) == {('train', 32), ('train', 48), ('eval', 40), ('finetune', 40)}
  for record in flax.values():
    assert len(record['times_s']) == len(record['cpu_times_s']) == 2
    assert record['step_s'] > 0 and record['fastest_s'] <= record['step_s']
    assert record['compile_s'] > 0 and record['flops'] > 0
    assert record['images_per_s'] == pytest.approx(2 / record['step_s'])
  # A train step differentiates everything: it costs more FLOPs than inference at a
  # higher resolution; fine-tuning only adds the head's backward pass to inference.
  assert flax['train', 32]['flops'] > flax['eval', 40]['flops']
  assert flax['eval', 40]['flops'] <= flax['finetune', 40]['flops'] < flax['train', 48]['flops']

  derived = steps_json['derived']
  cost, = derived['train_cost_ratio']
  assert (cost['resolution'], cost['base']) == (48, 32)
  assert cost['theory'] == pytest.approx((48 / 32)**2)
  assert cost['measured'] > 0 and cost['fastest'] > 0 and cost['flops_ratio'] > 1
  finetune, = derived['finetune_over_eval']
  assert finetune['resolution'] == 40 and finetune['measured'] > 0 and finetune['fastest'] > 0


def test_steps_json_puts_pytorch_side_by_side(steps_json):
  if not HAS_TORCH:
    assert 'not installed' in steps_json['torch']['skipped']
    return
  torch = [r for r in steps_json['records'] if r['framework'] == 'torch']
  assert {(r['step'], r['resolution'], r['memory_format']) for r in torch} == {
      ('train', 32, 'channels_last'), ('eval', 32, 'channels_last')}
  assert all(r['step_s'] > 0 for r in torch)
  ratio, = steps_json['derived']['flax_over_torch']  # Flax has no eval at 32 px
  assert (ratio['step'], ratio['resolution']) == ('train', 32)
  assert ratio['measured'] > 0 and ratio['fastest'] > 0 and ratio['cpu_time'] > 0


def test_report_renders_every_number_with_its_machine(steps_json, tmp_path):
  (tmp_path / 'cpu.json').write_text(json.dumps(steps_json))
  results = report.load_results([str(tmp_path / '*.json')])
  markdown = report.render(results)
  assert markdown.startswith('# Performance')
  assert steps_json['machine']['cpu_model'] in markdown
  cost = steps_json['derived']['train_cost_ratio'][0]
  assert (f"| K=48 / K=32 | {cost['measured']:.2f} | {cost['fastest']:.2f} | 2.25 |"
          in markdown)
  for record in steps_json['records']:
    if record['framework'] == 'flax':
      assert f"{record['step_s'] * 1e3:,.1f}" in markdown
  block = report.readme_block(results)
  assert block.startswith('Measured by `benchmarks/`') and f"{cost['measured']:.2f}x" in block


def test_report_gives_images_per_second_and_mfu_on_a_gpu(steps_json, tmp_path):
  result = json.loads(json.dumps(steps_json))
  result['machine'].update(platform='gpu', device_kind='NVIDIA H100 80GB HBM3',
                           device_memory_gb=70.0, peak_memory_gb=20.5)
  result['config']['peak_tflops_per_device'] = 989.0
  for record in result['records']:
    record['mfu'] = record.get('tflops_per_s', 0) / 989.0
  (tmp_path / 'gpu.json').write_text(json.dumps(result))
  results = report.load_results([str(tmp_path / 'gpu.json')])
  markdown, block = report.render(results), report.readme_block(results)
  assert 'NVIDIA H100 80GB HBM3 (gpu, 70 GiB for XLA, peak 20.5 GiB used)' in markdown
  assert '(989 TFLOP/s)' in markdown
  train = next(r for r in result['records'] if r['step'] == 'train')
  assert f"train@{train['resolution']} {train['images_per_s']:,.0f} img/s (MFU" in block


def test_calibration_cost_compares_the_temperature_grid_with_one_temperature(tmp_path):
  """Both steps compiled and timed; the grid's step really holds the grid: it counts at
  least one more log-softmax of [batch, classes] per extra temperature."""
  out = tmp_path / 'calibration.json'
  run([sys.executable, '-m', 'benchmarks.calibration_cost', '--model=tiny', '--batch=2',
       '--resolution=32', '--warmup=1', '--iters=2', f'--out={out}'])
  result = json.loads(out.read_text())
  grid, one = result['records']['grid'], result['records']['one_temperature']
  assert result['config']['temperatures'] == len(evaluate.TEMPERATURES) > 1
  assert len(grid['times_s']) == len(one['times_s']) == 2
  extra = (len(evaluate.TEMPERATURES) - 1) * 2 * result['config']['num_classes']
  assert grid['flops'] - one['flops'] >= extra, (grid['flops'], one['flops'])
  assert result['grid_over_one_temperature']['measured'] > 0


def test_gpu_script_halves_the_batch_when_memory_runs_out(tmp_path):
  """The GPU script's whole path, on the CPU: it retries 4 -> 2 and summarises."""
  completed = run(['bash', 'benchmarks/gpu.sh', str(tmp_path), '--smoke',
                   '--simulate_oom_above=2', '--train_res=32'],
                  env=dict(os.environ, BATCH='4'))
  result = json.loads((tmp_path / 'smoke.json').read_text())
  assert result['config']['batch'] == 2
  assert 'out of memory at batch 4' in (tmp_path / 'smoke.log').read_text()
  assert 'finetune/eval @40' in completed.stdout
  assert {r['step'] for r in result['records']} == {'train', 'eval', 'finetune'}


def test_gpu_script_reports_failures(tmp_path):
  completed = subprocess.run(['bash', 'benchmarks/gpu.sh', str(tmp_path), '--smoke',
                              '--model=nonexistent'], cwd=ROOT, capture_output=True,
                             text=True, check=False, timeout=120)
  assert completed.returncode != 0 and 'exited with' in completed.stderr


def test_profile_categories_find_each_convolution_direction():
  """Tiny ResNet-10: 12 convolutions (stem, 8 in blocks, 3 downsample); the image gets no
  gradient, so there is one input gradient fewer than kernel gradients."""
  model = models.create_model('resnet', 10, stage_sizes=(1, 1, 1, 1), block='basic',
                              num_filters=8)
  variables = train.init_variables(model, 32, seed=0)
  tx = optax.sgd(0.1)
  state = stage.create_train_state(model, variables, tx)
  batch = {'image': np.zeros((2, 32, 32, 3), np.float32), 'label': np.zeros(2, np.int32)}
  hlo = jax.jit(train.train_step).lower(state, batch).compile().as_text()
  categories = list(thunks.classify_thunks(hlo).values())
  assert categories.count(thunks.FORWARD) == 12
  assert categories.count(thunks.KERNEL_GRAD) == 12
  assert categories.count(thunks.INPUT_GRAD) == 11
  # Gradient convolutions read their operands through transposes (batch as features).
  assert thunks.GRAD_COPIES in categories and thunks.OTHER in categories
  assert sum(thunks.count_thunks(hlo).values()) <= len(categories)
