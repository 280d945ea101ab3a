"""The official recipe's training extras on the embedded dataset, and exact against fast
decoding at test time; writes docs/RECIPE.md and docs/recipe.json.

  python -m studies.recipe --data_dir=/tmp/tfds_idle --results_root=/tmp/fixres_recipe \
      --out=docs [--demo_root=/tmp/demo3] [--seeds=0,1,2] \
      [--variants=baseline,ra,jitter,bn_groups,train_exact] [--epochs=8]

Each variant is the demo network (configs/demo.py) trained at its K_train on train[:90%] of
the demo's dataset with ONE option of the official ImageNet recipe turned on, for the same
number of images seen as the demo's epochs. K_test is chosen on the held-out train[90%:] (as
studies/reproduce.py does, with its functions), then the validation split is evaluated at
K_train and at the chosen K_test, with exact and with fast decoding. The baseline trains
exactly as README's demo command: with --demo_root its training is copied from the finished
demo workdirs (reproduce.train_once). Every run has its own workdir under --results_root and a
re-run skips finished runs; seeds run in the outer loop, so an interrupted measurement has
whole seeds. --phase=report only rewrites the doc from the finished runs.
"""

from etils import epath

from studies import claims
from studies import common
from studies import reproduce
from studies import variant_grid

TRAIN_RES = common.demo_train_res()
EVAL_SPLIT = 'validation'
GROUP_SIZE = 16  # 4 groups of the demo's batch of 64 (the official recipe: 8 groups of 512)
# One option on at a time. 'ra' keeps the images seen: its epochs are len_factor x longer.
VARIANTS = {
    'baseline': {},
    'ra': {'data.ra_repetitions': 3, 'data.ra_len_factor': 2.0},
    'jitter': {'data.color_jitter': 0.3},
    'bn_groups': {'model.bn_group_size': GROUP_SIZE},
    'train_exact': {'data.train_decode': 'exact'},
}
LABELS = {
    'baseline': 'baseline (demo recipe)',
    'ra': 'repeated augmentation x3, len_factor 2',
    'jitter': 'ColorJitter(0.3, 0.3, 0.3)',
    'bn_groups': f'BatchNorm groups of {GROUP_SIZE}',
    'train_exact': "train_decode='exact'",
}


def apply_variant(config, name: str, plan: reproduce.Plan):
  """The variant's options on a config (the RA epochs shortened to keep the images seen)."""
  common.apply_overrides(config, VARIANTS[name])
  factor = config.data.ra_len_factor
  for field in ('num_epochs', 'warmup_epochs'):  # the same steps: epochs are longer
    value = (plan.num_epochs if field == 'num_epochs' else config.train[field]) / factor
    with config.unlocked():
      del config.train[field]  # typed int in the base config
      config.train[field] = value
  return config


def run_variant(plan: reproduce.Plan, root: epath.Path, name: str, seed: int) -> None:
  """Train, choose K_test on the held-out slice, evaluate on validation (exact and fast)."""
  workdir = root / name / f's{seed}'
  config = apply_variant(reproduce.train_config(plan, TRAIN_RES, seed), name, plan)
  config.data.eval_split = EVAL_SPLIT
  reproduce.train_once(plan, config, workdir / 'train')
  trained = workdir / 'train' / 'checkpoints' / 'train'

  def sweep(resolutions, split, decode):
    config = reproduce.eval_config(plan, TRAIN_RES, seed, trained, resolutions, split=split)
    config = apply_variant(config, name, plan)
    config.data.decode = decode
    return config

  select = workdir / 'select'
  reproduce.run_once(sweep(plan.select_resolutions(TRAIN_RES), reproduce.HELDOUT_SPLIT,
                           'exact'), select)
  chosen = reproduce.best_heldout(select)['test_res']
  for decode in ('exact', 'fast'):
    reproduce.run_once(sweep([TRAIN_RES, chosen], EVAL_SPLIT, decode),
                       workdir / f'val_{decode}')


def collect(root: epath.Path, name: str, seed: int):
  """A finished run's numbers, or None."""
  workdir = root / name / f's{seed}'
  sweeps = {d: reproduce.finished_sweep(workdir / f'val_{d}') for d in ('exact', 'fast')}
  if None in sweeps.values():
    return None
  chosen = reproduce.best_heldout(workdir / 'select')['test_res']
  run = {'seed': seed, 'train_res': TRAIN_RES, 'test_res': chosen,
         'train_copied_from': reproduce.copied_from(workdir / 'train')}
  for decode, records in sweeps.items():
    run[f'{decode}_at_train_res'] = claims.top1_at(records, 'trained', TRAIN_RES)
    run[f'{decode}_at_chosen'] = claims.top1_at(records, 'trained', chosen)
  return run


def summarize(root: epath.Path, seeds, variants) -> dict:
  runs = {name: [collect(root, name, s) for s in seeds] for name in variants}
  field = lambda run, key: run[key] if run else None
  results = {}
  for name, rs in runs.items():
    results[name] = {
        'runs': [r for r in rs if r],
        'exact': claims.stats([field(r, 'exact_at_chosen') for r in rs]),
        'exact_at_train_res': claims.stats([field(r, 'exact_at_train_res') for r in rs]),
        'vs_baseline': claims.compare(
            [field(r, 'exact_at_chosen') for r in rs],
            [field(r, 'exact_at_chosen') for r in runs.get('baseline', [None] * len(rs))]),
        'exact_minus_fast': claims.compare(
            [field(r, 'exact_at_chosen') for r in rs], [field(r, 'fast_at_chosen') for r in rs]),
    }
  return results


def measured_train_res(results: dict) -> int:
  """The K_train the baseline's runs were trained at: the demo's then (64 before the runs
  recorded it)."""
  baseline = results.get('baseline', {}).get('runs', [])
  return next((r.get('train_res', 64) for r in baseline), TRAIN_RES)


def format_report(results: dict, plan: reproduce.Plan, seconds, command: str) -> str:
  lines = [
      '# The official recipe\'s training extras on the embedded dataset',
      '',
      f'Generated by `{command}` (do not edit). The demo network '
      f'(configs/demo.py) trained at K_train={measured_train_res(results)} on train[:90%] of '
      f'{reproduce.DATASET}, {plan.num_epochs} epochs of images seen for every variant (the '
      'demo\'s); K_test chosen by the trained network\'s '
      f'{common.selection_words()} on the held-out train[90%:] (exact decoding); top-1 on '
      f'{EVAL_SPLIT}, mean ± std over seeds. Margins: variant minus baseline per seed, '
      f'resolved ("beyond") when the mean exceeds {claims.SIGMAS:g} std of the per-seed '
      'differences, else bounded by the 95 % t-interval of the mean difference (t with n - 1 '
      'degrees of freedom). '
      'Measured on a shared, loaded 2-core CPU machine'
      + (f' ({seconds / 60:.0f} min of runs this invocation).' if seconds else '.')
      + ' "not run": no finished run of that variant (the measurement was stopped).',
      '',
      common.format_table(
          ['variant', 'seeds', 'top-1 at K_train (exact)', 'K_test chosen',
           'top-1 at K_test (exact)', 'vs baseline', 'exact - fast decoding at K_test'],
          [[LABELS[name], r['exact']['n'], common.pct(r['exact_at_train_res']),
            ', '.join(str(run['test_res']) for run in r['runs']) or '-',
            common.pct(r['exact']),
            'reference' if name == 'baseline' else claims.margin_text(r['vs_baseline']),
            claims.margin_text(r['exact_minus_fast'])] for name, r in results.items()]),
  ]
  for extra in (variant_grid.reuse_line(results, LABELS),
                variant_grid.never_learned(results, LABELS, 'exact_at_train_res')):
    if extra:
      lines += ['', extra]
  lines += ['', 'Each variant turns on one option of the official recipe: '
            '`data.ra_repetitions=3, data.ra_len_factor=2.0` (its epochs are twice as long, so '
            'it runs half as many; at the demo\'s global batch of 64 a step holds about 21 '
            'distinct images, the official recipe\'s 512 about 171), `data.color_jitter=0.3`, '
            f'`model.bn_group_size={GROUP_SIZE}`; `data.train_decode=\'exact\'` trains on '
            'full decodes (the others on the fast path), so the last column compares test-time '
            'decodings for a network trained each way. A tiny network on 10 synthetic texture '
            'classes for a few epochs says nothing about ImageNet at 120 epochs; the table is '
            'what these runs gave, not a prediction.', '',
            'Per seed (top-1 at the chosen K_test, exact decoding): ' + '; '.join(
                f"{LABELS[name]} " + ', '.join(
                    f"s{run['seed']} {100 * run['exact_at_chosen']:.2f}" for run in r['runs'])
                for name, r in results.items()) + '.', '']
  return '\n'.join(lines)


def effect_text(result: dict) -> str:
  """A variant against the baseline: the mean of the per-seed differences, resolved beyond
  3 std or bounded by its 95 % interval, and the per-seed values."""
  if result['vs_baseline']['n'] < 2:
    return 'not measured over seeds'
  return claims.margin_text(result['vs_baseline'])


def readme_block(results: dict) -> str:
  """README's recipe paragraph from recipe.json: each option against the baseline, and exact
  against fast decoding at test time."""
  baseline = results['baseline']
  effects = [f'{LABELS[name]} {effect_text(r)}'
             for name, r in results.items() if name != 'baseline']
  decoding = [abs(100 * d) for r in results.values() for d in r['exact_minus_fast'].get(
      'diffs', [])]
  text = ('The effect of each training option on the embedded dataset is in '
          '[docs/RECIPE.md](docs/RECIPE.md) (`python -m studies.recipe`): over '
          f"{baseline['exact']['n']} seeds of the demo network "
          f"(K_train {measured_train_res(results)}), top-1 at "
          'the chosen K_test, option minus baseline: ' + '; '.join(effects) + '. Exact against fast decoding at test '
          f'time differed by at most {max(decoding):.2f} points on every variant and seed.')
  stuck = variant_grid.never_learned(results, LABELS, 'exact_at_train_res')
  return text + (f' {stuck}' if stuck else '')


GRID = variant_grid.Grid('recipe', VARIANTS, run_variant, summarize, format_report, TRAIN_RES,
                         readme_block=readme_block)

if __name__ == '__main__':
  variant_grid.run(GRID)
