"""What training on a downscaled copy costs in accuracy: the embedded dataset, the demo's K_train.

  python -m studies.copy_accuracy --data_dir=/tmp/tfds_demo --results_root=/tmp/copy_acc \
      [--demo_root=/tmp/demo4] [--short_side=96] [--quality=90] [--seeds=0,1,2] [--epochs=8] \
      [--out=docs/COPY_ACCURACY.md]

For each seed, the demo network (configs/demo.py, through studies/reproduce.py's configs) is
trained at K_train on train[:90%] of the demo's dataset twice, for the demo's epochs: from the
original JPEGs (short sides 128-192 px) and from a copy made by
`python -m fixres_jax.data.prepare` with the shorter side capped at --short_side. Training
from the originals at the demo's K_train is the demo's own training: with --demo_root it is copied
from the finished demo workdirs (reproduce.train_once), not repeated. Everything after
training reads the originals, as a user who trains from the copy but tests on real images
would: K_test is selected on the held-out train[90%:] (reproduce.best_heldout, never
validation), then the validation split is swept. A re-run skips finished runs
(reproduce.run_once) and rewrites the table from what has finished; --phase=report only
writes it.
"""

import json

from absl import app
from absl import flags
from etils import epath
import numpy as np

from fixres_jax.data.synthetic import render
from studies import claims
from studies import common
from studies import reproduce

FLAGS = flags.FLAGS
ORIGINAL_SIDES = '{}-{}'.format(*render.Style().short_side)  # the embedded dataset's


def define_flags() -> None:
  """Defined only when run as a script (tests import this module next to others' flags)."""
  flags.DEFINE_string('data_dir', '', 'tfds data dir of the original dataset ("" = tfds default).')
  flags.DEFINE_string('demo_root', '', 'Finished demo workdirs (ROOT/seed_N) whose training '
                      'the originals\' runs reuse when they train as the demo did.')
  flags.DEFINE_string('results_root', '/tmp/copy_accuracy', 'One workdir per run, and the copy.')
  # Half to three quarters of the originals' short sides (128-192 px), a little above the
  # test transform's resize at the demo's K_test, as a 256-320 px copy of ImageNet is.
  flags.DEFINE_integer('short_side', 96, 'Cap on the shorter side of the copy.')
  flags.DEFINE_integer('quality', 90, 'JPEG quality of the copy.')
  flags.DEFINE_integer('train_res', common.demo_train_res(), "K_train (the demo's).")
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (each trains both networks).')
  flags.DEFINE_integer('epochs', 8, "Training epochs (the demo's).")
  flags.DEFINE_string('out', 'docs/COPY_ACCURACY.md', 'The generated table.')
  flags.DEFINE_enum('phase', 'all', ['all', 'report'], "'report': only the table.")
  flags.DEFINE_string('readme', 'README.md', "README whose copy block is rewritten ('': none).")

SOURCES = ('original', 'copy')


def make_copy(plan: reproduce.Plan, root: epath.Path, short_side: int, quality: int) -> str:
  """The copy's tfds data dir (written on first use, resumed if interrupted)."""
  from fixres_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  copy_dir = str(root / f'copy_s{short_side}_q{quality}')
  config = reproduce.base_config(plan)
  name, version = config.data.name, str(synthetic.FixresSynthetic.VERSION)
  if not (epath.Path(copy_dir) / name / version / 'dataset_info.json').exists():
    prepare.prepare_copy(config, copy_dir, short_side, quality)
  return copy_dir


def run_pair(plan: reproduce.Plan, root: epath.Path, copy_dir: str, seed: int) -> None:
  """Trains from both sources, then selects K_test on held-out and sweeps validation."""
  k = FLAGS.train_res
  for source in SOURCES:
    workdir = root / source
    config = reproduce.train_config(plan, k, seed)
    if source == 'copy':
      config.data.data_dir = copy_dir
    trained_dir = reproduce.run_dir(workdir, k, seed, 'train')
    reproduce.train_once(plan, config, trained_dir)
    trained = trained_dir / 'checkpoints' / 'train'
    grid = plan.sweep_resolutions(k)
    reproduce.run_once(reproduce.eval_config(plan, k, seed, trained, grid,
                                             split=reproduce.HELDOUT_SPLIT),
                       reproduce.run_dir(workdir, k, seed, 'select'))
    reproduce.run_once(reproduce.eval_config(plan, k, seed, trained, grid),
                       reproduce.run_dir(workdir, k, seed, 'sweep'))


def collect(root: epath.Path, seeds) -> dict:
  """Per source and seed: the selected K_test, validation top-1 there and at K_train."""
  k = FLAGS.train_res
  results = {}
  for source in SOURCES:
    runs = []
    for seed in seeds:
      select = reproduce.run_dir(root / source, k, seed, 'select')
      sweep = reproduce.finished_sweep(reproduce.run_dir(root / source, k, seed, 'sweep'))
      if sweep is None or reproduce.finished_sweep(select) is None:
        continue
      best = reproduce.best_heldout(select)['test_res']
      runs.append({'seed': seed, 'selected_test_res': best,
                   'top1_selected': claims.top1_at(sweep, 'trained', best),
                   'top1_train_res': claims.top1_at(sweep, 'trained', k),
                   'curve': {r['test_res']: r['top1'] for r in sweep
                             if r['model'] == 'trained'},
                   'train_copied_from': reproduce.copied_from(
                       reproduce.run_dir(root / source, k, seed, 'train')),
                   'train_seconds': reproduce.train_step_seconds(
                       reproduce.run_dir(root / source, k, seed, 'train') / 'metrics.jsonl')})
    results[source] = runs
  return results


def format_report(results: dict, command: str) -> str:
  k = FLAGS.train_res
  lines = [
      '# Accuracy cost of a downscaled copy',
      '',
      f'Generated by `{command}`; do not edit by hand.',
      '',
      f'The demo network (configs/demo.py) trained at K_train={k} for {FLAGS.epochs} epochs on '
      f'train[:90%] of {reproduce.DATASET} (short sides {ORIGINAL_SIDES} px), from the original '
      f'JPEGs and from a copy with the shorter side capped at {FLAGS.short_side} px, JPEG '
      f'quality {FLAGS.quality} (`python -m fixres_jax.data.prepare`). K_test selected by '
      f'each network\'s {common.selection_words()} on the held-out train[90%:] of the '
      'originals; top-1 on the original validation split. '
      'Mean ± std over seeds (ddof=1); the difference is per seed (the same seed, the same '
      'initialisation and example order), resolved when its mean is beyond '
      f'{claims.SIGMAS:g} std of the per-seed differences, else bounded by the 95 % '
      't-interval of the mean difference (t with n - 1 degrees of freedom).',
      *reuse_lines(results),
      '',
      common.format_table(
          ['trained from', 'seeds', 'K_test selected (per seed)', 'top-1 at selected K_test',
           f'top-1 at K_test={k}', 'median step x steps (s)'],
          [[source, len(runs), ', '.join(str(r['selected_test_res']) for r in runs),
            common.pct(claims.stats([r['top1_selected'] for r in runs])),
            common.pct(claims.stats([r['top1_train_res'] for r in runs])),
            f"{np.median([r['train_seconds'] for r in runs]) if runs else float('nan'):.0f}"]
           for source, runs in results.items()]),
      '', *difference_lines(results)]
  resolutions = sorted({res for runs in results.values() for r in runs for res in r['curve']})
  lines += ['', '### Validation top-1 by K_test (mean over seeds)', '',
            common.format_table(
                ['trained from', *resolutions],
                [[source, *(common.pct(claims.stats([r['curve'].get(res) for r in runs]))
                            for res in resolutions)] for source, runs in results.items()])]
  return '\n'.join(lines) + '\n'


def reuse_lines(results: dict) -> list:
  """Which trainings are the demo's own (copied from its workdirs), as a paragraph."""
  copied = [f"seed {r['seed']} (`{r['train_copied_from']}`)" for runs in results.values()
            for r in runs if r.get('train_copied_from')]
  if not copied:
    return []
  return ['', "Reused, not retrained: training from the originals is README's demo command, "
          'whose finished runs were copied from their workdirs for ' + ', '.join(copied)
          + ' (no train-stage field differs); selection and sweeps are run here.']


def difference_lines(results: dict) -> list:
  """Copy minus original, paired by seed, and the seeds whose selected K_test moved."""
  by_seed = {source: {r['seed']: r for r in runs} for source, runs in results.items()}
  paired = sorted(set(by_seed['original']) & set(by_seed['copy']))
  missing = [s for s in FLAGS.seeds if int(s) not in paired]
  lines = [f'Seeds without both runs finished: {missing}.' if missing else '']
  if paired:
    difference = claims.compare([by_seed['copy'][s]['top1_selected'] for s in paired],
                                [by_seed['original'][s]['top1_selected'] for s in paired])
    lines.append('Copy minus original at each one\'s selected K_test: '
                 f'{claims.margin_text(difference)} over seeds {paired}.')
    moved = [s for s in paired if by_seed['copy'][s]['selected_test_res'] !=
             by_seed['original'][s]['selected_test_res']]
    lines.append(f'The selected K_test moved for {len(moved)} of {len(paired)} seeds'
                 + (f' ({moved}).' if moved else '.'))
  return lines


README_MARKERS = common.readme_markers('copy accuracy', 'studies.copy_accuracy')


def readme_block(result: dict) -> str:
  """README's copy paragraph from COPY_ACCURACY.json: copy minus original, paired by seed, and
  the seeds whose selected K_test moved."""
  settings, results = result['settings'], result['results']
  by_seed = {source: {r['seed']: r for r in runs} for source, runs in results.items()}
  paired = sorted(set(by_seed['original']) & set(by_seed['copy']))
  difference = claims.compare([by_seed['copy'][s]['top1_selected'] for s in paired],
                              [by_seed['original'][s]['top1_selected'] for s in paired])
  moved = [f"{by_seed['original'][s]['selected_test_res']} to "
           f"{by_seed['copy'][s]['selected_test_res']} (seed {s})" for s in paired
           if by_seed['copy'][s]['selected_test_res'] !=
           by_seed['original'][s]['selected_test_res']]
  return (
      '[docs/COPY_ACCURACY.md](docs/COPY_ACCURACY.md) measures what training from a copy costs '
      'in accuracy on the embedded dataset (`python -m studies.copy_accuracy`, the demo\'s '
      f"network for {settings['epochs']} epochs at K_train {settings['train_res']}): with "
      f"the shorter side capped at {settings['short_side']} px (JPEG quality "
      f"{settings['quality']}; the originals' short sides are {ORIGINAL_SIDES}), copy minus "
      f"original at each network's selected K_test was {claims.margin_text(difference)} over "
      f'{len(paired)} seeds. The selected K_test '
      f'moved for {len(moved)} of {len(paired)} seeds'
      + (f": {', '.join(moved)}." if moved else '.'))


def main(argv):
  del argv
  from fixres_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  main_lib.quiet_library_logs()
  seeds = [int(s) for s in FLAGS.seeds]
  plan = reproduce.Plan(train_res=[FLAGS.train_res], seeds=seeds, data_dir=FLAGS.data_dir,
                        num_epochs=FLAGS.epochs, demo_root=FLAGS.demo_root)
  root = epath.Path(FLAGS.results_root)
  if FLAGS.phase == 'all':
    copy_dir = make_copy(plan, root, FLAGS.short_side, FLAGS.quality)
    for seed in seeds:
      run_pair(plan, root, copy_dir, seed)
  results = collect(root, seeds)
  out = epath.Path(FLAGS.out)
  out.write_text(format_report(results, common.format_command('studies.copy_accuracy')))
  out.with_suffix('.json').write_text(json.dumps(
      {'settings': {k: FLAGS[k].value for k in ('short_side', 'quality', 'train_res', 'epochs')},
       'results': results}, indent=1))
  if FLAGS.readme:
    common.write_readme_block(FLAGS.readme, README_MARKERS,
                              readme_block(common.read_json(out.with_suffix('.json'))))
  print(out.read_text())


if __name__ == '__main__':
  define_flags()
  app.run(main)
