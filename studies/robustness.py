"""Does FixRes cost robustness? Accuracy and calibration against K_test, on the validation
split and on the embedded dataset's shifts, for the trained, fine-tuned and parametric
networks, over seeds. Writes docs/ROBUSTNESS.md, docs/robustness.json, docs/robustness.png
and README's robustness block.

  python -m studies.robustness --source=/tmp/demo3 --root=/tmp/fixres_robustness \
      --data_dir=/tmp/tfds_demo --seeds=0,1,2,3,4

Copies each finished demo workdir SOURCE/seed_N (studies.demo's, trained and fine-tuned) to
ROOT/seed_N, never writing into SOURCE, and re-runs only its sweep there with
config.sweep.evals = SETS: the same networks, scored on every set at every K_test. A re-run
skips seeds whose sweep already holds every set.
"""

import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

from studies import claims
from studies import common

FLAGS = flags.FLAGS
CONFIG = 'configs/demo.py'
SETS = ('validation', 'synthetic_noise', 'synthetic_jpeg', 'synthetic_blur', 'synthetic_small')
MODELS = ('trained', 'finetuned', 'parametric')
METRICS = ('top1', 'ece', 'nll')
SHIFT_WORDS = {
    'validation': 'the validation split itself',
    'synthetic_noise': 'sensor noise of 12-24 grey levels (2-6 in training)',
    'synthetic_jpeg': 'JPEG quality 8-25 (70-95 in training)',
    'synthetic_blur': 'a Gaussian blur of 1.5-3 px before encoding (none in training)',
    'synthetic_small': 'objects 0.2-0.45 of the short side (0.4-0.9 in training)',
}
README_MARKERS = common.readme_markers('robustness', 'studies.robustness')


def define_flags() -> None:
  """Defined only when run as a script (tests import this module next to others' flags)."""
  flags.DEFINE_string('source', '/tmp/demo3', 'Finished demo workdirs SOURCE/seed_N (read only).')
  flags.DEFINE_string('root', '/tmp/fixres_robustness', 'The copies, one per seed, swept here.')
  flags.DEFINE_string('data_dir', '/tmp/tfds_demo', 'tfds data dir of the demo runs.')
  flags.DEFINE_string('out', 'docs', 'Where ROBUSTNESS.md, robustness.json and .png go.')
  flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds of the demo workdirs.')
  flags.DEFINE_enum('phase', 'all', ['run', 'report', 'all'],
                    "'run': the sweeps only; 'report': the documents from finished sweeps.")


def sweep_command(workdir: epath.Path, seed: int, data_dir: str) -> List[str]:
  """The demo's command, its sweep stage only, with every set of SETS."""
  return [sys.executable, '-m', 'fixres_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
          f'--config.seed={seed}', f'--config.data.data_dir={data_dir}',
          '--config.stages=sweep', f"--config.sweep.evals={','.join(SETS)}",
          '--config.sweep.latency_batch_size=0']


def is_swept(workdir: epath.Path) -> bool:
  """Whether the workdir's sweep.json scores every set of SETS."""
  records = common.read_json(workdir / 'sweep.json', [])
  return set(SETS) <= {r.get('eval') for r in records}


def run_seed(source: epath.Path, root: epath.Path, seed: int, data_dir: str) -> None:
  """Copies SOURCE/seed_N to ROOT/seed_N (once) and sweeps the copy."""
  workdir = root / f'seed_{seed}'
  if is_swept(workdir):
    logging.info('seed %d: swept before (%s).', seed, workdir)
    return
  if not workdir.exists():
    shutil.copytree(source / f'seed_{seed}', workdir)
  with (root / f'seed_{seed}.log').open('w') as log:
    subprocess.run(sweep_command(workdir, seed, data_dir), check=True, stdout=log,
                   stderr=subprocess.STDOUT, cwd=str(common.REPO))


def collect_seed(workdir: epath.Path) -> dict:
  """A seed's sweep records by (set, model, K_test), and the fine-tuned network's K_test."""
  records = common.read_json(workdir / 'sweep.json')
  meta = common.read_json(workdir / 'sweep_meta.json')
  return {'records': {(r['eval'], r['model'], r['test_res']): {m: r[m] for m in METRICS}
                      for r in records},
          'train_res': meta['train_res'],
          'finetune_test_res': meta['finetune_test_res']['test_res']}


def summarize(runs: Dict[int, dict]) -> dict:
  """Mean ± std over seeds of every metric, and the paired differences that answer the
  question: at each K_test, fine-tuned minus trained and parametric minus trained; and at the
  operating points (trained at K_train, fine-tuned at its own K_test)."""
  seeds = sorted(runs)
  resolutions = sorted({k for run in runs.values() for (_, _, k) in run['records']})
  value = lambda seed, s, m, k, metric: runs[seed]['records'][(s, m, k)][metric]
  curves = {s: {m: {metric: {k: claims.stats([value(seed, s, m, k, metric) for seed in seeds])
                             for k in resolutions} for metric in METRICS}
                for m in MODELS} for s in SETS}
  differences = {s: {other: {metric: {k: claims.compare(
      [value(seed, s, other, k, metric) for seed in seeds],
      [value(seed, s, 'trained', k, metric) for seed in seeds]) for k in resolutions}
      for metric in METRICS} for other in ('finetuned', 'parametric')} for s in SETS}
  # The deployed choices: the trained network at its training resolution, and the
  # fine-tuned one at the K_test it was made for (each seed's own).
  operating = {s: {metric: claims.compare(
      [value(seed, s, 'finetuned', runs[seed]['finetune_test_res'], metric) for seed in seeds],
      [value(seed, s, 'trained', runs[seed]['train_res'], metric) for seed in seeds])
      for metric in METRICS} for s in SETS}
  best = {s: {m: claims.stats([max(value(seed, s, m, k, 'top1') for k in resolutions)
                               for seed in seeds]) for m in MODELS} for s in SETS}
  return {'seeds': seeds, 'resolutions': resolutions, 'curves': curves,
          'differences': differences, 'operating': operating, 'best_top1': best,
          'train_res': runs[seeds[0]]['train_res'],
          'finetune_test_res': {seed: runs[seed]['finetune_test_res'] for seed in seeds}}


def signed(comparison: dict, scale: float = 100, digits: int = 2) -> str:
  """'+1.23 ± 0.45' (the paired margin and the spread of the per-seed differences)."""
  if comparison.get('spread') is None:
    return 'n/a'
  return (f"{scale * comparison['margin']:+.{digits}f} ± "
          f"{scale * comparison['spread']:.{digits}f}")


def verdict(comparison: dict, higher_is_better: bool = True) -> str:
  """'helps', 'hurts' (beyond claims.SIGMAS spreads, every seed the same way) or 'unclear'."""
  diffs = np.asarray(comparison.get('diffs', []))
  if not len(diffs):
    return 'unclear'
  margin, spread = float(diffs.mean()), float(np.std(diffs, ddof=1))
  good = margin > 0 if higher_is_better else margin < 0
  if abs(margin) > claims.SIGMAS * spread and (np.sign(diffs) == np.sign(margin)).all():
    return 'helps' if good else 'hurts'
  return 'unclear'


def operating_table(summary: dict) -> str:
  """Per set: fine-tuned at its K_test minus trained at K_train, for each metric."""
  rows = []
  for s in SETS:
    op = summary['operating'][s]
    curves = summary['curves'][s]
    k_train = summary['train_res']
    rows.append([s, common.pct(curves['trained']['top1'][k_train]),
                 signed(op['top1']), verdict(op['top1']),
                 signed(op['ece']), verdict(op['ece'], higher_is_better=False),
                 signed(op['nll'], 1, 3), verdict(op['nll'], higher_is_better=False)])
  return common.format_table(
      ['set', f'trained top-1 at K_train={summary["train_res"]} (%)', 'Δ top-1 (points)',
       'top-1', 'Δ ECE (points)', 'ECE', 'Δ NLL', 'NLL'], rows)


def difference_table(summary: dict, other: str, metric: str) -> str:
  """`other` minus trained at every K_test, per set (paired over seeds)."""
  scale, digits = (1, 3) if metric == 'nll' else (100, 2)
  rows = [[s] + [signed(summary['differences'][s][other][metric][k], scale, digits)
                 for k in summary['resolutions']] for s in SETS]
  return common.format_table(['set'] + [f'K_test {k}' for k in summary['resolutions']], rows)


def curve_table(summary: dict, metric: str) -> str:
  """Mean ± std over seeds per set and model (rows) and K_test (columns)."""
  rows = []
  for s in SETS:
    for m in MODELS:
      cells = summary['curves'][s][m][metric]
      if metric == 'nll':
        text = [f"{cells[k]['mean']:.3f} ± {cells[k]['std']:.3f}" for k in summary['resolutions']]
      else:
        text = [common.pct(cells[k]) for k in summary['resolutions']]
      rows.append([s, m] + text)
  return common.format_table(['set', 'model'] + [f'{k}' for k in summary['resolutions']], rows)


def finding_lines(summary: dict) -> List[str]:
  """What the tables say, in words, from the numbers (never typed)."""
  op = summary['operating']
  helps = [s for s in SETS if verdict(op[s]['top1']) == 'helps']
  hurts = [s for s in SETS if verdict(op[s]['top1']) == 'hurts']
  unclear = [s for s in SETS if s not in helps + hurts]
  calibration = [s for s in SETS if verdict(op[s]['ece'], higher_is_better=False) == 'hurts']
  better_cal = [s for s in SETS if verdict(op[s]['ece'], higher_is_better=False) == 'helps']
  name = lambda sets: ', '.join(sets) if sets else 'none'
  return [
      f"Fine-tuned at its own K_test against the trained network at K_train, over "
      f"{len(summary['seeds'])} seeds: top-1 better on {name(helps)}; worse on {name(hurts)}; "
      f"within the seed spread on {name(unclear)}.",
      f"Calibration (ECE): better on {name(better_cal)}; worse on {name(calibration)}.",
  ]


def plot(summary: dict):
  """Top-1 and ECE against K_test (mean over seeds, band ± std), one column per set."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(3.3 * len(SETS), 6.4), dpi=110)
  axes = fig.subplots(2, len(SETS), sharex=True, squeeze=False)
  ks = summary['resolutions']
  for column, s in enumerate(SETS):
    for row, metric in enumerate(('top1', 'ece')):
      ax = axes[row][column]
      for m in MODELS:
        cells = summary['curves'][s][m][metric]
        mean = np.array([100 * cells[k]['mean'] for k in ks])
        std = np.array([100 * cells[k]['std'] for k in ks])
        (line,) = ax.plot(ks, mean, marker='o', markersize=3, label=m)
        ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.15)
      ax.axvline(summary['train_res'], color='black', linestyle=':', linewidth=1)
      ax.grid(alpha=0.3)
      if row == 0:
        ax.set_title(s, fontsize='medium')
      else:
        ax.set_xlabel('K_test (px)')
      if column == 0:
        ax.set_ylabel('top-1 (%)' if metric == 'top1' else 'ECE (%)')
  axes[0][-1].legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.02, 1))
  return fig


def readme_block(summary: dict) -> str:
  """README's two lines."""
  return '\n'.join(finding_lines(summary)) + (
      ' Tables and the paired spreads: [docs/ROBUSTNESS.md](docs/ROBUSTNESS.md).')


def render(summary: dict, command: str, machine: str) -> str:
  """docs/ROBUSTNESS.md."""
  k_tests = ', '.join(f'{k} (seed {s})' for s, k in summary['finetune_test_res'].items())
  lines = [
      '# Does FixRes cost robustness?', '',
      'Generated by `studies/robustness.py`; do not edit by hand. Written by', '',
      f'    {command}', '',
      f"which re-ran the sweep of each demo workdir (configs/demo.py, K_train="
      f"{summary['train_res']}; the trained and fine-tuned checkpoints of studies.demo) on a "
      f"copy, with `config.sweep.evals={','.join(SETS)}`. Machine: {machine}.", '',
      'The shifted sets are the embedded dataset\'s validation scenes (the same 2,000 images, '
      'classes and layouts) drawn with one range changed (fixres_synthetic/shift_*):', '',
      *[f'- `{s}`: {SHIFT_WORDS[s]}' for s in SETS], '',
      f'The fine-tuned network of each seed was made at its own K_test: {k_tests}. '
      "'parametric' is the trained network with the parametric adaptation fitted on held-out "
      'training images. ECE: 15 equal-width confidence bins; NLL: the mean cross-entropy. '
      f'A ± is the standard deviation over the {len(summary["seeds"])} seeds; a Δ is paired '
      '(each seed\'s fine-tuned network against its own trained one), its ± the standard '
      'deviation of the per-seed differences. A verdict needs the margin beyond '
      f'{claims.SIGMAS} spreads and every seed the same way.', '',
      '## What was found', '', *finding_lines(summary), '',
      '## The deployed choices: fine-tuned at its K_test against trained at K_train', '',
      operating_table(summary), '',
      '## Fine-tuned minus trained at each K_test: top-1 (points)', '',
      difference_table(summary, 'finetuned', 'top1'), '',
      '## Fine-tuned minus trained at each K_test: ECE (points)', '',
      difference_table(summary, 'finetuned', 'ece'), '',
      '## Parametric minus trained at each K_test: top-1 (points)', '',
      difference_table(summary, 'parametric', 'top1'), '',
      '## Top-1 (%), mean ± std over seeds', '', curve_table(summary, 'top1'), '',
      '## ECE (%), mean ± std over seeds', '', curve_table(summary, 'ece'), '',
      '## NLL, mean ± std over seeds', '', curve_table(summary, 'nll'), '',
      '![accuracy and calibration against K_test](robustness.png)', '']
  return '\n'.join(lines)


def write_report(root: epath.Path, seeds, out: epath.Path, command: str,
                 readme=None) -> dict:
  """OUT/ROBUSTNESS.md, robustness.json, robustness.png (and README's block) from the sweeps."""
  runs = {seed: collect_seed(root / f'seed_{seed}') for seed in seeds
          if is_swept(root / f'seed_{seed}')}
  if len(runs) < 2:
    raise ValueError(f'{len(runs)} swept seeds under {root}: run --phase=run first.')
  summary = summarize(runs)
  machine = common.describe_machine(len(os.sched_getaffinity(0)))
  out.mkdir(parents=True, exist_ok=True)
  (out / 'robustness.json').write_text(json.dumps(
      {'summary': summary, 'command': command, 'machine': machine, 'sets': list(SETS)},
      indent=2))
  common.save_figure(plot(summary), out / 'robustness.png')
  (out / 'ROBUSTNESS.md').write_text(render(summary, command, machine))
  if readme:
    common.write_readme_block(readme, README_MARKERS, readme_block(summary))
  return summary


def readme_block_from_json(result: dict) -> str:
  """readme_block of a written robustness.json (what tests/test_readme_numbers.py compares
  README with)."""
  return readme_block(result['summary'])


def main(argv):
  del argv
  root, seeds = epath.Path(FLAGS.root), [int(s) for s in FLAGS.seeds]
  if FLAGS.phase in ('run', 'all'):
    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
      run_seed(epath.Path(FLAGS.source), root, seed, FLAGS.data_dir)
  if FLAGS.phase in ('report', 'all'):
    write_report(root, seeds, epath.Path(FLAGS.out), common.format_command('studies.robustness'),
                 readme=common.REPO / 'README.md')


if __name__ == '__main__':
  define_flags()
  app.run(main)
