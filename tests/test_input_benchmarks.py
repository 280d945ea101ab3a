"""The input benchmarks' JSON (per-core rates, copies, loop overhead) and the report's tables.

benchmarks.report runs as a subprocess: it and input_pipeline both define an --out flag.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from benchmarks import input_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(command):
  completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                             timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]


def test_imagenet_like_mix_has_the_stated_median_and_a_large_tail():
  sizes = input_pipeline.image_sizes(200)
  assert len(sizes) == 200
  areas = sorted(w * h for w, h in sizes)
  assert areas[100] == 500 * 375
  assert max(max(w, h) for w, h in sizes) >= 2000


def test_input_and_loop_json_render_cores_needed(tmp_path, synthetic_data_dir):
  inputs = tmp_path / 'input.json'
  run([sys.executable, '-m', 'benchmarks.input_pipeline', '--num_images=12', '--seconds=0.2',
       '--rounds=1', '--copy_short_sides=160', f'--out={inputs}'])
  loop = tmp_path / 'loop.json'
  run([sys.executable, '-m', 'benchmarks.loop_overhead', f'--data_dir={synthetic_data_dir}',
       '--dataset=fixres_synthetic/tiny', '--image_size=32', '--batch=16', '--steps=3',
       '--rounds=1', f'--out={loop}'])
  result = json.loads(inputs.read_text())
  randaugment = f'train@160 + RandAugment {input_pipeline.RANDAUGMENT}'
  assert set(result['results']) == {'train@128', 'train@160', 'train@224', 'finetune@288',
                                    'test@224', 'test@288', 'train@128 copy s160', randaugment}
  for r in result['results'].values():
    assert r['fast_img_per_cpu_s'] > 0 and r['baseline_img_per_cpu_s'] > 0
  # Decoding at 1/8 scale is cheaper than a full decode of the same images.
  assert result['decode_img_per_cpu_s']['1/8'] > result['decode_img_per_cpu_s']['1/1']
  loop_result = json.loads(loop.read_text())
  assert set(loop_result['ms_per_step']) == {'device', 'host', 'pipeline', 'pipeline alone'}
  assert all(v > 0 for v in loop_result['ms_per_step'].values())

  out = tmp_path / 'PERFORMANCE.md'
  run([sys.executable, '-m', 'benchmarks.report',
       f'--inputs={ROOT / "docs/benchmarks/gpu_h200.json"},{inputs},{loop}', f'--out={out}',
       '--readme='])  # the repository's README keeps its measured block
  text = out.read_text()
  gpu = json.loads((ROOT / 'docs/benchmarks/gpu_h200.json').read_text())
  train128 = next(r['images_per_s'] for r in gpu['records']
                  if (r['step'], r['resolution']) == ('train', 128))
  cores = train128 / result['results']['train@128']['fast_img_per_cpu_s']
  assert f'| train@128 | train_step@128 | {train128:,.0f} |' in text
  assert f'| {cores:,.1f} |' in text
  assert '| train@160 | train_step@160 | not measured |' in text
  assert 'the training loop is not the bottleneck' in text
  # RandAugment has its own table (its baseline is the transform without it), not a row of
  # the fast-against-full-decode table.
  augment = result['results'][randaugment]
  assert (f"| {randaugment} | {augment['baseline_img_per_cpu_s']:,.0f} "
          f"| {augment['fast_img_per_cpu_s']:,.0f} |") in text
  assert text.count(randaugment) == 1
