"""What the test transform does to the demo's networks: interpolation, crop fraction and crop
mode, test-time augmentation, and the parametric adaptation's target, against K_test, over
seeds. Writes docs/TRANSFORMS.md, docs/transforms.json, docs/transforms.png and README's
transforms block.

  python -m studies.transforms --source=/tmp/demo3 --root=/tmp/fixres_transforms \
      --data_dir=/tmp/tfds_idle --seeds=0,1,2

Copies each finished demo workdir SOURCE/seed_N (studies.demo's, trained and fine-tuned) to
ROOT/seed_N, never writing into SOURCE, and evaluates its two networks there once per variant of
VARIANTS: analysis.sweep with the variant's config fields, on the validation split at
RESOLUTIONS, nothing trained. Each variant's records go to ROOT/seed_N/variants/NAME.json; a
re-run skips those that exist. The sweeps run in this process, not through `fixres_jax.main`,
because a run refuses test-transform fields other than those the fine-tuned network was made
with (rerun.py), and evaluating it under other ones is the question here.
"""

import dataclasses
import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

from studies import claims
from studies import common

FLAGS = flags.FLAGS
RESOLUTIONS = tuple(range(common.demo_train_res(), 129, 16))  # from the demo's K_train to 128
MODELS = ('trained', 'finetuned')
README_MARKERS = common.readme_markers('transforms', 'studies.transforms')
DEFAULT = 'default'


@dataclasses.dataclass(frozen=True)
class Variant:
  """One test-time setting.

  Attributes:
    name: its name in the records and tables.
    group: the question it belongs to ('interpolation', 'crop', 'tta', 'parametric').
    fields: config fields set on the demo's config (the default transform otherwise).
    words: what it is, for the report.
    models: the networks evaluated.
    parametric: whether the sweep also fits and scores the parametric adaptation.
  """
  name: str
  group: str
  fields: Dict[str, object]
  words: str
  models: Tuple[str, ...] = MODELS
  parametric: bool = False


VARIANTS = (
    Variant(DEFAULT, 'default', {'sweep.parametric_target': 'train_transform'},
            "the demo's test transform: bilinear, the shorter side to K_test / 0.875, the "
            'central K_test crop; the parametric adaptation with its default target (the '
            'train transform at K_train, the paper\'s)', parametric=True),
    Variant('parametric_test_target', 'parametric',
            {'sweep.parametric_target': 'test_transform'},
            'the parametric adaptation with the central crop at K_train as its target',
            models=('trained',), parametric=True),
    Variant('bicubic', 'interpolation', {'data.test_interpolation': 'bicubic'},
            'bicubic resizing (antialiased as PIL), timm\'s usual choice'),
    Variant('lanczos', 'interpolation', {'data.test_interpolation': 'lanczos'},
            'Lanczos resizing (antialiased as PIL)'),
    Variant('crop_0.75', 'crop', {'data.crop_pct': 0.75},
            'crop fraction 0.75: the shorter side to K_test / 0.75'),
    Variant('crop_1.0', 'crop', {'data.crop_pct': 1.0},
            'crop fraction 1.0: the shorter side to K_test, the whole short side kept'),
    Variant('squash', 'crop', {'data.test_crop_mode': 'squash'},
            "timm's 'squash': both sides to K_test / 0.875 (the aspect ratio lost), central "
            'crop'),
    Variant('margin', 'crop', {'data.test_crop_mode': 'margin'},
            "flax's fixed margin: the central K / (K + 32) of the shorter side, resized to K"),
)
# Test-time augmentation (config.sweep.tta, fixres_jax/tta.py), run where the config has it.
TTA_VARIANTS = (
    Variant('tta_flip', 'tta', {'sweep.tta': 'flip'}, 'each image and its mirror'),
    Variant('tta_five_crop', 'tta', {'sweep.tta': 'five_crop'},
            "torchvision's FiveCrop of the resized image"),
    Variant('tta_multiscale', 'tta', {'sweep.tta': 'multiscale:0.8,1,1.2'},
            'the test transform at 0.8, 1 and 1.2 x K_test'),
    Variant('tta_pool', 'tta', {'sweep.tta': 'test_time_pool'},
            "timm's test-time pooling (the plain network at or below K_train)"),
)
GROUP_TITLES = {'interpolation': 'Interpolation', 'crop': 'Crop fraction and crop mode',
                'tta': 'Test-time augmentation'}


def define_flags() -> None:
  """Defined only when run as a script (tests import this module next to others' flags)."""
  flags.DEFINE_string('source', '/tmp/demo3', 'Finished demo workdirs SOURCE/seed_N (read only).')
  flags.DEFINE_string('root', '/tmp/fixres_transforms', 'The copies, one per seed, swept here.')
  flags.DEFINE_string('data_dir', '/tmp/tfds_idle', 'tfds data dir of the demo runs.')
  flags.DEFINE_string('out', 'docs', 'Where TRANSFORMS.md, transforms.json and .png go.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the demo workdirs.')
  flags.DEFINE_list('variants', [], 'Names of the variants to run (default: every one).')
  flags.DEFINE_enum('phase', 'all', ['run', 'report', 'all'],
                    "'run': the sweeps only; 'report': the documents from finished sweeps.")


def has_tta() -> bool:
  """Whether this checkout's config has test-time augmentation (config.sweep.tta)."""
  from fixres_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  return 'tta' in config_lib.get_base_config().sweep


def all_variants(with_tta: bool) -> Tuple[Variant, ...]:
  return VARIANTS + (TTA_VARIANTS if with_tta else ())


def variant_config(data_dir: str, seed: int, variant: Variant):
  """The demo's config of `seed`, its sweep at RESOLUTIONS on the validation split, untimed."""
  return common.demo_config(data_dir, seed, {
      'stages': ('sweep',), 'sweep.resolutions': RESOLUTIONS, 'sweep.latency_batch_size': 0,
      'sweep.parametric': variant.parametric, **variant.fields})


def record_path(root: epath.Path, seed: int, name: str) -> epath.Path:
  return root / f'seed_{seed}' / 'variants' / f'{name}.json'


def run_seed(source: epath.Path, root: epath.Path, seed: int, data_dir: str,
             variants) -> None:
  """Copies SOURCE/seed_N to ROOT/seed_N (once) and sweeps its networks per variant."""
  # Imported here: the report phase (and the tests) need no TensorFlow and no checkpoints.
  from fixres_jax import analysis  # pylint: disable=g-import-not-at-top
  from fixres_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from fixres_jax import parallel  # pylint: disable=g-import-not-at-top
  from fixres_jax import recipe  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from fixres_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  workdir = root / f'seed_{seed}'
  todo = [v for v in variants if not record_path(root, seed, v.name).exists()]
  if not todo:
    logging.info('seed %d: every variant swept before (%s).', seed, workdir)
    return
  if not workdir.exists():
    shutil.copytree(source / f'seed_{seed}', workdir,
                    ignore=shutil.ignore_patterns('tensorboard', 'compilation_cache'))
  base = variant_config(data_dir, seed, VARIANTS[0])
  dataset = pipeline.load_dataset(base)
  model = train.create_model(base, dataset.num_classes)
  networks = {'trained': recipe.load_trained(base, workdir, model),
              'finetuned': checkpoint.load_variables(workdir / 'checkpoints' / 'finetune')}
  mesh = parallel.create_mesh()
  for variant in todo:
    config = variant_config(data_dir, seed, variant)
    config_lib.validate(config, mesh.size)
    logging.info('seed %d: sweeping %s (%s).', seed, variant.name, variant.fields)
    result = analysis.sweep(config, dataset, mesh, {m: networks[m] for m in variant.models},
                            model, analysis.finetuned_test_res(config, workdir))
    path = record_path(root, seed, variant.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'variant': dataclasses.asdict(variant),
                                'records': result.records, 'meta': result.meta}, indent=1))


def collect_seed(root: epath.Path, seed: int, variants) -> dict:
  """A seed's finished variants: {'top1' and 'nll': {(variant, model, K_test): value},
  'passes': {variant: forward passes per image}, 'maps': {variant: {K_test: (a, b)}} of the
  parametric adaptation, 'finetune_test_res', 'train_res', 'num_images'}."""
  run = {'top1': {}, 'nll': {}, 'passes': {}, 'maps': {}, 'finetune_test_res': None,
         'train_res': None, 'num_images': None}
  for variant in variants:
    found = common.read_json(record_path(root, seed, variant.name))
    if found is None:
      continue
    for r in found['records']:
      key = (variant.name, r['model'], r['test_res'])
      run['top1'][key], run['nll'][key] = r['top1'], r.get('nll')
      run['num_images'] = r.get('num_images', run['num_images'])
      run['passes'][variant.name] = r.get('forward_passes', 1)
    meta = found['meta']
    if 'parametric' in meta:
      run['maps'][variant.name] = {int(k): v for k, v in meta['parametric']['maps'].items()}
    run['train_res'] = meta.get('train_res', run['train_res'])
    run['finetune_test_res'] = meta.get('finetune_test_res', {}).get(
        'test_res', run['finetune_test_res'])
  return run


def summarize(runs: Dict[int, dict], variants) -> dict:
  """Mean ± std over seeds of every (variant, model, K_test), and the paired differences:
  each variant minus the default transform (same network, same K_test), and the parametric
  adaptation of each target minus the trained network."""
  seeds = sorted(runs)
  present = {key for run in runs.values() for key in run['top1']}
  # Only the variants every seed has: a difference over fewer seeds would read as another's.
  names = [v.name for v in variants
           if all(any(key[0] == v.name for key in run['top1']) for run in runs.values())]
  values = lambda v, m, k: [runs[s]['top1'].get((v, m, k)) for s in seeds]
  curves = {v: {m: {k: claims.stats(values(v, m, k)) for k in RESOLUTIONS}
                for m in MODELS + ('parametric',) if (v, m, RESOLUTIONS[0]) in present}
            for v in names}
  # The transforms against the default one (the parametric target's variant re-scores the
  # same trained network under the same transform: no difference to show).
  group = {v.name: v.group for v in variants}
  compared = [v for v in names if group[v] in GROUP_TITLES]
  differences = {v: {m: {k: claims.compare(values(v, m, k), values(DEFAULT, m, k))
                         for k in RESOLUTIONS} for m in curves[v] if m in MODELS}
                 for v in compared}
  # A network's best over K_test, each seed's own: what a user who picks K_test gets.
  best = lambda v, m: [max((x for x in (runs[s]['top1'].get((v, m, k)) for k in RESOLUTIONS)
                            if x is not None), default=None) for s in seeds]
  best_differences = {v: {m: claims.compare(best(v, m), best(DEFAULT, m)) for m in curves[v]
                          if m in MODELS} for v in compared}
  targets = {'train_transform': DEFAULT, 'test_transform': 'parametric_test_target'}
  parametric = {target: {k: claims.compare(values(v, 'parametric', k),
                                           values(DEFAULT, 'trained', k))
                         for k in RESOLUTIONS}
                for target, v in targets.items() if v in names}
  if len(parametric) == 2:
    parametric['train_minus_test'] = {k: claims.compare(
        values(DEFAULT, 'parametric', k), values('parametric_test_target', 'parametric', k))
        for k in RESOLUTIONS}
  nlls = lambda v, m, k: [runs[s]['nll'].get((v, m, k)) for s in seeds]
  parametric_nll = {target: {k: claims.compare(nlls(v, 'parametric', k),
                                               nlls(DEFAULT, 'trained', k))
                             for k in RESOLUTIONS}
                    for target, v in targets.items() if v in names}
  # The maps' (a, b), mean over seeds: b near 0 makes the map a scaling of every logit.
  maps = {target: {k: np.mean([runs[s]['maps'][v][k] for s in seeds], axis=0).tolist()
                   for k in RESOLUTIONS}
          for target, v in targets.items() if all(v in runs[s]['maps'] for s in seeds)}
  passes = {v: runs[seeds[0]]['passes'].get(v, 1) for v in names}
  return {'seeds': seeds, 'resolutions': list(RESOLUTIONS), 'variants': names,
          'curves': curves, 'differences': differences, 'best': {
              v: {m: claims.stats(best(v, m)) for m in curves[v] if m in MODELS}
              for v in names},
          'best_differences': best_differences, 'parametric': parametric,
          'parametric_nll': parametric_nll, 'parametric_maps': maps,
          'forward_passes': passes, 'num_images': runs[seeds[0]]['num_images'],
          'train_res': runs[seeds[0]]['train_res'],
          'finetune_test_res': {s: runs[s]['finetune_test_res'] for s in seeds}}


def signed(c: dict) -> str:
  """'+1.23 ± 0.45' in points, '*' where resolved (beyond claims.SIGMAS spreads)."""
  if c.get('spread') is None:
    return 'n/a'
  mark = '*' if abs(c['margin']) > claims.SIGMAS * c['spread'] else ''
  return f"{100 * c['margin']:+.2f} ± {100 * c['spread']:.2f}{mark}"


def variant_words(variants) -> Dict[str, Variant]:
  return {v.name: v for v in variants}


def best_table(summary: dict, variants) -> str:
  """Per variant: each network's best top-1 over K_test and its paired difference with the
  default transform's best; TTA's forward passes per image."""
  rows = []
  for name in summary['variants']:
    variant = variant_words(variants)[name]
    if variant.group == 'parametric':
      continue
    cells = [name, variant.group, summary['forward_passes'][name]]
    for m in MODELS:
      cells.append(common.pct(summary['best'][name].get(m)))
      cells.append('' if name == DEFAULT else signed(summary['best_differences'][name][m]))
    rows.append(cells)
  return common.format_table(
      ['variant', 'group', 'passes / image', 'trained best (%)', 'Δ', 'finetuned best (%)',
       'Δ'], rows)


def difference_table(summary: dict, model: str) -> str:
  """Each variant minus the default transform at every K_test (points, paired)."""
  rows = [[name] + [signed(summary['differences'][name][model][k]) for k in RESOLUTIONS]
          for name in summary['variants'] if model in summary['differences'].get(name, {})]
  return common.format_table(['variant'] + [f'K_test {k}' for k in RESOLUTIONS], rows)


def curve_table(summary: dict, model: str) -> str:
  """Top-1 (%) mean ± std over seeds, variants (rows) by K_test (columns)."""
  rows = [[name] + [common.pct(summary['curves'][name][model][k]) for k in RESOLUTIONS]
          for name in [DEFAULT, *summary['differences']] if model in summary['curves'][name]]
  return common.format_table(['variant'] + [f'K_test {k}' for k in RESOLUTIONS], rows)


def parametric_table(summary: dict) -> str:
  """The trained network, its parametric adaptation under each target, and the differences."""
  curves, rows = summary['curves'], []
  rows.append(['trained'] + [common.pct(curves[DEFAULT]['trained'][k]) for k in RESOLUTIONS])
  labels = {'train_transform': "parametric, target: train transform at K_train (paper's)",
            'test_transform': 'parametric, target: central crop at K_train'}
  sources = {'train_transform': DEFAULT, 'test_transform': 'parametric_test_target'}
  for target, label in labels.items():
    if sources[target] in curves:
      rows.append([label] + [common.pct(curves[sources[target]]['parametric'][k])
                             for k in RESOLUTIONS])
  rows.append(['finetuned'] + [common.pct(curves[DEFAULT]['finetuned'][k])
                               for k in RESOLUTIONS])
  for target, label in labels.items():
    if target in summary['parametric']:
      rows.append([f'Δ {label} − trained'] + [signed(summary['parametric'][target][k])
                                               for k in RESOLUTIONS])
  if 'train_minus_test' in summary['parametric']:
    rows.append(['Δ train-transform target − central-crop target'] + [
        signed(summary['parametric']['train_minus_test'][k]) for k in RESOLUTIONS])
  return common.format_table(['model'] + [f'K_test {k}' for k in RESOLUTIONS], rows)


def map_table(summary: dict) -> str:
  """Each target's map (a, b), mean over seeds, and the parametric model's NLL minus the
  trained network's (paired)."""
  rows = []
  for target, cells in summary['parametric_maps'].items():
    rows.append([f'(a, b), target {target}'] + [f'({cells[k][0]:.3f}, {cells[k][1]:+.4f})'
                                                for k in RESOLUTIONS])
  for target, cells in summary['parametric_nll'].items():
    rows.append([f'Δ NLL, target {target}'] + [
        f"{cells[k]['margin']:+.4f} ± {cells[k]['spread']:.4f}"
        if cells[k].get('spread') is not None else 'n/a' for k in RESOLUTIONS])
  return common.format_table([''] + [f'K_test {k}' for k in RESOLUTIONS], rows)


def extreme(comparisons: Dict[int, dict]) -> Tuple[int, dict]:
  """The K_test whose difference is largest in size."""
  k = max(comparisons, key=lambda k: abs(comparisons[k].get('margin') or 0))
  return k, comparisons[k]


def finding_lines(summary: dict, variants) -> List[str]:
  """What the tables say, in words, from the numbers (never typed)."""
  lines = []
  groups = {}
  for name in summary['variants']:
    groups.setdefault(variant_words(variants)[name].group, []).append(name)
  for group, title in GROUP_TITLES.items():
    parts = []
    for name in groups.get(group, []):
      for m in MODELS:
        c = summary['best_differences'][name][m]
        k, at = extreme(summary['differences'][name][m])
        parts.append(f'{name} {m} {signed(c)} (largest at one K_test: {signed(at)} at {k})')
    if parts:
      lines.append(f'{title}, best top-1 over K_test against the default transform\'s (points): '
                   + '; '.join(parts) + '.')
  for target, words in (('train_transform', "the paper's target (the train transform at "
                         'K_train)'), ('test_transform', 'the central crop at K_train')):
    if target in summary['parametric']:
      k, at = extreme(summary['parametric'][target])
      lines.append(f'Parametric adaptation with {words}, minus the trained network: from '
                   f"{signed(summary['parametric'][target][RESOLUTIONS[0]])} at K_test "
                   f'{RESOLUTIONS[0]} to {signed(summary["parametric"][target][RESOLUTIONS[-1]])}'
                   f' at {RESOLUTIONS[-1]}; largest {signed(at)} at {k}.')
  k_train, maps = summary['train_res'], summary['parametric_maps'].get('train_transform', {})
  if k_train in maps:
    a, b = maps[k_train]
    lines.append(f"At K_train={k_train} the paper's target is the central crop's law mapped by "
                 f'a={a:.3f}, b={b:+.4f} (mean over seeds): the two targets differ by about that '
                 'factor, and maps with b near 0 scale the logits more than they reorder them.')
  return lines


def plot(summary: dict, variants):
  """Top-1 differences from the default transform against K_test (mean, bars ± std over
  seeds): a row per network, a column per group; and the parametric adaptation's."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  words = variant_words(variants)
  groups = [g for g in GROUP_TITLES if any(words[n].group == g for n in summary['differences'])]
  columns = len(groups) + 1
  fig = figure.Figure(figsize=(4.2 * columns, 7.0), dpi=110)
  axes = fig.subplots(2, columns, sharex=True, squeeze=False)
  ks = np.array(RESOLUTIONS)
  draw = lambda ax, cells, label, shift: ax.errorbar(
      ks + shift, [100 * cells[k]['margin'] for k in RESOLUTIONS],
      yerr=[100 * (cells[k].get('spread') or 0) for k in RESOLUTIONS], marker='o',
      markersize=3, capsize=2, label=label)
  for column, group in enumerate(groups):
    names = [n for n in summary['differences'] if words[n].group == group]
    for row, m in enumerate(MODELS):
      ax = axes[row][column]
      for i, name in enumerate(names):
        draw(ax, summary['differences'][name][m], name, 0.8 * (i - len(names) / 2))
      ax.axhline(0, color='black', linewidth=0.8)
      ax.set_title(f'{GROUP_TITLES[group]}: {m}', fontsize='medium')
      ax.grid(alpha=0.3)
      if row == 1:
        ax.set_xlabel('K_test (px)')
      if column == 0:
        ax.set_ylabel('Δ top-1 vs default transform (points)')
    axes[0][column].legend(fontsize='small')
  ax = axes[0][-1]
  for i, target in enumerate(t for t in ('train_transform', 'test_transform')
                             if t in summary['parametric']):
    draw(ax, summary['parametric'][target], f'target: {target}', 0.8 * i)
  ax.axhline(0, color='black', linewidth=0.8)
  ax.set_title('Parametric minus trained', fontsize='medium')
  ax.set_xlabel('K_test (px)')
  ax.xaxis.set_tick_params(labelbottom=True)  # the panel below it is hidden
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  axes[1][-1].set_visible(False)
  return fig


def margin(c: dict) -> str:
  """A paired difference's mean in points, '*' where resolved."""
  if c.get('spread') is None:
    return 'n/a'
  return f"{100 * c['margin']:+.2f}{'*' if abs(c['margin']) > claims.SIGMAS * c['spread'] else ''}"


def readme_block(summary: dict, variants) -> str:
  """README's two lines: each variant's best top-1 against the default transform's, and the
  parametric adaptation's two targets against the trained network."""
  seeds = ', '.join(map(str, summary['seeds']))
  cells = '; '.join(f"{name} {margin(c['trained'])} / {margin(c['finetuned'])}"
                    for name, c in summary['best_differences'].items())
  ks = '/'.join(map(str, RESOLUTIONS))
  targets = {'train_transform': "the paper's target (the train transform at K_train)",
             'test_transform': 'the central crop at K_train'}
  parametric = '; '.join(
      f"{words} {'/'.join(margin(summary['parametric'][t][k]) for k in RESOLUTIONS)}"
      for t, words in targets.items() if t in summary['parametric'])
  return (f'Best top-1 over K_test under each test transform minus under the default one, '
          f'trained / fine-tuned network (points, paired over seeds {seeds}; * beyond '
          f'{claims.SIGMAS:g} std of the differences): {cells}.\n'
          f'Parametric adaptation minus the trained network at K_test {ks}: {parametric}. '
          'Tables and spreads: [docs/TRANSFORMS.md](docs/TRANSFORMS.md).')


def render(summary: dict, variants, command: str, machine: str) -> str:
  """docs/TRANSFORMS.md."""
  words = variant_words(variants)
  k_tests = ', '.join(f'{k} (seed {s})' for s, k in summary['finetune_test_res'].items())
  lines = [
      '# What the test transform does to the demo\'s networks', '',
      'Generated by `studies/transforms.py`; do not edit by hand. Written by', '',
      f'    {command}', '',
      'which evaluated, for each seed, the trained and the fine-tuned network of a demo '
      f"workdir (configs/demo.py, K_train={summary['train_res']}, fine-tuned at its own K_test: "
      f"{k_tests}) on the {summary['num_images']:,} validation images at K_test "
      f"{', '.join(map(str, RESOLUTIONS))}, once per variant of the test transform; nothing "
      'was trained. The sweeps are those of `--phase=run` with the same --root (the demo '
      f'workdirs of --source, the dataset of --data_dir). Machine: {machine}.', '',
      *[f'- `{n}`: {words[n].words}' for n in summary['variants']], '',
      scope_note(summary, variants), '',
      f"A ± is the standard deviation over the {len(summary['seeds'])} seeds; a Δ is paired "
      '(the same network of the same seed under the variant and under the default transform), '
      'its ± the standard deviation of the per-seed differences, and * marks a Δ beyond '
      f'{claims.SIGMAS:g} of them. The fine-tuned network was fine-tuned under the default '
      'transform: another transform at test time is also a transform it was not fine-tuned '
      'for. A network\'s best over K_test is picked on the validation images themselves: an '
      'optimistic number, used here only to compare transforms.', '',
      '## What was found', '', *[f'- {line}' for line in finding_lines(summary, variants)], '',
      '## Best top-1 over K_test (each seed\'s own best), against the default transform', '',
      best_table(summary, variants), '',
      '## The parametric adaptation\'s target', '',
      'The parametric adaptation (fixres_jax/parametric.py) maps the trained network\'s pooled '
      'features at K_test, fitted on held-out training images through the test transform, '
      'onto a target law. The paper\'s target is the features of the training augmentation at '
      'K_train (RandomResizedCrop and flip; `sweep.parametric_target=\'train_transform\'`, '
      'the default); the former target was the central crop at K_train '
      '(`\'test_transform\'`), where the map at K_train is the identity. Top-1 (%), mean ± std '
      'over seeds, and paired differences (points):', '',
      parametric_table(summary), '',
      'The maps f -> a f + b (the nonzero pooled features; zeros stay zero), and what they '
      'do to the cross-entropy (NLL, paired difference with the trained network): with b '
      'near 0 a map multiplies every logit\'s feature part by a, a change of confidence '
      'more than of ranking.', '',
      map_table(summary), '',
      '## Trained network: each variant minus the default transform (top-1 points)', '',
      difference_table(summary, 'trained'), '',
      '## Fine-tuned network: each variant minus the default transform (top-1 points)', '',
      difference_table(summary, 'finetuned'), '',
      '## Trained network: top-1 (%), mean ± std over seeds', '',
      curve_table(summary, 'trained'), '',
      '## Fine-tuned network: top-1 (%), mean ± std over seeds', '',
      curve_table(summary, 'finetuned'), '',
      '![top-1 differences against K_test](transforms.png)', '']
  return '\n'.join(lines)


def scope_note(summary: dict, variants) -> str:
  """What the test-time augmentation rows are, and which variants were left out."""
  reported = set(summary['variants'])
  note = ('Test-time augmentation (`config.sweep.tta`, fixres_jax/tta.py) averages the logits '
          'of its views; its cost is the forward passes per image in the first table.'
          if any(v.group == 'tta' and v.name in reported for v in variants) else
          'No test-time augmentation was run for every seed.')
  missing = [v.name for v in variants if v.name not in reported]
  if missing:
    note += (f" Not run for every seed, so not reported: {', '.join(missing)} (the variants "
             'the run phase had not reached).')
  return note


def write_report(root: epath.Path, seeds, out: epath.Path, command: str, readme=None) -> dict:
  """OUT/TRANSFORMS.md, transforms.json, transforms.png (and README's block) from the sweeps."""
  variants = all_variants(with_tta=True)
  runs = {seed: collect_seed(root, seed, variants) for seed in seeds}
  runs = {seed: run for seed, run in runs.items()
          if any(key[0] == DEFAULT for key in run['top1'])}
  if len(runs) < 2:
    raise ValueError(f'{len(runs)} swept seeds under {root}: run --phase=run first.')
  summary = summarize(runs, variants)
  machine = common.describe_machine(len(os.sched_getaffinity(0)))
  out.mkdir(parents=True, exist_ok=True)
  (out / 'transforms.json').write_text(json.dumps(
      {'summary': summary, 'command': command, 'machine': machine}, indent=1))
  common.save_figure(plot(summary, variants), out / 'transforms.png')
  (out / 'TRANSFORMS.md').write_text(render(summary, variants, command, machine))
  if readme:
    common.write_readme_block(readme, README_MARKERS, readme_block(summary, variants))
  return summary


def readme_block_from_json(result: dict) -> str:
  """readme_block of a written transforms.json (tests/test_readme_numbers.py compares README
  with it); JSON turned the K_test keys into strings."""
  return readme_block(with_int_keys(result['summary']), all_variants(with_tta=True))


def with_int_keys(tree):
  """JSON's string keys that are integers back to int."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): with_int_keys(v)
            for k, v in tree.items()}
  if isinstance(tree, list):
    return [with_int_keys(v) for v in tree]
  return tree


def main(argv):
  del argv
  from fixres_jax import devices  # pylint: disable=g-import-not-at-top
  devices.provision_cpu_threads()  # before jax's backend exists: threads for N CPU devices
  root, seeds = epath.Path(FLAGS.root), [int(s) for s in FLAGS.seeds]
  if FLAGS.phase in ('run', 'all'):
    from fixres_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    variants = [v for v in all_variants(has_tta())
                if not FLAGS.variants or v.name in FLAGS.variants]
    root.mkdir(parents=True, exist_ok=True)
    workdir_lib.enable_compilation_cache(root)  # every variant and seed compiles the same step
    for seed in seeds:
      run_seed(epath.Path(FLAGS.source), root, seed, FLAGS.data_dir, variants)
  if FLAGS.phase in ('report', 'all'):
    write_report(root, seeds, epath.Path(FLAGS.out), common.format_command('studies.transforms'),
                 readme=common.REPO / 'README.md')


if __name__ == '__main__':
  define_flags()
  app.run(main)
