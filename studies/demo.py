"""Measures the demo (configs/demo.py) over seeds and generates docs/DEMO.md and docs/demo.json.

  python -m studies.demo --out=docs --root=/tmp/fixres_demo_seeds \
      --data_dir=/tmp/tfds_demo --seeds=0,1,2,3,4

Runs README's demo command once per seed, each in its own process and workdir (ROOT/seed_N),
exactly as a user would (the first one with an empty --data_dir, so it includes generating the
dataset), timing the wall and CPU time of each. Then reads every run's sweep.json and
auto_test_res.json and writes OUT/DEMO.md: the K_test each seed selected on the held-out
training slice, the demo's claims with their margins and per-seed spread, the validation sweep
as mean ± std over seeds, and the times. With --variants, each of the demo's choices undone
(VARIANTS) runs on the same seeds beside it, and DEMO.md sets them side by side. A re-run skips
runs that have finished.
"""

import collections
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from typing import List, Optional

from absl import app
from absl import flags
from absl import logging
from etils import epath

from studies import claims
from studies import common
from studies import plateau
from studies import reproduce

FLAGS = flags.FLAGS
CONFIG = 'configs/demo.py'
TIME_FILE = 'demo_time.json'
NUM_CLASSES = 10  # fixres_synthetic's


def define_flags() -> None:
  """Defined only when run as a script (tests import this module next to others' flags)."""
  flags.DEFINE_string('out', 'docs', 'Where DEMO.md and demo.json go.')
  flags.DEFINE_string('root', '/tmp/fixres_demo_seeds', 'One demo workdir per seed under here.')
  flags.DEFINE_string('data_dir', '/tmp/tfds_demo', 'tfds data dir; start with an empty one to '
                      'time the dataset generation too.')
  flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'One full demo run per seed.')
  flags.DEFINE_list('overrides', [], 'Extra --config.X=V flags for every run (e.g. for tests).')
  flags.DEFINE_list('perturbed_seeds', ['0'], 'Also run these seeds on two XLA:CPU devices '
                    '(another reduction order, as another machine has); none: [].')
  flags.DEFINE_string('plateau_root', '', 'studies.plateau records: DEMO.md explains the chance '
                      'plateau from them ("" = no such section).')
  flags.DEFINE_list('other_machines', [], "demo.json files of earlier reports (e.g. a copy of "
                    "docs/demo.json): their seeds on other machines are set beside this "
                    "report's, and carried into its demo.json.")
  flags.DEFINE_list('variants', [], 'Changes of the demo (VARIANTS) run on the same seeds '
                    'beside it: what each of its choices buys.')
  flags.DEFINE_enum('phase', 'all', ['run', 'report', 'all'],
                    "'run': the demo runs only; 'report': DEMO.md from finished runs.")


def last_map_side(test_res: int, output_stride: int = 32) -> int:
  """The side of the ResNet's last feature map: each stride-2 layer with SAME padding (the
  stem's conv and max-pool, the first block of the stages up to the output stride) halves it,
  rounding up."""
  for _ in range(round(math.log2(output_stride))):
    test_res = -(-test_res // 2)
  return test_res


def map_sides_line(run: dict) -> str:
  """The last feature map's side at each K_test, and what the held-out table holds."""
  stride = run['output_stride']
  side = lambda k: f'{last_map_side(k, stride)}x{last_map_side(k, stride)}'
  sides = ', '.join(f"{r['test_res']}: {side(r['test_res'])}" for r in run['heldout'])
  return (f'The network pools its last feature map, whose side is K / {stride} rounded up at '
          f'every stride: {sides} (at K_train = {run["train_res"]}: {side(run["train_res"])}).')


# The network the held-out records score, by the runs' finetune.auto_model.
SCORED_NETWORK = {'trained': 'The trained network',
                  'adapted': 'The network fine-tuned at each K_test (its adapter)'}


def heldout_caption(model: str, note: str = '') -> str:
  return (f'{SCORED_NETWORK[model]} on the held-out slice{note}, per candidate K_test: its '
          'cross-entropy at the best temperature (the temperature T dividing the logits), its '
          'plain cross-entropy and its top-1:')


def heldout_table(runs: list) -> str:
  """The scored network's held-out calibrated loss, loss and top-1 at every candidate
  K_test, per seed."""
  resolutions = [r['test_res'] for r in runs[0]['heldout']]
  cell = lambda r: (f"{r['calibrated_loss']:.3f} (T {r['temperature']:.2f}), "
                    f"{r['loss']:.3f}, {100 * r['top1']:.1f}")
  rows = [[run['seed'], *(cell(r) for r in run['heldout'])] for run in runs]
  return common.format_table(['seed', *(f'K {k}' for k in resolutions)], rows)


TARGET_MINUTES = 5  # README's command from an empty data dir, on 2 idle cores

# Why the demo's metric, where DEMO.md says how K_test is chosen.
CALIBRATION_WHY = (' The temperature is the one factor dividing the logits that minimises '
                   'the cross-entropy on those images: so their scale, which moves with K_test '
                   'and which fine-tuning corrects, does not decide.')


def demo_command(workdir: epath.Path, seed: int, data_dir: str, overrides=()) -> List[str]:
  """README's demo command, with the seed (and the data dir) set."""
  return [sys.executable, '-m', 'fixres_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
          f'--config.seed={seed}', f'--config.data.data_dir={data_dir}', *overrides]


# What mimics another machine: XLA:CPU split into two devices shards every batch, so every
# reduction (BatchNorm statistics, gradients) runs in another order.
PERTURBATION = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
PERTURBED = 'perturbed'

# The demo's choices, each undone on its own: run on the same seeds beside the demo (ROOT/
# seed_N_NAME), they show what each choice buys. A variant that changes only the fine-tuning
# starts from a copy of the seed's training.
TRAINED_CHOICE = 'trained_choice'
VARIANTS = {
    'output_stride_32': {'model.output_stride': 32},
    TRAINED_CHOICE: {'finetune.auto_model': 'trained'},
    'uncalibrated_loss': {'finetune.auto_metric': 'loss'},
    'sgd_finetune': {'finetune.mode': 'sgd'},
    'finetune_lr_0.08': {'finetune.base_lr': 0.08},
    # Half as long again: what a longer training does to the spread and to the gain.
    'epochs_12': {'train.num_epochs': 12},
}


def variant_flags(name: str) -> List[str]:
  return [f'--config.{field}={value}' for field, value in VARIANTS[name].items()]


def run_variant(root: epath.Path, seed: int, name: str, data_dir: str, overrides=()) -> None:
  """VARIANTS[name] on `seed` in ROOT/seed_N_NAME, from a copy of the seed's training when
  the variant leaves the training as it is."""
  from fixres_jax import rerun  # pylint: disable=g-import-not-at-top
  workdir = root / f'seed_{seed}_{name}'
  trains_alike = all(rerun.field_stage(field) != 'train' for field in VARIANTS[name])
  if trains_alike and not (workdir / TIME_FILE).exists():
    reproduce.copy_demo_training(root / f'seed_{seed}', workdir)
  run_seed(root, seed, data_dir, [*overrides, *variant_flags(name)], name=name)


def run_seed(root: epath.Path, seed: int, data_dir: str, overrides=(), env=None,
             name: str = '') -> dict:
  """One demo run in ROOT/seed_N (ROOT/seed_N_NAME with another `env`; skipped when
  finished); returns its times."""
  workdir = root / (f'seed_{seed}_{name}' if name else f'seed_{seed}')
  done = common.read_json(workdir / TIME_FILE)
  if done:
    return done
  workdir.mkdir(parents=True, exist_ok=True)
  load_before = os.getloadavg()
  first_use = not epath.Path(data_dir).exists() or not any(epath.Path(data_dir).iterdir())
  command = demo_command(workdir, seed, data_dir, overrides)
  logging.info('Seed %d: %s', seed, ' '.join(command))
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  with (workdir / 'demo.log').open('w') as log:
    subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                   cwd=common.REPO, env={**os.environ, **(env or {})})
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  record = {'seed': seed, 'wall_seconds': time.perf_counter() - start,
            'cpu_seconds': (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            'generated_dataset': first_use,
            'load_average_1min': [load_before[0], os.getloadavg()[0]],
            'load_average_5min': [load_before[1], os.getloadavg()[1]],
            'command': ' '.join(command[1:])}
  (workdir / TIME_FILE).write_text(json.dumps(record, indent=2))
  return record


def run_all(root: epath.Path, seeds, data_dir: str, overrides=(), perturbed_seeds=(),
            variants=()) -> None:
  for seed in seeds:  # one after the other: each run uses every core
    record = run_seed(root, seed, data_dir, overrides)
    logging.info('Seed %d done: %.0f s wall, %.0f s CPU.', seed, record['wall_seconds'],
                 record['cpu_seconds'])
  for seed in perturbed_seeds:
    run_seed(root, seed, data_dir, overrides, PERTURBATION, PERTURBED)
  for name in variants:
    for seed in seeds:
      run_variant(root, seed, name, data_dir, overrides)


# ---------------------------------------------------------------------------------------------
# Report


def collect_seed(root: epath.Path, seed: int, name: str = ''):
  """One seed's numbers from its workdir; None until its run has finished."""
  workdir = root / (f'seed_{seed}_{name}' if name else f'seed_{seed}')
  timing = common.read_json(workdir / TIME_FILE)
  records = common.read_json(workdir / 'sweep.json')
  if not timing or not records:
    return None
  choice = common.read_json(workdir / 'auto_test_res.json')
  meta = common.read_json(workdir / 'sweep_meta.json')
  config = common.read_json(workdir / 'config.json')
  k_train, k_test = config['train']['image_size'], choice['test_res']
  trained = [r for r in records if r['model'] == 'trained']
  best = max(trained, key=lambda r: r['top1'])
  return {
      'seed': seed, 'train_res': k_train, 'selected_test_res': k_test,
      'output_stride': config['model'].get('output_stride', 32),
      'selection_split': choice['split'], 'heldout': choice['records'],
      'selection_metric': choice.get('metric', 'top1'),
      'selection_model': choice.get('model', 'trained'),
      'analytic_test_res': meta['analytic_test_res']['test_res'],
      'trained_at_train_res': claims.top1_at(records, 'trained', k_train),
      'trained_at_selected': claims.top1_at(records, 'trained', k_test),
      'finetuned_at_selected': claims.top1_at(records, 'finetuned', k_test),
      'trained_best_validation': {'test_res': best['test_res'], 'top1': best['top1']},
      'sweep': [{k: r[k] for k in ('model', 'test_res', 'top1')} for r in records],
      'eval_split': meta['eval_split'], 'generation_seconds': generation_seconds(workdir),
      'loss_after_tenth': loss_after_tenth(workdir), **timing}


def loss_after_tenth(workdir: epath.Path) -> dict:
  """The training loss logged first at or after 10% of the steps (the mean over the steps
  since the previous log line), and its step."""
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['stage'] == 'train' and 'loss' in r]
  total = max(r['step'] for r in train)
  first = min((r for r in train if r['step'] >= total / 10), key=lambda r: r['step'])
  before = max((r['step'] for r in train if r['step'] < first['step']), default=0)
  return {'step': first['step'], 'total_steps': total, 'loss': first['loss'],
          'window_start': before + 1}


def generation_seconds(workdir: epath.Path):
  """The dataset generation time the run logged (first use of the data dir only)."""
  for line in (workdir / 'demo.log').read_bytes().decode(errors='replace').splitlines():
    if 'Generated fixres_synthetic' in line:
      return float(line.rsplit(' in ', 1)[1].split(' s')[0])
  return None


def hits_per_image(workdir: epath.Path, seed: int, test_res: int, data_dir: str,
                   dataset: str = '') -> dict:
  """Per validation image, whether the trained and the fine-tuned network of a demo workdir
  (checkpoints/train, checkpoints/finetune) classify it right at test_res.

  Args:
    dataset: another tfds dataset than the demo's (e.g. PRECISE_DATASET), its validation split.

  Returns:
    {'train': bool array, 'finetune': bool array}, in the split's order.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fixres_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = common.load_config_file(common.REPO / CONFIG)
  config.seed, config.data.data_dir = seed, data_dir
  config.data.name = dataset or config.data.name
  data = pipeline.load_dataset(config)
  model = train.create_model(config, data.num_classes)
  predict = jax.jit(lambda variables, images: model.apply(variables, images).argmax(-1))
  hits = {}
  for stage in ('train', 'finetune'):
    variables = checkpoint.load_variables(workdir / 'checkpoints' / stage)
    hits[stage] = np.concatenate([
        np.asarray(predict(variables, b['image']) == b['label'])[np.asarray(b['mask']) > 0]
        for b in pipeline.config_eval_batches(config, data, config.data.eval_split, test_res)])
  return hits


def paired_difference(first, second) -> dict:
  """Top-1 of `first` minus top-1 of `second`, two networks' hits on the same images.

  Returns:
    {'difference', 'standard_error' (paired: of the per-image differences), in points;
    'num_images', 'only_first', 'only_second' (images only that network classifies right)}.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  difference = 100 * (first.astype(float) - second)
  return {'difference': float(difference.mean()),
          'standard_error': float(difference.std(ddof=1) / np.sqrt(difference.size)),
          'num_images': int(difference.size),
          'only_first': int(np.sum(first & ~second)),
          'only_second': int(np.sum(second & ~first))}


def paired_gain(workdir: epath.Path, seed: int, test_res: int, data_dir: str) -> dict:
  """Fine-tuned minus trained top-1 at test_res on the validation split, image by image:
  paired_difference's fields, as 'gain', 'only_finetuned' and 'only_trained'."""
  hits = hits_per_image(workdir, seed, test_res, data_dir)
  found = paired_difference(hits['finetune'], hits['train'])
  return {'gain': found['difference'], 'standard_error': found['standard_error'],
          'num_images': found['num_images'], 'only_finetuned': found['only_first'],
          'only_trained': found['only_second']}


# The same kind of scenes, five times as many: the embedded dataset's 'reproduce' config
# (the demo's training images; its first 2,000 validation images are the demo's). On 2,000
# images a one-point move of one network is only 1.5-2 paired standard errors.
PRECISE_DATASET = 'fixres_synthetic/reproduce'
PERTURBED_NETWORKS = {'train': 'trained_at_selected', 'finetune': 'finetuned_at_selected'}


def precise_moves(root: epath.Path, base: dict, perturbed: dict, data_dir: str) -> dict:
  """How far the perturbed run's networks moved from the base run's, each at its run's chosen
  K_test, image by image on PRECISE_DATASET's validation split: {network field:
  paired_difference (perturbed minus base) and the base network's 'base_top1' there, in %}."""
  hits = [hits_per_image(root / f"seed_{run['seed']}{suffix}", run['seed'],
                         run['selected_test_res'], data_dir, PRECISE_DATASET)
          for run, suffix in ((perturbed, f'_{PERTURBED}'), (base, ''))]
  return {field: {**paired_difference(hits[0][stage], hits[1][stage]),
                  'base_top1': 100 * float(hits[1][stage].mean())}
          for stage, field in PERTURBED_NETWORKS.items()}


def trained_choice_runs(runs: List[dict], variants: dict) -> List[dict]:
  """Per seed, the run whose choice scored the trained network: the demo's own, or, when it
  scores adapted networks, the seed's TRAINED_CHOICE variant (the same training); only the
  seeds that have one."""
  if runs[0]['selection_model'] == 'trained':
    return runs
  by_seed = {r['seed']: r for r in variants.get(TRAINED_CHOICE, [])}
  return [by_seed[r['seed']] for r in runs if r['seed'] in by_seed]


def summarize(runs: List[dict], trained_choices: List[dict]) -> dict:
  """The demo's claims over the seeds, and the sweep as mean ± std. `trained_choices`:
  trained_choice_runs (claim 1's held-out part: None when there are none)."""
  field = lambda name: [r[name] for r in runs]
  demo_claims = {
      'selected_above_train_res': all(r['selected_test_res'] > r['train_res']
                                      for r in trained_choices) if trained_choices else None,
      'selected_vs_train_res': claims.compare(field('trained_at_selected'),
                                              field('trained_at_train_res')),
      'finetuned_vs_trained': claims.compare(field('finetuned_at_selected'),
                                             field('trained_at_selected')),
      'finetuned_vs_best_trained': claims.compare(
          field('finetuned_at_selected'), [r['trained_best_validation']['top1'] for r in runs]),
  }
  resolutions = sorted({row['test_res'] for r in runs for row in r['sweep']})
  models = list(dict.fromkeys(row['model'] for r in runs for row in r['sweep']))
  sweep = {m: {k: claims.stats([claims.top1_at(r['sweep'], m, k) for r in runs])
               for k in resolutions} for m in models}
  return {'claims': demo_claims, 'sweep': sweep, 'resolutions': resolutions, 'models': models,
          'stats': {name: claims.stats(field(name)) for name in (
              'trained_at_train_res', 'trained_at_selected', 'finetuned_at_selected',
              'wall_seconds', 'cpu_seconds')}}


def fixres_gains(runs: List[dict]) -> List[float]:
  """Fine-tuned minus trained top-1 at each run's chosen K_test, in points."""
  return [100 * (r['finetuned_at_selected'] - r['trained_at_selected']) for r in runs]


def instrument_lines(runs: List[dict], perturbed: List[dict]) -> List[str]:
  """Whether the demo is a measuring instrument: each check with its per-seed numbers."""
  threshold = 0.9 * math.log(NUM_CLASSES)
  losses = [r['loss_after_tenth'] for r in runs]
  late = [r['seed'] for r, l in zip(runs, losses) if l['loss'] > threshold]
  chosen = [r['selected_test_res'] for r in runs]
  mode, agree = collections.Counter(chosen).most_common(1)[0]
  gains = fixres_gains(runs)
  spread = {name: claims.stats([100 * r[name] for r in runs])['std']
            for name in ('trained_at_selected', 'finetuned_at_selected')}
  lines = [
      f"- **Off the chance plateau by 10% of the steps**: the training loss logged first at "
      f"or after 10% of the steps (at step {losses[0]['step']} of {losses[0]['total_steps']}: "
      f"the mean over steps {losses[0]['window_start']}-{losses[0]['step']}) per seed: "
      f"{', '.join('%.3f' % l['loss'] for l in losses)} against 0.9 ln {NUM_CLASSES} = "
      f"{threshold:.3f}: {'every seed below' if not late else f'above on seeds {late}'}.",
      f"- **Spread**: std over seeds of top-1 at the chosen K_test: trained "
      f"{spread['trained_at_selected']:.2f}, fine-tuned {spread['finetuned_at_selected']:.2f} "
      'points (target: at most 1.5).',
      f"- **The same K_test**: {agree} of {len(runs)} seeds chose {mode} ({chosen}; target: "
      'at least 4 of 5).',
      f"- **Something for FixRes to fix**: fine-tuning at the chosen K_test adds "
      f"{', '.join('%+.2f' % g for g in gains)} points per seed (target: at least +1 on "
      f"every seed): {'holds' if min(gains) >= 1 else 'does not hold'}.",
  ]
  if all('paired' in r for r in runs):
    lines.append(paired_precision_line(runs, gains))
  lines += perturbation_lines(runs, perturbed)
  return lines


def perturbation_lines(runs: List[dict], perturbed: List[dict]) -> List[str]:
  """How far top-1 at the chosen K_test moved when the same seeds ran on two devices: on the
  validation split, and image by image on PRECISE_DATASET where the report measured it
  (run['precise'], precise_moves); the verdict is the more precise measurement's."""
  by_seed = {r['seed']: r for r in runs}
  pairs = [(by_seed[p['seed']], p) for p in perturbed if p['seed'] in by_seed]
  if not pairs:
    return []
  names = tuple(PERTURBED_NETWORKS.values())
  moves = {name: [100 * (p[name] - base[name]) for base, p in pairs] for name in names}
  listed = lambda values: ', '.join('%+.2f' % v for v in values)
  seeds = [base['seed'] for base, _ in pairs]
  line = (
      f"- **Robust to the machine**: seed{'s' if len(seeds) > 1 else ''} "
      f"{', '.join(map(str, seeds))} again on two XLA:CPU devices (every batch sharded, so "
      'every reduction runs in another order): K_test chosen '
      f"{', '.join(str(p['selected_test_res']) for _, p in pairs)} (was "
      f"{', '.join(str(base['selected_test_res']) for base, _ in pairs)}); top-1 at the chosen "
      f"K_test moved by {listed(moves['trained_at_selected'])} (trained) and "
      f"{listed(moves['finetuned_at_selected'])} (fine-tuned) points on "
      f"`{runs[0]['eval_split']}`")
  if not all('precise' in p for _, p in pairs):
    spread = claims.stats([r['trained_at_selected'] for r in runs])['std']
    seed_to_seed = 100 * math.sqrt(2) * spread
    return [line + f' (target: at most 1): {move_verdict(moves)}. Two different seeds differ '
            f'by about {seed_to_seed:.2f} (trained) points here (the root mean square, sqrt(2) '
            'x the std over seeds).']
  precise = {name: [p['precise'][name] for _, p in pairs] for name in names}
  with_errors = lambda found: ', '.join('%+.2f ± %.2f' % (f['difference'], f['standard_error'])
                                        for f in found)
  rms = lambda values: math.sqrt(sum(v * v for v in values) / len(values))
  # Two seeds' networks on the same images: sqrt(2) x the std over seeds is the root mean
  # square of their differences, the perturbation's yardstick.
  seeds_apart = {n: math.sqrt(2) * claims.stats([f['base_top1'] for f in found])['std']
                 for n, found in precise.items()}
  moved = {n: rms([f['difference'] for f in found]) for n, found in precise.items()}
  line += (
      f". Image by image on {precise[names[0]][0]['num_images']} validation images of the "
      f"same kind (`{PRECISE_DATASET}`, the demo's training images; its first 2,000 "
      f"validation images are the demo's): {with_errors(precise['trained_at_selected'])} "
      f"(trained) and {with_errors(precise['finetuned_at_selected'])} (fine-tuned) points (± "
      'the paired standard error; target: at most 1): '
      f"{move_verdict({n: [f['difference'] for f in found] for n, found in precise.items()})}")
  if len(pairs) > 1:
    line += (f". Their root mean square is {moved['trained_at_selected']:.2f} (trained) and "
             f"{moved['finetuned_at_selected']:.2f} (fine-tuned); two of these seeds differ "
             f"there by {seeds_apart['trained_at_selected']:.2f} and "
             f"{seeds_apart['finetuned_at_selected']:.2f} (the root mean square, sqrt(2) x the "
             'std over seeds)')
  return [line + '.']


def move_verdict(moves: dict) -> str:
  """Whether every perturbed seed's top-1 moved by at most a point, network by network
  ({name: [move per seed]})."""
  names = {'trained_at_selected': 'trained', 'finetuned_at_selected': 'fine-tuned'}
  # At the two decimals shown: -1.00 is within.
  small = {k: all(abs(round(m, 2)) <= 1 for m in found) for k, found in moves.items()}
  within = [names[k] for k, ok in small.items() if ok]
  beyond = [names[k] for k, ok in small.items() if not ok]
  if not beyond:
    return 'holds'
  if not within:
    return 'does not hold'
  return (f"holds for the {' and '.join(within)} network, not for the {' and '.join(beyond)} "
          'one')


# What a report keeps of each run measured on another machine.
COMPARED_FIELDS = ('seed', 'selected_test_res', 'trained_at_train_res', 'trained_at_selected',
                   'finetuned_at_selected')


def paired_precision_line(runs: List[dict], gains: List[float]) -> str:
  """How much of the gains' spread over seeds the validation images alone explain.

  Each seed's paired standard error is what drawing other validation images would move its
  gain by; their mean square, against the gains' variance over seeds, is the images' share.
  """
  errors = [r['paired']['standard_error'] for r in runs]
  gain_stats = claims.stats(gains)
  images_std = math.sqrt(sum(e * e for e in errors) / len(errors))
  share = min(1.0, images_std ** 2 / gain_stats['std'] ** 2) if gain_stats['std'] else 1.0
  if share >= 0.5:
    verdict = ('most of it is which images the validation split holds. A gain of +1 on every '
               f'seed would need a true gain of about +{1 + 2 * max(errors):.1f}, or a larger '
               'validation split')
  else:
    verdict = ("most of it is the seeds' networks themselves: a larger validation split would "
               'measure each gain more precisely, not make them alike')
  return (
      f"- **How precisely one seed measures that gain**: image by image on the "
      f"{runs[0]['paired']['num_images']} validation images, each seed's gain has a paired "
      f"standard error of {', '.join('%.2f' % e for e in errors)} points (images only the "
      f"fine-tuned network gets right / only the trained one: "
      f"{', '.join('%d/%d' % (r['paired']['only_finetuned'], r['paired']['only_trained']) for r in runs)}"
      f"). Drawing other validation images would spread the gains by about {images_std:.2f} "
      f"(the root mean square of those errors); they spread by {gain_stats['std']:.2f} over "
      f"seeds, so the images make {100 * share:.0f} % of their variance and {verdict}. The mean "
      f"gain is {gain_stats['mean']:+.2f} ± {gain_stats['std'] / math.sqrt(len(gains)):.2f} "
      '(standard error over seeds).')


def other_machine_runs(paths, machine: str) -> List[dict]:
  """The runs of earlier reports' demo.json (and those they carried) made on machines other
  than `machine`: [{'machine', 'command', 'runs'}], one entry per machine."""
  found = {}
  for path in paths:
    result = json.loads(epath.Path(path).read_text())
    entries = [{'machine': result['machine'], 'command': result['command'],
                'runs': [{k: r[k] for k in COMPARED_FIELDS} for r in result['runs']]}]
    for entry in entries + result.get('other_machines', []):
      if entry['machine'] != machine:
        found.setdefault(entry['machine'], entry)
  return list(found.values())


def compare_machines(runs: List[dict], other: dict) -> Optional[dict]:
  """This report's seeds against the same seeds on another machine; None if none is shared."""
  here = {r['seed']: r for r in runs}
  pairs = [(r, here[r['seed']]) for r in other['runs'] if r['seed'] in here]
  if not pairs:
    return None
  moves = {name: [100 * (now[name] - then[name]) for then, now in pairs]
           for name in COMPARED_FIELDS[2:]}
  means = [{name: 100 * claims.stats([pair[side][name] for pair in pairs])['mean']
            for name in COMPARED_FIELDS[2:]} for side in (0, 1)]  # there, here
  return {'pairs': pairs, 'moves': moves, 'means': means,
          'largest': {name: max(abs(m) for m in found) for name, found in moves.items()},
          'same_test_res': sum(then['selected_test_res'] == now['selected_test_res']
                               for then, now in pairs)}


def other_machine_lines(runs: List[dict], others: List[dict]) -> List[str]:
  """The same seeds on each other machine, side by side with this report's."""
  lines = []
  for other in others:
    compared = compare_machines(runs, other)
    if not compared:
      continue
    pairs, moves, largest = compared['pairs'], compared['moves'], compared['largest']
    there, here = compared['means']
    rows = [[now['seed'], f"{then['selected_test_res']} / {now['selected_test_res']}"] +
            [f'{100 * then[name]:.2f} / {100 * now[name]:.2f} ({moves[name][i]:+.2f})'
             for name in COMPARED_FIELDS[2:]] for i, (then, now) in enumerate(pairs)]
    lines += [
        f"Measured by `{other['command']}` on {other['machine']}, and by this report's runs "
        'here. Each cell: there / here (here minus there).', '',
        common.format_table(['seed', 'K_test chosen', 'trained at K_train', 'trained at chosen',
                             'fine-tuned at chosen'], rows), '',
        f"The same K_test on {compared['same_test_res']} of {len(pairs)} seeds; the largest "
        f"move of top-1 at the chosen K_test: {largest['trained_at_selected']:.2f} (trained) "
        f"and {largest['finetuned_at_selected']:.2f} (fine-tuned) points; at K_train "
        f"{largest['trained_at_train_res']:.2f}. Mean over seeds there / here: trained at the "
        f"chosen K_test {there['trained_at_selected']:.2f} / {here['trained_at_selected']:.2f}, "
        f"fine-tuned {there['finetuned_at_selected']:.2f} / {here['finetuned_at_selected']:.2f}.",
        '']
  return lines


def other_machine_sentences(runs: List[dict], others: List[dict]) -> str:
  """One sentence per other machine for README's block."""
  sentences = []
  for other in others:
    compared = compare_machines(runs, other)
    if compared:
      largest = compared['largest']
      sentences.append(
          f"The same seeds on {other['machine'].split(';')[0]}: the same K_test on "
          f"{compared['same_test_res']} of {len(compared['pairs'])}, top-1 at the chosen "
          f"K_test within {largest['trained_at_selected']:.2f} (trained) and "
          f"{largest['finetuned_at_selected']:.2f} (fine-tuned) points per seed.")
  return ' '.join(sentences)


def collect_variants(root: epath.Path, seeds, names) -> dict:
  """{variant: its finished runs}, for the variants with at least one."""
  found = {name: [r for r in (collect_seed(root, s, name) for s in seeds) if r] for name in names}
  return {name: runs for name, runs in found.items() if runs}


def variant_row(name: str, change: str, runs: List[dict]) -> list:
  """One row of the variants' table: the instrument's readings over the seeds."""
  gains = fixres_gains(runs)
  return [name, change, ', '.join(str(r['selected_test_res']) for r in runs),
          common.pct(claims.stats([r['trained_at_selected'] for r in runs])),
          common.pct(claims.stats([r['finetuned_at_selected'] for r in runs])),
          ', '.join('%+.2f' % g for g in gains),
          '%.3f' % max(r['loss_after_tenth']['loss'] for r in runs)]


def variant_lines(runs: List[dict], variants: dict) -> List[str]:
  """The demo beside each of its choices undone, on the same seeds."""
  rows = [variant_row('the demo', 'none', runs)]
  rows += [variant_row(name, ', '.join(f'{k}={v}' for k, v in VARIANTS[name].items()), found)
           for name, found in variants.items()]
  seeds = sorted({r['seed'] for found in variants.values() for r in found})
  return [
      f'Each row runs seeds {seeds} with one of the demo\'s choices undone '
      '(`--variants`; a variant that changes only the fine-tuning starts from a copy of the '
      "seed's training). Top-1 at each run's own chosen K_test, mean ± std over the seeds; "
      'the gain is fine-tuned minus trained there; the last column is the highest training '
      f'loss over the seeds at 10% of the steps (0.9 ln {NUM_CLASSES} = '
      f'{0.9 * math.log(NUM_CLASSES):.3f}).', '',
      common.format_table(['variant', 'change', 'K_test chosen', 'trained at chosen',
                           'fine-tuned at chosen', 'gain per seed', 'loss at 10%'], rows), '']


def holds(comparison: dict) -> bool:
  """A demo claim holds when every seed is ahead (the margin and its spread are shown)."""
  return bool(comparison.get('n', 0) > 1 and comparison['every_seed'])


def sweep_table(summary: dict) -> str:
  """Validation top-1 per K_test (rows) and model (columns), mean ± std over the seeds."""
  models = summary['models']
  return common.format_table(
      ['K_test', *models],
      [[k, *(common.pct(summary['sweep'][m][k]) for m in models)]
       for k in summary['resolutions']])


def claim_lines(runs: List[dict], summary: dict, trained_choices: List[dict]) -> List[str]:
  c = summary['claims']
  k_train = runs[0]['train_res']
  chosen = [r['selected_test_res'] for r in trained_choices]
  source = ('' if runs[0]['selection_model'] == 'trained' else
            f", as finetune.auto_model='trained' chooses (variant {TRAINED_CHOICE})")
  heldout = (f"on the held-out slice the trained network scores best above it on every seed "
             f"({chosen}{source}): {claims.verdict(c['selected_above_train_res'])}"
             if trained_choices else
             f"(its own held-out choice needs --variants={TRAINED_CHOICE})")
  return [
      f"1. **The trained network is best above K_train = {k_train}**: {heldout}; on "
      "validation, the trained network at the chosen K_test against K_train: "
      f"{claims.margin_text(c['selected_vs_train_res'])}: "
      f"{claims.verdict(holds(c['selected_vs_train_res']))}.",
      '2. **FixRes fine-tuning at the chosen K_test adds to the trained network tested there**:'
      f" {claims.margin_text(c['finetuned_vs_trained'])}: "
      f"{claims.verdict(holds(c['finetuned_vs_trained']))}.",
      "3. Not claimed, shown: against the trained network at its best K_test *on validation* "
      "(a choice a user could only make by looking at the test set), fine-tuning gives "
      f"{claims.margin_text(c['finetuned_vs_best_trained'])}; every seed ahead: "
      f"{'yes' if holds(c['finetuned_vs_best_trained']) else 'no'}.",
  ]


def seed_table(runs: List[dict]) -> str:
  rows = []
  for r in runs:
    best = r['trained_best_validation']
    rows.append([
        r['seed'], r['selected_test_res'], r['analytic_test_res'],
        f"{100 * r['trained_at_train_res']:.2f}", f"{100 * r['trained_at_selected']:.2f}",
        f"{100 * r['finetuned_at_selected']:.2f}",
        f"{100 * best['top1']:.2f} at {best['test_res']}",
        f"{r['wall_seconds']:.0f}" + (' (with the dataset)' if r['generated_dataset'] else ''),
        f"{r['cpu_seconds']:.0f}", ' -> '.join(f'{x:.1f}' for x in r['load_average_5min'])])
  return common.format_table(
      ['seed', 'K_test chosen (held-out)', 'analytic K_test*', 'trained at K_train',
       'trained at chosen', 'fine-tuned at chosen', 'trained, best on validation', 'wall (s)',
       'CPU (s)', 'load (5 min)'], rows)


def time_lines(runs: List[dict], cores: int) -> List[str]:
  """Wall and CPU times; the idle estimate is CPU time over the cores (a lower bound)."""
  first = next((r for r in runs if r['generated_dataset']), None)
  others = [r for r in runs if not r['generated_dataset']] or runs
  cpu = claims.stats([r['cpu_seconds'] for r in others])
  lines = [f"- CPU time (user + system) of one demo run with the dataset already generated: "
           f"{cpu['mean']:.0f} ± {cpu['std']:.0f} s; on {cores} idle cores that is at least "
           f"{cpu['mean'] / cores / 60:.1f} min of wall time (CPU time / cores: the wall time if "
           'every core were busy all along).']
  if first:
    gen = f", of which generating the dataset {first['generation_seconds']:.0f} s wall" if (
        first['generation_seconds']) else ''
    load = first.get('load_average_1min')
    started = f" (1-minute load average {load[0]:.1f} when it started)" if load else ''
    lines.append(
        f"- With an empty data dir (seed {first['seed']}, README's command as a newcomer runs "
        f"it): {first['cpu_seconds']:.0f} s CPU, at least "
        f"{first['cpu_seconds'] / cores / 60:.1f} min on {cores} idle cores; "
        f"{first['wall_seconds']:.0f} s wall here{started}{gen}: "
        f"{first['wall_seconds'] / 60:.1f} min against the target of {TARGET_MINUTES} minutes, "
        f"{'met' if first['wall_seconds'] <= 60 * TARGET_MINUTES else 'not met'}.")
  lines.append(f"- The {'other ' if first else ''}runs' wall times are not idle-machine times: "
               'the 5-minute load averages in the table show how many processes shared the '
               'cores.')
  return lines


def readme_block(runs: List[dict], summary: dict, machine: str, cores: int,
                 others: List[dict] = ()) -> str:
  """The block README embeds between its demo markers."""
  c = summary['claims']
  seeds = ', '.join(str(r['seed']) for r in runs)
  gain = c['finetuned_vs_trained']
  return '\n'.join([
      f"Top-1 (%) on the 2,000 validation images, mean ± std over seeds {seeds} (one demo run "
      f"each; per-seed tables in [docs/DEMO.md](docs/DEMO.md)); 'finetuned' is fine-tuned at "
      "each seed's own held-out K_test:", '', sweep_table(summary), '',
      f"K_test chosen on the held-out slice: {[r['selected_test_res'] for r in runs]} "
      f"(K_train {runs[0]['train_res']}). Fine-tuning at the chosen K_test adds "
      f"{100 * gain['margin']:+.2f} ± {100 * gain['spread']:.2f} points over the trained "
      f"network tested there ({sum(d > 0 for d in gain['diffs'])} of {gain['n']} seeds ahead). "
      f'Measured on {machine}; the digits vary with the processor and the library versions '
      '(XLA compiles differently per CPU), the claims in docs/DEMO.md are what should hold.'
      + (' ' + other_machine_sentences(runs, others) if others else ''),
      '', *time_lines(runs, cores)])


README_MARKERS = common.readme_markers('demo table', 'studies.demo')
README_START, README_END = README_MARKERS


def update_readme(path: epath.Path, block: str) -> None:
  """Replaces the text between README's demo markers by `block`."""
  common.write_readme_block(path, README_MARKERS, block)


def readme_block_from_json(result: dict) -> str:
  """readme_block of a written demo.json: what tests/test_readme_numbers.py compares README
  with. demo.json written before it kept the cores has them in its machine line."""
  cores = result.get('cores') or int(re.search(r', (\d+) cores;', result['machine']).group(1))
  summary = dict(result['summary'])
  # JSON keeps the sweep's resolutions as strings.
  summary['sweep'] = {m: {int(k): v for k, v in by_res.items()}
                      for m, by_res in summary['sweep'].items()}
  return readme_block(result['runs'], summary, result['machine'], cores,
                      result.get('other_machines', []))


PLATEAU_HEADING = '## Why the demo sat at chance, and what removed it'
MACHINE_LINE = re.compile(r'Machine: (.+?)\. The digits vary')
CARRIED = ('Carried over unchanged from the previous report: this one was written without '
           'the plateau records (studies.demo --plateau_root)')


def carried_plateau_section(previous: epath.Path) -> List[str]:
  """The plateau section of the DEMO.md this report replaces, unchanged, for a report written
  without the plateau records (they live outside the repository and take long to re-record):
  its figures stay in OUT, and a line names the machine its records came from."""
  text = previous.read_text() if previous.exists() else ''
  if PLATEAU_HEADING not in text:
    return []
  section = text[text.index(PLATEAU_HEADING) + len(PLATEAU_HEADING):].strip('\n')
  if not section.startswith(CARRIED):
    machine = MACHINE_LINE.search(text)
    section = (f'{CARRIED} (recorded on: {machine.group(1) if machine else "not stated"}).'
               f'\n\n{section}')
  return [PLATEAU_HEADING, '', section, '']


def choice_paragraph(run: dict) -> str:
  """How the runs chose K_test, in words (their finetune.auto_model and auto_metric)."""
  words = common.selection_words(run['selection_metric'])
  where = f"the held-out `{run['selection_split']}` (never on validation)"
  analytic = ('the analytic K_test* (resolution.py, from the crop sampler and the image shapes) '
              'is shown beside it.')
  if run['selection_model'] == 'trained':
    return (f"It trains on `train[:90%]`, picks K_test on {where} by the trained network's "
            f'{words}, then FixRes-fine-tunes there; {analytic}')
  return (f"It trains on `train[:90%]`, FixRes-fine-tunes the trained network at every "
          "candidate K_test by the cached mode (the last BN's population statistics at that "
          'K_test and the classifier trained on the stored features: an adapter, '
          "finetune.auto_model='adapted'), and keeps the K_test whose fine-tuned network has "
          f'the {words} on {where}; the fine-tuned network there is the result. So the choice '
          'is where fine-tuning ends best, not where the trained network peaks (the paper reads '
          f'the latter; variant {TRAINED_CHOICE} below makes that choice); {analytic}')


def heldout_lines(runs: List[dict], trained_choices: List[dict]) -> List[str]:
  """The scored network's held-out table, and the trained network's beside it when the runs
  scored adapters (from trained_choice_runs, the same seeds' trainings)."""
  lines = [heldout_caption(runs[0]['selection_model']), '', heldout_table(runs), '']
  if runs[0]['selection_model'] != 'trained' and trained_choices:
    lines += [heldout_caption('trained', f' (variant {TRAINED_CHOICE})'), '',
              heldout_table(trained_choices), '']
  return lines


def write_report(root: epath.Path, seeds, out: epath.Path, command: str,
                 readme: Optional[epath.Path] = None, perturbed_seeds=(),
                 plateau_root: str = '', data_dir: str = '', other_machines=(),
                 variants=()) -> dict:
  """OUT/DEMO.md, OUT/demo.json and (if given) README's demo block from the finished runs
  (and those of `variants`); with data_dir, also each seed's paired gain and each perturbed
  seed's moves on PRECISE_DATASET, re-evaluated from their checkpoints."""
  runs = [r for r in (collect_seed(root, s) for s in seeds) if r]
  perturbed = [r for r in (collect_seed(root, s, PERTURBED) for s in perturbed_seeds) if r]
  if len(runs) < 2:
    raise ValueError(f'{len(runs)} finished demo runs under {root}: run --phase=run first.')
  if data_dir:
    for run in runs:
      run['paired'] = paired_gain(root / f"seed_{run['seed']}", run['seed'],
                                  run['selected_test_res'], data_dir)
    by_seed = {run['seed']: run for run in runs}
    for run in perturbed:
      if run['seed'] in by_seed:
        run['precise'] = precise_moves(root, by_seed[run['seed']], run, data_dir)
  cores = len(os.sched_getaffinity(0))
  machine = common.describe_machine(cores)
  others = other_machine_runs(other_machines, machine)
  variant_runs = collect_variants(root, seeds, variants)
  trained_choices = trained_choice_runs(runs, variant_runs)
  summary = summarize(runs, trained_choices)
  metric = runs[0]['selection_metric']
  result = {'runs': runs, 'summary': summary, 'machine': machine, 'cores': cores,
            'command': command, 'other_machines': others, 'variants': variant_runs,
            'perturbed': perturbed}
  out.mkdir(parents=True, exist_ok=True)
  (out / 'demo.json').write_text(json.dumps(result, indent=2))
  lines = [
      '# The demo over seeds', '',
      'Generated by `studies/demo.py`; do not edit by hand. Written by', '',
      f'    {command}', '',
      f'which ran README\'s demo command (`python -m fixres_jax.main --config={CONFIG} '
      '--workdir=...`) once per seed with --config.seed=N, each in its own process (some of '
      f'them at the same time), on a machine shared with other jobs. '
      f'Machine: {machine}. The digits vary with the processor '
      'and the library versions (XLA compiles differently per CPU; NumPy and Pillow write the '
      'dataset, which tests/test_synthetic.py pins); the verdicts are what should hold.', '',
      '## How the demo chooses K_test', '',
      choice_paragraph(runs[0]) + (CALIBRATION_WHY if metric == 'calibrated_loss' else '')
      + f" Every accuracy below is on `{runs[0]['eval_split']}`.", '', map_sides_line(runs[0]), '',
      *heldout_lines(runs, trained_choices),
      '## Is the demo a measuring instrument?', '', *instrument_lines(runs, perturbed), '',
      '## Claims (a claim holds when every seed is ahead)', '',
      *claim_lines(runs, summary, trained_choices),
      '',
      '## Per seed', '', seed_table(runs), '',
      '## Validation sweep, mean ± std over seeds', '',
      "'finetuned' is each seed's network fine-tuned at its own chosen K_test.", '',
      sweep_table(summary), '', '## Time', '',
      *time_lines(runs, cores), '']
  if variant_runs:
    lines += ["## What each of the demo's choices buys", '', *variant_lines(runs, variant_runs)]
  if others:
    lines += ['## The same seeds on another processor', '', *other_machine_lines(runs, others)]
  if plateau_root:
    lines += [PLATEAU_HEADING, '', plateau.EXPLANATION, '', 'Written by', '',
              f'    {plateau.COMMAND}', '',
              plateau.report(epath.Path(plateau_root), plateau.REPORT_SEEDS, out), '']
  else:
    lines += carried_plateau_section(out / 'DEMO.md')
  (out / 'DEMO.md').write_text('\n'.join(lines))
  if readme:
    update_readme(readme, readme_block(runs, summary, machine, cores, others))
  logging.info('Wrote %s and %s.', out / 'DEMO.md', out / 'demo.json')
  return result


def main(argv):
  del argv
  root, seeds = epath.Path(FLAGS.root), [int(s) for s in FLAGS.seeds]
  if FLAGS.phase in ('run', 'all'):
    run_all(root, seeds, FLAGS.data_dir, FLAGS.overrides,
            [int(s) for s in FLAGS.perturbed_seeds], FLAGS.variants)
  if FLAGS.phase in ('report', 'all'):
    write_report(root, seeds, epath.Path(FLAGS.out),
                 common.format_command('studies.demo'), readme=common.REPO / 'README.md',
                 perturbed_seeds=[int(s) for s in FLAGS.perturbed_seeds],
                 plateau_root=FLAGS.plateau_root,
                 data_dir=FLAGS.data_dir, other_machines=FLAGS.other_machines,
                 variants=FLAGS.variants)


if __name__ == '__main__':
  define_flags()
  app.run(main)
