"""studies.transforms: the paired differences and the report, on made-up variant records."""

import json
import re

import numpy as np
import pytest

from studies import transforms

VARIANTS = transforms.all_variants(with_tta=True)


def write_seed(root, seed: int, shift: dict) -> None:
  """A seed's variant records: top-1 0.8 + shift[variant] (+ a seed's noise), the parametric
  adaptation 0.01 above the trained network with the default target and 0.01 below it with
  the central-crop target."""
  rng = np.random.default_rng(seed)
  for variant in VARIANTS:
    records = []
    for k in transforms.RESOLUTIONS:
      base = 0.8 + shift.get(variant.name, 0.0) + rng.normal(0, 0.001)
      for model in variant.models:
        records.append({'model': model, 'test_res': k, 'top1': base, 'nll': 1 - base,
                        'num_images': 2000})
      if variant.parametric:
        offset = 0.01 if variant.name == transforms.DEFAULT else -0.01
        records.append({'model': 'parametric', 'test_res': k, 'top1': base + offset,
                        'nll': 1 - base - offset})
    meta = {'finetune_test_res': {'test_res': 96}, 'train_res': 64}
    if variant.parametric:
      meta['parametric'] = {'maps': {str(k): [1.0 + seed, 0.0] for k in transforms.RESOLUTIONS}}
    path = transforms.record_path(root, seed, variant.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'records': records, 'meta': meta}))


def summarize(root, seeds):
  return transforms.summarize({s: transforms.collect_seed(root, s, VARIANTS) for s in seeds},
                              VARIANTS)


def test_the_report_pairs_each_variant_with_the_default_transform(tmp_path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(tmp_path)
  for seed in range(3):
    write_seed(root, seed, {'bicubic': 0.02, 'crop_1.0': -0.03})
  summary = summarize(root, range(3))
  assert summary['differences']['bicubic']['trained'][64]['margin'] > 0.015
  assert summary['best_differences']['crop_1.0']['finetuned']['margin'] < -0.025
  assert abs(summary['differences']['lanczos']['finetuned'][96]['margin']) < 0.01
  # The target's variant re-scores the same trained network: it has no transform to compare.
  assert 'parametric_test_target' not in summary['differences']
  parametric = summary['parametric']
  assert parametric['train_transform'][80]['margin'] > 0.005
  assert parametric['test_transform'][80]['margin'] < -0.005
  assert parametric['train_minus_test'][80]['margin'] > 0.015
  assert summary['parametric_nll']['test_transform'][80]['margin'] > 0.005
  assert summary['parametric_maps']['train_transform'][64] == [2.0, 0.0]  # mean over seeds
  assert 'At K_train=64' in transforms.finding_lines(summary, VARIANTS)[-1]
  text = transforms.render(summary, VARIANTS, 'python -m studies.transforms', 'a machine')
  assert 'python -m studies.transforms' in text and '## What was found' in text
  assert '`tta_flip`' in text  # the TTA variants' records are there, so they are reported
  assert re.search(r'bicubic trained \+[12]\.\d\d ± 0\.\d\d\*',  # resolved, so starred
                   transforms.finding_lines(summary, VARIANTS)[0])
  # README's block renders the same from the JSON as from the run.
  result = json.loads(json.dumps({'summary': summary}))
  assert transforms.readme_block_from_json(result) == transforms.readme_block(summary, VARIANTS)


@pytest.mark.slow  # the figure
def test_write_report_leaves_out_a_seed_without_records(tmp_path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(tmp_path)
  for seed in range(2):
    write_seed(root, seed, {})
  summary = transforms.write_report(root, [0, 1, 2], root / 'docs', 'cmd')
  assert summary['seeds'] == [0, 1]
  assert (root / 'docs' / 'transforms.png').read_bytes()[:4] == b'\x89PNG'
  assert 'cmd' in (root / 'docs' / 'TRANSFORMS.md').read_text()
