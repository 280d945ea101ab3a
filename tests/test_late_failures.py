"""What fails late must not lose what came before: data.skip_corrupt reaches the image-shape
reader of the analytic K_test*, and a sweep's records are on disk as each resolution ends."""

import csv
import json

import pytest

from fixres_jax import analysis
from fixres_jax import errors
from fixres_jax import evaluate
from fixres_jax import parallel
from fixres_jax.data import pipeline
from fixres_jax.data import sources
from test_sources import folder_config, make_folder


@pytest.fixture
def corrupt_folder(tmp_path, tiny_config):
  """A folder dataset whose training split holds an empty .jpg (its size cannot be read)."""
  root = make_folder(tmp_path / 'data')
  (root / 'train' / 'cat' / '0_rgb.jpg').write_bytes(b'')
  return folder_config(tiny_config, root)


def test_image_shapes_name_a_corrupt_image_or_skip_it(corrupt_folder):
  dataset = pipeline.load_dataset(corrupt_folder)
  with pytest.raises(errors.DataError, match=r"split 'train'.*skip_corrupt=True"):
    sources.read_image_shapes(dataset, 'train', 100)
  shapes = sources.read_image_shapes(dataset, 'train', 100, skip_corrupt=True)
  assert shapes.shape == (14, 2)  # 15 images, the empty one skipped


def test_analytic_k_test_skips_corrupt_images_under_skip_corrupt(corrupt_folder):
  corrupt_folder.data.skip_corrupt = True
  dataset = pipeline.load_dataset(corrupt_folder)
  result = analysis.analytic_test_res(corrupt_folder, dataset)
  assert result['image_shapes'] == '14 images of train' and result['test_res_exact'] > 32


def test_analytic_k_test_with_no_readable_image_assumes_the_default_shape(tiny_config,
                                                                          monkeypatch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sources, 'read_image_shapes', lambda *a, **k: np.zeros((0, 2), np.int64))
  result = analysis.analytic_test_res(tiny_config, None)
  assert result['image_shapes'].startswith('no readable image of train')


def test_a_sweep_writes_each_resolution_before_the_next(tmp_path, tiny_config, monkeypatch):
  """The second resolution fails: the first one's records are in sweep.json and sweep.csv."""
  tiny_config.sweep.resolutions, tiny_config.sweep.parametric = (32, 40), False
  tiny_config.sweep.latency_batch_size = 0  # no timing: the model is a stand-in
  evaluated = []

  def fake_evaluate(step_fn, entries, batches, mesh):
    del step_fn, batches, mesh
    evaluated.append(1)
    if len(evaluated) == 2:
      raise RuntimeError('a late failure')
    return {name: {'plain': None} for name in entries}

  monkeypatch.setattr(evaluate, 'jit_eval_step', lambda model: None)
  monkeypatch.setattr(evaluate, 'evaluate', fake_evaluate)
  monkeypatch.setattr(evaluate, 'summarize', lambda total: (
      {'top1': 0.5, 'top5': 0.9, 'num_images': 100, 'zero_fraction': 0.1, 'loss': 1.0,
       'nll': 1.0, 'ece': 0.05}, {}))
  monkeypatch.setattr(pipeline, 'config_eval_batches', lambda *args: None)
  monkeypatch.setattr(pipeline, 'load_eval_sets', lambda config, dataset: [
      pipeline.EvalData('validation', None, 'validation', 'single', ())])
  monkeypatch.setattr(pipeline, 'eval_set_batches', lambda *args: None)
  with pytest.raises(RuntimeError, match='a late failure'):
    analysis.sweep(tiny_config, None, parallel.create_mesh(), {'trained': {}}, None,
                   workdir=tmp_path)
  records = json.loads((tmp_path / 'sweep.json').read_text())
  assert [(r['model'], r['test_res']) for r in records] == [('trained', 32)]
  with open(tmp_path / 'sweep.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['eval'], r['model'], r['test_res'], r['top1']) for r in rows] == [
      ('validation', 'trained', '32', '0.5')]
