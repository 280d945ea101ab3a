"""Evaluation sets: the label rules score as timm does; ImageNet's robustness sets load and
score through the sources layer (on generated stand-ins); calibration by its definition."""

# torch before TensorFlow: loaded the other way round, it may crash the process.
import timm.data.real_labels
import timm.utils
import torch

import json

import jax.numpy as jnp
import numpy as np
import pytest

from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import evalsets
from fixres_jax import evaluate
import imagenet_fixtures

ROBUSTNESS_SETS = ('imagenet_v2', 'imagenet_real', 'imagenet_a', 'imagenet_r',
                   'imagenet_sketch')


def score(logits, labels, mask, scoring):
  """Our top-1, top-5 (fractions) and the summed loss of `logits` under `scoring`."""
  sums = evaluate.metric_sums(jnp.asarray(logits), {'label': jnp.asarray(labels),
                                                    'mask': jnp.asarray(mask, jnp.float32)},
                              scoring)
  count = float(sums['count'])
  return float(sums['correct1']) / count, float(sums['correct5']) / count, sums


def multi_hot(label_sets, num_classes):
  hot = np.zeros((len(label_sets), num_classes), np.float32)
  for i, labels in enumerate(label_sets):
    hot[i, labels] = 1
  return hot


def timm_real(logits, label_sets, tmp_path):
  """timm's RealLabelsImagenet top-1 and top-5 (%) for label sets in file order."""
  path = tmp_path / 'real.json'
  path.write_text(json.dumps(label_sets))
  names = [f'ILSVRC2012_val_{i + 1:08d}.JPEG' for i in range(len(label_sets))]
  real = timm.data.real_labels.RealLabelsImagenet(names, real_json=str(path))
  real.add_result(torch.tensor(np.asarray(logits)))
  return real.get_accuracy(1), real.get_accuracy(5)


def test_real_labels_score_as_timm(tmp_path):
  rng = np.random.default_rng(0)
  num_classes, n = 30, 400
  # Few labels among few classes, so that top-1 and top-5 are neither 0 nor 1.
  label_sets = [sorted(rng.choice(num_classes, rng.integers(0, 4), replace=False).tolist())
                for _ in range(n)]
  logits = rng.normal(size=(n, num_classes)).astype(np.float32)
  mask = [float(bool(s)) for s in label_sets]  # the pipeline leaves out images without labels
  top1, top5, sums = score(logits, multi_hot(label_sets, num_classes), mask,
                           evaluate.Scoring('real'))
  timm_top1, timm_top5 = timm_real(logits, label_sets, tmp_path)
  assert 0 < top1 < top5 < 1
  assert 100 * top1 == pytest.approx(timm_top1, abs=1e-9)
  assert 100 * top5 == pytest.approx(timm_top5, abs=1e-9)
  assert int(sums['count']) == sum(map(bool, label_sets))
  # The NLL is that of the probability given to the label set.
  probs = torch.softmax(torch.tensor(logits), -1).numpy()
  nll = -sum(np.log(probs[i, s].sum()) for i, s in enumerate(label_sets) if s)
  assert float(sums['loss']) == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize('name', ['imagenet_a', 'imagenet_r'])
def test_class_subsets_score_as_timm(name):
  """Logits restricted to the set's 200 classes before the argmax (timm's valid_labels)."""
  indices = imagenet_fixtures.timm_indices(name)
  rng = np.random.default_rng(1)
  n = 300
  logits = rng.normal(size=(n, 1000)).astype(np.float32)
  labels = rng.choice(indices, n)
  logits[np.arange(n), labels] += 2.5  # better than chance, short of certain
  top1, top5, sums = score(logits, labels, np.ones(n), evaluate.Scoring('subset',
                                                                        tuple(indices)))
  output = torch.tensor(logits)[:, indices]
  target = torch.tensor([indices.index(c) for c in labels])
  timm_top1, timm_top5 = timm.utils.accuracy(output, target, topk=(1, 5))
  assert 100 * top1 == pytest.approx(float(timm_top1), abs=1e-4)
  assert 100 * top5 == pytest.approx(float(timm_top5), abs=1e-4)
  # Unrestricted, the other 800 classes would take some of the argmaxes.
  plain_top1, _, _ = score(logits, labels, np.ones(n), evaluate.SINGLE)
  assert 0 < plain_top1 < top1 < 1
  ce = torch.nn.functional.cross_entropy(output, target, reduction='sum')
  assert float(sums['loss']) == pytest.approx(float(ce), rel=1e-5)


def test_ece_and_nll_follow_their_definitions():
  rng = np.random.default_rng(2)
  n, num_classes = 1000, 10
  logits = 3 * rng.normal(size=(n, num_classes)).astype(np.float32)
  labels = rng.integers(num_classes, size=n)
  mask = (rng.random(n) > 0.1).astype(np.float32)  # padding counts for nothing
  metrics = summarize_sums(score(logits, labels, mask, evaluate.SINGLE)[2])
  probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
  keep = mask > 0
  confidence, correct = probs.max(-1)[keep], (probs.argmax(-1) == labels)[keep]
  # 15 equal-width bins (b/15, (b+1)/15]; |accuracy - confidence| weighted by the bin's share.
  edges = np.linspace(0, 1, evalsets.ECE_BINS + 1)
  ece = sum(np.sum(inside) / keep.sum() * abs(correct[inside].mean() - confidence[inside].mean())
            for inside in ((confidence > lo) & (confidence <= hi)
                           for lo, hi in zip(edges[:-1], edges[1:])) if inside.any())
  assert metrics['ece'] == pytest.approx(ece, abs=1e-5)
  nll = -np.log(probs[np.arange(n), labels])[keep].mean()
  assert metrics['nll'] == pytest.approx(nll, rel=1e-5) and metrics['nll'] == metrics['loss']
  assert metrics['num_images'] == keep.sum()


def summarize_sums(sums) -> dict:
  """evaluate.summarize's metrics of metric_sums alone (no feature statistics)."""
  return evaluate.summarize({
      **{k: np.asarray(v) for k, v in sums.items()}, 'zero_fraction': 0.0,
      'feature_count': 1, 'feature_sum': 1.0, 'feature_sq_sum': 1.0,
      'histogram': np.zeros(len(evaluate.HISTOGRAM_EDGES) + 1)})[0]


@pytest.mark.parametrize('scale', [0.5, 1.0, 2.0])
def test_the_calibrated_loss_does_not_depend_on_the_logits_scale(scale):
  rng = np.random.default_rng(3)
  n, num_classes = 500, 10
  labels = rng.integers(num_classes, size=n)
  # Under-confident logits: right more often than their probabilities say.
  logits = rng.normal(size=(n, num_classes)) + 2.0 * np.eye(num_classes)[labels]
  mask = np.ones(n, np.float32)
  metrics = summarize_sums(score(scale * logits, labels, mask, evaluate.SINGLE)[2])
  reference = summarize_sums(score(logits, labels, mask, evaluate.SINGLE)[2])
  # The grid holds every power of 2 ** (1/8): a scale of 2 moves the best temperature by
  # exactly 8 steps and leaves the least loss where it was.
  assert metrics['temperature'] == pytest.approx(scale * reference['temperature'])
  assert metrics['calibrated_loss'] == pytest.approx(reference['calibrated_loss'], rel=1e-5)
  assert metrics['calibrated_loss'] < metrics['loss']
  probs = torch.softmax(torch.tensor(scale * logits / metrics['temperature']), -1).numpy()
  assert metrics['calibrated_loss'] == pytest.approx(
      -np.log(probs[np.arange(n), labels]).mean(), rel=1e-5)
  assert reference['temperature'] < 1  # under-confident: the logits want sharpening


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  """The five robustness sets as generated stand-ins (tfds's features, splits, versions)."""
  data_dir = str(tmp_path_factory.mktemp('imagenet_sets'))
  for dataset in imagenet_fixtures.SPLITS:
    imagenet_fixtures.prepare_fake(dataset, data_dir)
  return data_dir


def imagenet_config(data_dir, evals):
  """A config whose own dataset is the ImageNet-V2 stand-in (the 1000 ImageNet classes)."""
  config = config_lib.get_base_config()
  config.data.name = 'imagenet_v2/matched-frequency'
  config.data.data_dir = data_dir
  config.data.train_split = config.data.eval_split = 'test'
  config.finetune.auto_split = config.sweep.parametric_split = 'test[-10%:]'
  config.sweep.evals = evals
  config.sweep.batch_size = 16
  return config


def test_robustness_sets_load_and_score_as_timm(imagenet_dir, tmp_path):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = imagenet_config(imagenet_dir, ('validation',) + ROBUSTNESS_SETS)
  config_lib.validate(config, 1)
  dataset = pipeline.load_dataset(config)
  loaded = {e.name: e for e in pipeline.load_eval_sets(config, dataset)}
  assert list(loaded) == ['validation', *ROBUSTNESS_SETS]
  assert {n: e.rule for n, e in loaded.items()} == {
      'validation': 'single', 'imagenet_v2': 'single', 'imagenet_real': 'real',
      'imagenet_a': 'subset', 'imagenet_r': 'subset', 'imagenet_sketch': 'single'}
  for name in ('imagenet_a', 'imagenet_r'):  # the classes read from the labels are timm's
    assert list(loaded[name].classes) == imagenet_fixtures.timm_indices(name)

  rng = np.random.default_rng(3)
  for name, eval_data in loaded.items():
    batches = list(pipeline.eval_set_batches(config, eval_data, 16))
    labels = np.concatenate([b['label'] for b in batches])
    mask = np.concatenate([b['mask'] for b in batches])
    logits = rng.normal(size=(len(mask), 1000)).astype(np.float32)
    scoring = evaluate.Scoring(eval_data.rule, eval_data.classes)
    top1, top5, _ = score(logits, labels, mask, scoring)
    dataset_name = evalsets.resolve(config, name).dataset
    raw = imagenet_fixtures.raw_labels(dataset_name, imagenet_dir)
    real = logits[:len(raw)]  # the padding comes last
    if eval_data.rule == 'real':
      assert mask.sum() == sum(map(bool, raw)) < len(raw)  # images without labels left out
      expected = timm_real(real, raw, tmp_path)
    else:
      indices = list(eval_data.classes) or list(range(1000))
      expected = timm.utils.accuracy(torch.tensor(real)[:, indices],
                                     torch.tensor([indices.index(c) for c in raw]), (1, 5))
    assert (100 * top1, 100 * top5) == pytest.approx([float(e) for e in expected], abs=1e-4)


def test_a_missing_set_says_how_to_prepare_it(tmp_path, imagenet_dir):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = imagenet_config(imagenet_dir, ('validation', 'imagenet_a'))
  dataset = pipeline.load_dataset(config)
  config.data.data_dir = str(tmp_path)  # where no evaluation set is prepared
  with pytest.raises(errors.NotFoundError, match=r'imagenet_a.*not prepared.*tfds build '
                                                 r'imagenet_a --data_dir=DIR'):
    pipeline.load_eval_sets(config, dataset)
  config.sweep.evals = ('imagenet_real',)
  with pytest.raises(errors.NotFoundError, match='ILSVRC2012_img_val.tar'):
    pipeline.load_eval_sets(config, dataset)


def test_a_set_of_another_label_space_is_refused(imagenet_dir, tiny_dataset, tiny_config):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  tiny_config.sweep.evals = ('validation', 'imagenet_sketch')
  tiny_config.data.data_dir = imagenet_dir
  with pytest.raises(errors.ConfigError, match=r'1000 classes are not the 10'):
    pipeline.load_eval_sets(tiny_config, tiny_dataset)


@pytest.mark.parametrize('evals,message', [
    (('validation', 'imagenet_b'), "has 'imagenet_b'"),
    ((), 'at least one set'),
    (('validation', 'validation'), 'twice'),
])
def test_validate_names_the_bad_eval_set(evals, message):
  config = config_lib.get_base_config()
  config.sweep.evals = evals
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(config, 1)


def test_evals_take_a_comma_separated_list():
  assert evalsets.parse_names('validation, synthetic_blur') == ('validation', 'synthetic_blur')
  assert evalsets.parse_names(('validation,synthetic_noise',)) == ('validation',
                                                                    'synthetic_noise')


@pytest.mark.slow  # two sweeps
def test_sweep_scores_every_model_on_every_set(tmp_path, tiny_config, tiny_dataset,
                                                monkeypatch):
  import csv  # pylint: disable=g-import-not-at-top
  from fixres_jax import analysis  # pylint: disable=g-import-not-at-top
  from fixres_jax import parallel  # pylint: disable=g-import-not-at-top
  from test_analysis import create_models  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(evalsets.EVAL_SETS, 'head',
                      evalsets.EvalSet('fixres_synthetic/tiny', 'train[:40]'))
  # Labels cycle through the classes: the first 5 images hold classes 0-4 only.
  monkeypatch.setitem(evalsets.EVAL_SETS, 'five',
                      evalsets.EvalSet('fixres_synthetic/tiny', 'train[:5]', 'subset'))
  config = tiny_config
  config.sweep.latency_batch_size = 0
  model, variables = create_models(config, tiny_dataset)
  mesh = parallel.create_mesh()
  alone = analysis.sweep(config, tiny_dataset, mesh, variables, model).records
  config.sweep.evals = ('validation', 'head', 'five')
  result = analysis.sweep(config, tiny_dataset, mesh, variables, model)
  analysis.write_sweep(tmp_path, result)

  records = result.records
  models = ('trained', 'finetuned', 'parametric')
  assert {(r['eval'], r['model'], r['test_res']) for r in records} == {
      (e, m, k) for e in config.sweep.evals for m in models for k in config.sweep.resolutions}
  assert {r['eval']: r['num_images'] for r in records} == {'validation': 100, 'head': 40,
                                                            'five': 5}
  # Adding sets changes nothing of the validation split's records.
  assert [r for r in records if r['eval'] == 'validation'] == alone
  for r in records:
    assert 0 <= r['ece'] <= 1 and r['nll'] == r['loss'] > 0
  assert [e['num_classes_scored'] for e in result.meta['evals']] == [None, None, 5]
  with (tmp_path / 'sweep.csv').open() as f:
    rows = list(csv.DictReader(f))
  assert [(r['eval'], r['model']) for r in rows] == [(r['eval'], r['model']) for r in records]
  assert (tmp_path / 'sweep.png').read_bytes()[:4] == b'\x89PNG'
  table = analysis.format_table(records)
  assert 'head:' in table and 'five:' in table
