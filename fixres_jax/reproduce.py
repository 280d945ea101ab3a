"""Reproduces the paper's claims on the embedded dataset and generates docs/RESULTS.md.

  python -m fixres_jax.reproduce --out=docs --data_dir=/tmp/tfds_repro \
      --results_root=/tmp/fixres_repro [--seeds=0,1,2] [--train_res=48,64,96] [--quick]

First the training epochs are chosen on the held-out train[90%:]: the lowest K_train's first
seed is trained with each of --epochs and the best held-out top-1 wins. Then for each K_train
and seed: train (configs/demo.py at K_train, on fixres_synthetic/reproduce: the demo's
training images and 10,000 validation images) on train[:90%]; pick the best
K_test on the held-out train[90%:] (never on validation); sweep K_test on the validation split
(the trained network and the parametric adaptation); FixRes fine-tuning at the analytic K_test*,
at the selected K_test and, as controls, at K_test = K_train and with the head's learning rate 0
(last-BN statistics only); 'cached' against 'sgd' fine-tuning at the selected K_test. Every run
has its own workdir under --results_root, and a re-run skips finished runs, so an interrupted
reproduction resumes where it stopped. Then it writes OUT/RESULTS.md (every number generated),
OUT/results.json (the raw numbers) and the figures OUT/accuracy_vs_test_res.png and
OUT/zero_fraction.png.

--quick runs a tiny grid on fixres_synthetic/tiny (CI): the same files, numbers meaningless.
"""

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (other modules imported in
  the same process, e.g. by the tests, define flags of the same names)."""
  flags.DEFINE_string('out', 'docs', 'Where RESULTS.md, results.json and the figures go.')
  flags.DEFINE_string('results_root', '/tmp/fixres_repro', 'One workdir per run under here.')
  flags.DEFINE_string('data_dir', '', 'tfds data dir for fixres_synthetic ("" = tfds default).')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds: each is a full train + fine-tune run.')
  flags.DEFINE_list('train_res', ['48', '64', '96'], 'The K_train grid.')
  flags.DEFINE_list('epochs', ['8', '16'], 'Training epochs to choose from on the held-out '
                    'slice (one value: no choice).')
  flags.DEFINE_list('compare_res', [], 'Higher K_train of the grid made by other invocations: '
                    'the lowest K_train is also fine-tuned at these (claim (c)).')
  flags.DEFINE_integer('long_epochs', 30, "Also time 'sgd' against 'cached' fine-tuning at this "
                       'many epochs, for the lowest K_train and the first seed (0: do not).')
  flags.DEFINE_bool('quick', False, 'A tiny grid on fixres_synthetic/tiny, for CI.')
  flags.DEFINE_enum('phase', 'all', ['train', 'all', 'report'],
                    "'train': only the training runs; 'report': only RESULTS.md from finished "
                    "runs; 'all': everything.")


HELDOUT_SPLIT = 'train[90%:]'  # selects K_test; never seen in training or fine-tuning
FIT_SPLIT = 'train[:90%]'
EVAL_SPLIT = 'validation'
REPO = epath.Path(__file__).parent.parent
SIGMAS = 3.0  # the claims' margin, in standard deviations of the per-seed differences


@dataclasses.dataclass(frozen=True)
class Plan:
  """The grid: K_train values, seeds, and the resolutions swept."""
  train_res: Sequence[int]
  seeds: Sequence[int]
  quick: bool = False
  data_dir: str = ''
  compare_res: Sequence[int] = ()  # more K_train of the grid, run by another invocation
  long_epochs: int = 0  # >0: also time 'sgd' and 'cached' at this many epochs (one run)
  epochs_grid: Sequence[int] = ()  # training epochs to choose from; () = the demo's
  num_epochs: int = 0  # the training epochs chosen (select_epochs); 0 = the demo's

  def sweep_resolutions(self, train_res: int) -> List[int]:
    """Validation sweep: 16 px steps from K_train - 16 to 2 K_train (the figure's x-axis)."""
    if self.quick:  # few resolutions: each one is compiled
      return [train_res, train_res + 8, train_res + 16]
    return list(range(max(16, train_res - 16), 2 * train_res + 1, 16))

  def select_resolutions(self, train_res: int) -> List[int]:
    """Held-out selection grid: the sweep's (each resolution is one pass over the slice)."""
    return self.sweep_resolutions(train_res)


QUICK_TRAIN_RES, QUICK_SEEDS, QUICK_EPOCHS = (16, 24), (0, 1), (1, 2)
DATASET = 'fixres_synthetic/reproduce'  # the demo's training images, 10,000 validation images


# ---------------------------------------------------------------------------------------------
# Configs


def load_config_file(path: epath.Path):
  spec = importlib.util.spec_from_file_location(path.stem, str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def base_config(plan: Plan):
  """configs/demo.py, or a tiny model on fixres_synthetic/tiny for --quick."""
  config = load_config_file(REPO / 'configs' / 'demo.py')
  config.data.name = DATASET
  if plan.quick:
    config.data.name = 'fixres_synthetic/tiny'
    config.data.shuffle_buffer = 256
    config.model.stage_sizes = (1, 1)
    config.model.num_filters = 8
    config.train.batch_size = 32
    config.train.num_epochs = 2
    config.train.log_every_steps = 4
    config.finetune.batch_size = 32
    config.finetune.num_epochs = 1
    config.sweep.batch_size = 32
    config.checkpoint.every_steps = 50
  if plan.num_epochs:
    config.train.num_epochs = plan.num_epochs
  config.data.data_dir = plan.data_dir
  config.data.train_split = FIT_SPLIT
  config.data.eval_split = EVAL_SPLIT
  if 'parametric' in config.sweep:
    config.sweep.parametric = False
  return config


def train_config(plan: Plan, train_res: int, seed: int):
  config = base_config(plan)
  config.seed = seed
  config.train.image_size = train_res
  config.stages = ('train',)
  return config


def eval_config(plan: Plan, train_res: int, seed: int, trained: epath.Path,
                resolutions: Sequence[int], split: str = EVAL_SPLIT, parametric: bool = False):
  """A sweep of the trained checkpoint (and, if asked, the parametric adaptation)."""
  config = train_config(plan, train_res, seed)
  config.stages = ('sweep',)
  config.init_from = str(trained)
  config.data.eval_split = split
  config.sweep.resolutions = tuple(sorted(set(int(r) for r in resolutions)))
  if 'parametric' in config.sweep:
    config.sweep.parametric = parametric
    if parametric and 'parametric_split' in config.sweep:
      config.sweep.parametric_split = HELDOUT_SPLIT
  return config


def finetune_config(plan: Plan, train_res: int, seed: int, trained: epath.Path, test_res: int,
                    resolutions: Sequence[int], **overrides):
  """FixRes fine-tuning of the trained checkpoint at test_res, then a validation sweep."""
  config = eval_config(plan, train_res, seed, trained, list(resolutions) + [test_res])
  config.stages = ('finetune',)
  config.finetune.test_res = int(test_res)
  for key, value in overrides.items():
    config.finetune[key] = value
  return config


# ---------------------------------------------------------------------------------------------
# Running (each run in its own workdir; finished runs are skipped)


def run_dir(root: epath.Path, train_res: int, seed: int, name: str) -> epath.Path:
  return root / f'k{train_res}_s{seed}' / name


def run_once(config, workdir: epath.Path) -> float:
  """Runs config's stages in workdir unless they finished before; returns the wall time (s)."""
  from fixres_jax import main  # pylint: disable=g-import-not-at-top
  done = workdir / f"reproduce_{'_'.join(config.stages)}.json"
  if done.exists():
    return json.loads(done.read_text())['seconds']
  workdir.mkdir(parents=True, exist_ok=True)
  logging.info('Running %s in %s', tuple(config.stages), workdir)
  start = time.perf_counter()
  main.run(config, str(workdir))
  seconds = time.perf_counter() - start
  done.write_text(json.dumps({'seconds': seconds, 'stages': list(config.stages)}))
  return seconds


def run_finetune(config, workdir: epath.Path) -> None:
  """The finetune stage, timed alone, then the validation sweep of its result."""
  run_once(config, workdir)
  sweep = config.copy_and_resolve_references()
  sweep.stages = ('sweep',)
  run_once(sweep, workdir)  # main.run finds the fine-tuned checkpoint in the workdir


def select_epochs(plan: Plan, root: epath.Path) -> Plan:
  """Chooses the training epochs on the held-out slice; returns the plan with them.

  The lowest K_train's first seed is trained with each candidate and swept on the held-out
  slice; the best top-1 there wins. The winner's run is the grid's run for that K_train and
  seed (copied, not repeated). The choice is kept in ROOT/epochs.json, so that invocations
  for other K_train or seeds use it.
  """
  record = root / 'epochs.json'
  if not record.exists() and len(plan.epochs_grid) > 1:
    low, seed = min(plan.train_res), plan.seeds[0]
    scores = {}
    for epochs in plan.epochs_grid:
      candidate = dataclasses.replace(plan, num_epochs=epochs)
      workdir = root / 'epochs' / f'e{epochs}'
      run_once(train_config(candidate, low, seed), workdir / 'train')
      run_once(eval_config(candidate, low, seed, workdir / 'train' / 'checkpoints' / 'train',
                           plan.select_resolutions(low), split=HELDOUT_SPLIT),
               workdir / 'select')
      scores[epochs] = best_heldout(workdir / 'select')['top1']
    chosen = max(scores, key=lambda e: (scores[e], -e))  # ties: the cheaper
    grid_run = run_dir(root, low, seed, 'train')
    if not grid_run.exists():
      shutil.copytree(root / 'epochs' / f'e{chosen}' / 'train', grid_run)
    record.write_text(json.dumps({'train_res': low, 'seed': seed, 'chosen': chosen,
                                  'heldout_top1': {str(e): v for e, v in scores.items()}}))
  return recorded_epochs(plan, root)


def recorded_epochs(plan: Plan, root: epath.Path) -> Plan:
  """The plan with the epochs chosen before (ROOT/epochs.json), or its only candidate."""
  record = read_json(root / 'epochs.json')
  if record:
    return dataclasses.replace(plan, num_epochs=record['chosen'])
  return dataclasses.replace(plan, num_epochs=(list(plan.epochs_grid) or [0])[0])


def train_all(plan: Plan, root: epath.Path) -> None:
  for train_res in plan.train_res:  # cheapest first: whole K_train rows finish early
    for seed in plan.seeds:
      run_once(train_config(plan, train_res, seed), run_dir(root, train_res, seed, 'train'))


def analytic_test_res(plan: Plan, train_res: int) -> dict:
  from fixres_jax import resolution  # pylint: disable=g-import-not-at-top
  config = base_config(plan)
  shapes = resolution.read_image_shapes(config.data.name, 'train', 500,
                                        plan.data_dir or None, config.data.image_key)
  return resolution.recommend_test_res(train_res, config.data.crop_pct, config.data.crop,
                                       image_shapes=shapes, samples=20_000)


def best_heldout(workdir: epath.Path) -> dict:
  """The trained network's best record of a held-out sweep (ties: the lower loss)."""
  records = json.loads((workdir / 'sweep.json').read_text())
  trained = [r for r in records if r['model'] == 'trained']
  return max(trained, key=lambda r: (r['top1'], -r['loss']))


def has_cached() -> bool:
  from fixres_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  return 'mode' in config_lib.get_base_config().finetune


def analyse_one(plan: Plan, root: epath.Path, train_res: int, seed: int, k_star: int) -> None:
  """Everything after training, for one K_train and seed."""
  trained = run_dir(root, train_res, seed, 'train') / 'checkpoints' / 'train'
  select_dir = run_dir(root, train_res, seed, 'select')
  run_once(eval_config(plan, train_res, seed, trained, plan.select_resolutions(train_res),
                       split=HELDOUT_SPLIT), select_dir)
  best = best_heldout(select_dir)['test_res']
  grid = plan.sweep_resolutions(train_res)
  sweep_config = eval_config(plan, train_res, seed, trained, grid + [train_res, k_star, best],
                             parametric=True)
  run_once(sweep_config, run_dir(root, train_res, seed, 'sweep'))
  # Cheapest-to-lose last; runs that would repeat another (same K_test) are not made twice.
  variants = {
      'ft_selected': finetune_config(plan, train_res, seed, trained, best, grid),
      'ft_train_res': finetune_config(plan, train_res, seed, trained, train_res, []),
      'bn_stats_only': finetune_config(plan, train_res, seed, trained, best, [], base_lr=0.0),
  }
  if has_cached():
    variants['cached'] = finetune_config(plan, train_res, seed, trained, best, [],
                                         mode='cached')
  if k_star not in (best, train_res):
    variants['ft_analytic'] = finetune_config(plan, train_res, seed, trained, k_star, [])
  grid_res = set(plan.train_res) | set(plan.compare_res)
  if train_res == min(grid_res):  # claim (c): fine-tuned at each higher K_train
    for high in (k for k in sorted(grid_res) if k > train_res and k not in (best, k_star)):
      variants[f'ft_at_{high}'] = finetune_config(plan, train_res, seed, trained, high, [])
  if plan.long_epochs and seed == plan.seeds[0] and train_res == min(grid_res):
    for name, mode in (('sgd_long', 'sgd'), ('cached_long', 'cached')):
      variants[name] = finetune_config(plan, train_res, seed, trained, best, [], mode=mode,
                                       num_epochs=plan.long_epochs)
  for name, config in variants.items():
    run_finetune(config, run_dir(root, train_res, seed, name))


def analyse_all(plan: Plan, root: epath.Path) -> Dict[int, dict]:
  analytic = {k: analytic_test_res(plan, k) for k in plan.train_res}
  for train_res in plan.train_res:
    for seed in plan.seeds:
      if (run_dir(root, train_res, seed, 'train') / 'reproduce_train.json').exists():
        analyse_one(plan, root, train_res, seed, analytic[train_res]['test_res'])
  return analytic



# ---------------------------------------------------------------------------------------------
# Cost


def train_flops_per_image(plan: Plan, train_res: int) -> float:
  """FLOPs of one training step per image at train_res, from XLA's cost analysis."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  config = train_config(plan, train_res, 0)
  model = train.create_model(config, 10)
  variables = train.init_variables(model, train_res, 0)
  batch_size = config.train.batch_size
  tx = train.create_optimizer(config.train, lambda step: 0.1, variables['params'])
  state = train.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                  batch_stats=variables['batch_stats'], tx=tx)
  batch = {'image': jax.ShapeDtypeStruct((batch_size, train_res, train_res, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  cost = jax.jit(train.train_step).lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) / batch_size


# ---------------------------------------------------------------------------------------------
# Collecting


def read_json(path: epath.Path, default=None):
  return json.loads(path.read_text()) if path.exists() else default


def top1_at(records: list, model: str, test_res: int) -> Optional[float]:
  for r in records:
    if r['model'] == model and r['test_res'] == test_res:
      return r['top1']
  return None


def train_step_seconds(path: epath.Path) -> float:
  """Training time as median step time x steps: robust to other jobs on a shared machine
  and to interruptions (a resumed run's wall time covers only its last part)."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  steps = [r for r in records if r['stage'] == 'train' and 'step_time_s' in r]
  return float(np.median([r['step_time_s'] for r in steps]) * max(r['step'] for r in steps))


VARIANTS = ('ft_selected', 'ft_analytic', 'ft_train_res', 'bn_stats_only', 'cached', 'sgd_long',
            'cached_long')


def collect_run(root: epath.Path, train_res: int, seed: int, k_star: int) -> Optional[dict]:
  """The numbers of one (K_train, seed): None until its training has finished."""
  workdir = functools.partial(run_dir, root, train_res, seed)
  timing = read_json(workdir('train') / 'reproduce_train.json')
  if timing is None:
    return None
  run = {'train_res': train_res, 'seed': seed, 'train_wall_seconds': timing['seconds'],
         'train_seconds': train_step_seconds(workdir('train') / 'metrics.jsonl'),
         'analytic_test_res': k_star}
  select = read_json(workdir('select') / 'sweep.json')
  if select:
    run['heldout'] = [{k: r[k] for k in ('test_res', 'top1', 'loss')}
                      for r in select if r['model'] == 'trained']
    run['selected_test_res'] = best_heldout(workdir('select'))['test_res']
  sweep = read_json(workdir('sweep') / 'sweep.json')
  if sweep:
    run['sweep'] = [{k: r[k] for k in ('model', 'test_res', 'top1', 'zero_fraction')}
                    for r in sweep]
  run['variants'] = {}
  for name in VARIANTS + tuple(f'ft_at_{k}' for k in range(8, 1025, 8)):
    records = read_json(workdir(name) / 'sweep.json')
    if not records:
      continue
    config = read_json(workdir(name) / 'config.json')
    test_res = config['finetune']['test_res']
    run['variants'][name] = {
        'test_res': test_res, 'top1': top1_at(records, 'finetuned', test_res),
        'finetune_seconds': read_json(workdir(name) / 'reproduce_finetune.json')['seconds'],
        'mode': config['finetune'].get('mode', 'sgd'),
        'epochs': config['finetune']['num_epochs'],
        'curve': [{k: r[k] for k in ('test_res', 'top1', 'zero_fraction')}
                  for r in records if r['model'] == 'finetuned']}
  return run


def stats(values) -> dict:
  """Mean and standard deviation (ddof=1, over seeds) of the non-missing values."""
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None, 'n': 0}
  return {'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          'n': len(values), 'values': [float(v) for v in values]}


def compare(a: list, b: list) -> dict:
  """a - b over the seeds where both exist: the margin (mean), its spread, and the verdict.

  The spread is the standard deviation (ddof=1) of the per-seed differences (the seeds pair
  the same trained network); the comparison holds when margin > SIGMAS x spread (and > 0).
  """
  pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
  if len(pairs) < 2:  # no spread from one seed
    return {'n': len(pairs), 'holds': None,
            'margin': float(pairs[0][0] - pairs[0][1]) if pairs else None}
  diffs = np.array([x - y for x, y in pairs])
  spread = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float('nan')
  margin = float(diffs.mean())
  return {'n': len(diffs), 'margin': margin, 'spread': spread,
          'diffs': diffs.tolist(), 'every_seed': bool((diffs > 0).all()),
          'beyond': bool(margin > 0 and margin > SIGMAS * spread),
          'holds': bool(margin > 0 and margin > SIGMAS * spread)}


def per_seed(runs: list, fn) -> list:
  out = []
  for run in runs:
    try:
      out.append(fn(run))
    except (KeyError, TypeError):
      out.append(None)
  return out


def trained_at(run: dict, test_res, model: str = 'trained'):
  return top1_at(run['sweep'], model, test_res)


def variant(run: dict, name: str, field: str = 'top1'):
  return run['variants'][name][field]


def finetuned_at(run: dict, test_res: int) -> Optional[float]:
  """Top-1 of the 'sgd' fine-tuning at test_res (whichever variant ran there)."""
  for name in (f'ft_at_{test_res}', 'ft_selected', 'ft_analytic', 'ft_train_res'):
    found = run['variants'].get(name)
    if found and found['test_res'] == test_res:
      return found['top1']
  return None



# ---------------------------------------------------------------------------------------------
# Claims


def combine(verdicts) -> Optional[bool]:
  """False if any is False, else None if any was not run (None), else True."""
  verdicts = list(verdicts)
  if not verdicts or any(v is False for v in verdicts):
    return False if verdicts else None
  return None if any(v is None for v in verdicts) else True


def claim_a(runs_by_res: Dict[int, list]) -> dict:
  """Best K_test (held-out) > K_train, and its accuracy beats K_test = K_train beyond 3 std."""
  rows = {}
  for train_res, runs in runs_by_res.items():
    selected = per_seed(runs, lambda r: r['selected_test_res'])
    at_selected = per_seed(runs, lambda r: trained_at(r, r['selected_test_res']))
    at_train = per_seed(runs, lambda r: trained_at(r, r['train_res']))
    cmp = compare(at_selected, at_train)
    above = all(k is not None and k > train_res for k in selected) and bool(selected)
    rows[train_res] = {'selected_test_res': selected, 'top1_selected': stats(at_selected),
                       'top1_train_res': stats(at_train), 'compare': cmp,
                       'selected_above_train_res': above,
                       'holds': combine([above, cmp['holds']])}
  return {'rows': rows, 'holds': combine(r['holds'] for r in rows.values())}


NO_FINETUNING = 'trained (no fine-tuning)'


def beats(c: dict) -> Optional[bool]:
  """A control is beaten when the mean margin is positive and every seed is ahead."""
  if c.get('n', 0) < 2:
    return None
  return bool(c['margin'] > 0 and c['every_seed'])


def claim_b(runs_by_res: Dict[int, list]) -> dict:
  """Fine-tuning at the selected K_test adds beyond 3 std and beats the three controls."""
  rows = {}
  for train_res, runs in runs_by_res.items():
    tuned = per_seed(runs, lambda r: variant(r, 'ft_selected'))
    controls = {
        NO_FINETUNING: per_seed(runs, lambda r: trained_at(
            r, r['selected_test_res'])),
        'fine-tuned at K_train': per_seed(runs, lambda r: variant(r, 'ft_train_res')),
        'last-BN statistics only': per_seed(runs, lambda r: variant(r, 'bn_stats_only')),
        'parametric adaptation': per_seed(runs, lambda r: trained_at(
            r, r['selected_test_res'], 'parametric')),
    }
    comparisons = {name: compare(tuned, values) for name, values in controls.items()}
    for name, c in comparisons.items():  # beyond 3 std over no fine-tuning; ahead of controls
      c['holds'] = c['holds'] if name == NO_FINETUNING else beats(c)
    rows[train_res] = {
        'top1_ft_selected': stats(tuned),
        'top1_ft_analytic': stats(per_seed(runs, lambda r: finetuned_at(
            r, r['analytic_test_res']))),
        'controls': {name: stats(values) for name, values in controls.items()},
        'compare': comparisons,
        'holds': combine(c['holds'] for c in comparisons.values())}
  return {'rows': rows, 'pooled': sign_tests(rows),
          'holds': combine(r['holds'] for r in rows.values())}


def sign_tests(rows: dict) -> dict:
  """Per control, over every trained network of the grid: how many are ahead after
  fine-tuning, and the one-sided sign-test p-value of that count (no effect: p = 1/2 each)."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  pooled = {}
  for name in next(iter(rows.values()))['compare'] if rows else ():
    diffs = [d for row in rows.values() for d in row['compare'][name].get('diffs', [])]
    ahead = sum(d > 0 for d in diffs)
    pooled[name] = {'ahead': ahead, 'n': len(diffs),
                    'p': float(scipy_stats.binomtest(ahead, len(diffs), 0.5,
                                                     alternative='greater').pvalue)
                    if diffs else None}
  return pooled


def claim_c(runs_by_res: Dict[int, list], flops: Dict[int, float]) -> dict:
  """The lowest K_train, fine-tuned at a higher K, against the network trained at that K."""
  low = min(runs_by_res)
  rows = {}
  for high in (k for k in sorted(runs_by_res) if k > low):
    tuned = stats(per_seed(runs_by_res[low], lambda r, h=high: finetuned_at(r, h)))
    native = stats(per_seed(runs_by_res[high], lambda r: trained_at(r, r['train_res'])))
    native_best = stats(per_seed(runs_by_res[high], lambda r: trained_at(
        r, r['selected_test_res'])))
    seconds = {k: stats(per_seed(runs_by_res[k], lambda r: r['train_seconds']))
               for k in (low, high)}
    holds = (None if tuned['mean'] is None or native['mean'] is None else
             bool(tuned['mean'] >= native['mean'] - native['std']))
    rows[high] = {'low': low, 'top1_low_finetuned': tuned, 'top1_high_at_high': native,
                  'top1_high_at_selected': native_best, 'train_seconds': seconds,
                  'time_ratio': (seconds[low]['mean'] / seconds[high]['mean']
                                 if seconds[high]['mean'] else None),
                  'flops_ratio': flops[low] / flops[high], 'holds': holds}
  # The claim is that *a* higher K_test reaches the network trained there; every K is shown.
  verdicts = [r['holds'] for r in rows.values()]
  holds = True if True in verdicts else combine(verdicts)
  return {'rows': rows, 'holds': holds}


def claim_cached(runs_by_res: Dict[int, list]) -> dict:
  """'cached' against 'sgd' fine-tuning at the same K_test and head epochs."""
  rows = {}
  for train_res, runs in runs_by_res.items():
    sgd = per_seed(runs, lambda r: variant(r, 'ft_selected'))
    cached = per_seed(runs, lambda r: variant(r, 'cached'))
    sgd_s = stats(per_seed(runs, lambda r: variant(r, 'ft_selected', 'finetune_seconds')))
    cached_s = stats(per_seed(runs, lambda r: variant(r, 'cached', 'finetune_seconds')))
    cmp = compare(cached, sgd)
    within = (None if cmp['n'] < 2 else
              bool(cmp['margin'] >= 0 or
                   -cmp['margin'] <= max(stats(sgd)['std'], cmp['spread'])))
    rows[train_res] = {'sgd': stats(sgd), 'cached': stats(cached), 'compare': cmp,
                       'sgd_seconds': sgd_s, 'cached_seconds': cached_s,
                       'speedup': (sgd_s['mean'] / cached_s['mean']
                                   if cached_s['mean'] else None),
                       'holds': within}
  long = {}
  for train_res, runs in runs_by_res.items():
    for run in runs:
      if {'sgd_long', 'cached_long'} <= set(run['variants']):
        sgd, cached = run['variants']['sgd_long'], run['variants']['cached_long']
        long[train_res] = {'seed': run['seed'], 'epochs': sgd['epochs'],
                           'test_res': sgd['test_res'], 'sgd': sgd['top1'],
                           'cached': cached['top1'], 'sgd_seconds': sgd['finetune_seconds'],
                           'cached_seconds': cached['finetune_seconds']}
  return {'rows': rows, 'long': long,
          'holds': combine(r['holds'] for r in rows.values())}



# ---------------------------------------------------------------------------------------------
# Report


def pct(s: dict) -> str:
  """'mean ± std' in percent, from stats()."""
  if not s or s.get('mean') is None:
    return 'not run'
  return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def margin_text(c: dict) -> str:
  if not c or not c.get('n'):
    return 'not run'
  if c['n'] < 2:
    return f"{100 * c['margin']:+.2f} pts (one seed: no spread)"
  verdict = 'beyond' if c['beyond'] else 'NOT beyond'
  return (f"{100 * c['margin']:+.2f} pts (per-seed spread {100 * c['spread']:.2f}, "
          f"{verdict} {SIGMAS:g} std; per seed {', '.join(f'{100 * d:+.1f}' for d in c['diffs'])})")


VERDICTS = {True: 'HOLDS', False: 'DOES NOT HOLD', None: 'UNDECIDED (runs missing, or one seed)'}


def verdict(holds) -> str:
  return VERDICTS[holds]


def curve_stats(runs: list, fn) -> Dict[int, dict]:
  """{test_res: stats over seeds} of the per-seed curves fn(run) -> {test_res: value}."""
  curves = per_seed(runs, fn)
  resolutions = sorted({k for c in curves if c for k in c})
  return {k: stats([c.get(k) if c else None for c in curves]) for k in resolutions}


def sweep_curve(model: str, field: str = 'top1'):
  return lambda r: {x['test_res']: x[field] for x in r['sweep'] if x['model'] == model}


def variant_curve(name: str, field: str = 'top1'):
  return lambda r: {x['test_res']: x[field] for x in r['variants'][name]['curve']}


def plot_accuracy(runs_by_res: Dict[int, list], analytic: Dict[int, dict], path: epath.Path):
  """Top-1 against K_test, one panel per K_train: trained, parametric, fine-tuned."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(4.4 * len(runs_by_res), 3.8), dpi=110)
  axes = fig.subplots(1, len(runs_by_res), squeeze=False)[0]
  curves = (('trained', sweep_curve('trained')), ('parametric', sweep_curve('parametric')),
            ('fine-tuned at selected K_test', variant_curve('ft_selected')))
  for ax, (train_res, runs) in zip(axes, sorted(runs_by_res.items())):
    for label, fn in curves:
      points = [(k, v) for k, v in curve_stats(runs, fn).items() if v['mean'] is not None]
      if points:
        x = [k for k, _ in points]
        y = np.array([100 * v['mean'] for _, v in points])
        e = np.array([100 * v['std'] for _, v in points])
        ax.plot(x, y, marker='o', markersize=3, label=label)
        ax.fill_between(x, y - e, y + e, alpha=0.2)
    ax.axvline(train_res, color='black', linestyle=':', label=f'K_train = {train_res}')
    k_star = analytic[train_res]['test_res_exact']
    ax.axvline(k_star, color='gray', linestyle='--', label=f'analytic K_test* = {k_star:.0f}')
    ax.set_title(f'trained at {train_res} px ({len(runs)} seeds)')
    ax.set_xlabel('test resolution K_test (px)')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('validation top-1 (%), mean ± std')
  axes[0].legend(fontsize='small')
  save_figure(fig, path)


def plot_zero_fraction(runs_by_res: Dict[int, list], path: epath.Path):
  """Fraction of exactly-zero pooled features against K_test, per K_train."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(6.0, 4.0), dpi=110)
  ax = fig.add_subplot()
  for train_res, runs in sorted(runs_by_res.items()):
    for label, fn, style in (('trained', sweep_curve('trained', 'zero_fraction'), '-'),
                             ('fine-tuned', variant_curve('ft_selected', 'zero_fraction'),
                              '--')):
      points = [(k, v) for k, v in curve_stats(runs, fn).items() if v['mean'] is not None]
      if points:
        line, = ax.plot([k for k, _ in points], [100 * v['mean'] for _, v in points],
                        style, marker='o', markersize=3,
                        label=f'K_train {train_res}, {label}')
        if label == 'trained':
          ax.axvline(train_res, color=line.get_color(), linestyle=':', alpha=0.5)
  ax.set_xlabel('test resolution K_test (px)')
  ax.set_ylabel('pooled features exactly zero (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  save_figure(fig, path)


def save_figure(fig, path: epath.Path) -> None:
  with path.open('wb') as f:
    fig.savefig(f, format='png', bbox_inches='tight')


def run_times(root: epath.Path, runs_by_res: Dict[int, list]) -> tuple:
  """(sum of the runs' wall times, first start to last end) over the reported runs (s)."""
  spans = []
  for k, runs in runs_by_res.items():
    for run in runs:
      for path in run_dir(root, k, run['seed'], '').glob('*/reproduce_*.json'):
        seconds = json.loads(path.read_text())['seconds']
        end = os.path.getmtime(path)
        spans.append((end - seconds, end))
  return (sum(end - start for start, end in spans),
          max(end for _, end in spans) - min(start for start, _ in spans))


def write_report(plan: Plan, root: epath.Path, out: epath.Path, seconds: float,
                 command: str = '') -> dict:
  """Collects every finished run under root and writes RESULTS.md, results.json, figures."""
  analytic = {k: analytic_test_res(plan, k) for k in plan.train_res}
  runs_by_res = {}
  for k in plan.train_res:
    runs = [collect_run(root, k, s, analytic[k]['test_res']) for s in plan.seeds]
    runs = [r for r in runs if r and 'sweep' in r and 'selected_test_res' in r]
    if runs:
      runs_by_res[k] = runs
  if not runs_by_res:
    raise ValueError(f'No finished runs under {root}: run with --phase=all first.')
  flops = {k: train_flops_per_image(plan, k) for k in runs_by_res}
  claims = {'a': claim_a(runs_by_res), 'b': claim_b(runs_by_res),
            'c': claim_c(runs_by_res, flops) if len(runs_by_res) > 1 else
                 {'rows': {}, 'holds': None},
            'cached_vs_sgd': claim_cached(runs_by_res)}
  compute, elapsed = run_times(root, runs_by_res)
  results = {
      'command': command or 'fixres_jax.reproduce.reproduce(...)',
      'seconds_this_invocation': seconds, 'seconds_all_runs': compute,
      'seconds_elapsed': elapsed,
      'plan': dataclasses.asdict(plan), 'heldout_split': HELDOUT_SPLIT,
      'fit_split': FIT_SPLIT, 'eval_split': EVAL_SPLIT, 'sigmas': SIGMAS,
      'analytic': {k: {f: v[f] for f in ('test_res', 'test_res_exact', 'expected_sigma')}
                   for k, v in analytic.items()},
      'train_flops_per_image': flops, 'claims': claims,
      'epochs_selection': read_json(root / 'epochs.json'),
      'runs': [r for runs in runs_by_res.values() for r in runs]}
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps(results, indent=1))
  plot_accuracy(runs_by_res, analytic, out / 'accuracy_vs_test_res.png')
  plot_zero_fraction(runs_by_res, out / 'zero_fraction.png')
  (out / 'RESULTS.md').write_text(format_report(plan, results, runs_by_res))
  return results


def format_report(plan: Plan, results: dict, runs_by_res: Dict[int, list]) -> str:
  """RESULTS.md, every number from `results`."""
  config = base_config(plan)
  claims = results['claims']
  seeds_done = {k: [r['seed'] for r in runs] for k, runs in runs_by_res.items()}
  missing = [(k, s) for k in plan.train_res for s in plan.seeds
             if s not in seeds_done.get(k, [])]
  lines = [
      '# FixRes on the embedded dataset: results',
      '',
      'Generated by `fixres_jax/reproduce.py`; do not edit by hand. This file was written by',
      '',
      f"    {results['command']}",
      '',
      'from the runs that `--phase=all` (the default) makes and keeps under --results_root, one '
      'workdir per run; a re-run skips finished runs. Runs for different K_train or seeds may '
      'come from separate invocations of the same command with --train_res/--seeds subsets '
      '(run in parallel here).',
      '',
      f"Time: {results['seconds_elapsed'] / 60:.1f} min from the first run's start to the last "
      f"run's end; {results['seconds_all_runs'] / 60:.1f} min summed over all runs (they "
      'overlapped); on a 2-core CPU shared with other jobs, so every wall time here is noisy.'
      + (' **--quick: a tiny CI grid; the numbers mean nothing.**' if plan.quick else ''),
      '',
      '## Setup',
      '',
      f"- Data: `{config.data.name}`; networks are trained and fine-tuned on "
      f"`{FIT_SPLIT}`, the fine-tuning K_test is selected on the held-out `{HELDOUT_SPLIT}` "
      f"(never on validation), and every accuracy below is on `{EVAL_SPLIT}`.",
      f"- Model and training: configs/demo.py (ResNet, stages {tuple(config.model.stage_sizes)},"
      f" {config.model.block} blocks, widths {config.model.num_filters}-"
      f"{config.model.num_filters * 2 ** (len(config.model.stage_sizes) - 1)}), "
      f"{config.train.num_epochs} epochs at every K_train, batch {config.train.batch_size}, "
      f"{config.train.schedule} schedule, base lr {config.train.base_lr}; "
      f"`{config.data.crop}` RandomResizedCrop.",
      format_epochs_selection(results['epochs_selection']),
      f"- FixRes fine-tuning: {config.finetune.num_epochs} epochs, batch "
      f"{config.finetune.batch_size}, base lr {config.finetune.base_lr} (per 512), augment "
      f"`{config.finetune.augment}`; the last BN's running statistics and the classifier.",
      f"- K_train grid {list(plan.train_res)}, seeds {list(plan.seeds)}"
      + (f"; NOT finished: {missing}." if missing else '; all runs finished.'),
      f"- Statistics: mean ± std over seeds (std with ddof=1). A comparison A > B "
      f"'beyond {SIGMAS:g} std' means: the mean of the per-seed differences A - B (each seed "
      f"is one trained network, so the differences are paired) exceeds {SIGMAS:g} times their "
      'standard deviation. With 3 seeds this is a strict bar (std of 3 values is noisy).',
      '',
      '## Claims',
      '']
  lines += format_claim_a(claims['a']) + format_claim_b(claims['b'])
  lines += format_claim_c(claims['c']) + format_cached(claims['cached_vs_sgd'],
                                                        config.finetune.num_epochs)
  lines += format_tables(results, runs_by_res)
  return '\n'.join(lines) + '\n'


def format_epochs_selection(record: Optional[dict]) -> str:
  if not record:
    return '- Training epochs: fixed (no choice made).'
  scores = ', '.join(f'{e} epochs {100 * v:.1f}%' for e, v in record['heldout_top1'].items())
  return (f"- Training epochs chosen on `{HELDOUT_SPLIT}`: K_train {record['train_res']}, seed "
          f"{record['seed']}, best held-out top-1 over K_test: {scores}; chosen: "
          f"{record['chosen']}.")


def format_claim_a(claim: dict) -> List[str]:
  lines = [f"### (a) The best K_test is above K_train, beyond {SIGMAS:g} std: "
           f"{verdict(claim['holds'])}", '',
           '| K_train | K_test selected (per seed) | top-1 at K_train | top-1 at selected | '
           'margin | verdict |', '|---|---|---|---|---|---|']
  for k, row in sorted(claim['rows'].items()):
    lines.append(f"| {k} | {row['selected_test_res']} | {pct(row['top1_train_res'])} | "
                 f"{pct(row['top1_selected'])} | {margin_text(row['compare'])} | "
                 f"{verdict(row['holds'])} |")
  return lines + ['']


def format_claim_b(claim: dict) -> List[str]:
  lines = [f"### (b) FixRes fine-tuning at the selected K_test adds more, beyond {SIGMAS:g} "
           f"std, and beats the controls: {verdict(claim['holds'])}", '',
           f"Over no fine-tuning the margin must exceed {SIGMAS:g} std of the per-seed "
           'differences; a control is beaten when the mean margin is positive and every seed is '
           f"ahead (whether that margin is also beyond {SIGMAS:g} std is shown).", '',
           '| K_train | fine-tuned at selected | at analytic K_test* | against | control '
           'top-1 | margin | verdict |', '|---|---|---|---|---|---|---|']
  for k, row in sorted(claim['rows'].items()):
    for name, c in row['compare'].items():
      lines.append(f"| {k} | {pct(row['top1_ft_selected'])} | {pct(row['top1_ft_analytic'])} "
                   f"| {name} | {pct(row['controls'][name])} | {margin_text(c)} | "
                   f"{verdict(c['holds'])} |")
  pooled = [f"{name}: {t['ahead']} of {t['n']} (p = {t['p']:.3f})"
            for name, t in claim.get('pooled', {}).items() if t['n']]
  if pooled:
    lines += ['', 'Over every trained network of the grid, fine-tuned networks ahead of each '
              'alternative (one-sided sign test): ' + '; '.join(pooled) + '.']
  return lines + ['']


def format_claim_c(claim: dict) -> List[str]:
  lines = [f"### (c) Trained at the lowest K_train and fine-tuned at a higher K_test, it "
           'reaches the network trained at that K ('
           + '; '.join(f"K = {k}: {verdict(row['holds'])}"
                       for k, row in sorted(claim['rows'].items()))
           + f"): {verdict(claim['holds'])}", '',
           'Holds at K when the low-resolution network fine-tuned at K is at least the mean '
           'minus one std of the network trained and tested at K; the claim holds when it holds '
           'at some K above the lowest K_train. Training time is the median step '
           'time times the number of steps (the same epochs at every K_train); other jobs shared '
           'the 2 cores unevenly, so the FLOPs ratio (XLA cost analysis of one train_step) is '
           'the reliable measure of cost.', '',
           '| trained at | fine-tuned at K | its top-1 | trained at K, tested at K | '
           'trained at K, at its selected K_test | train time ratio (median step time x steps) | '
           'FLOPs ratio | verdict |',
           '|---|---|---|---|---|---|---|---|']
  for high, row in sorted(claim['rows'].items()):
    ratio = f"{row['time_ratio']:.2f}" if row['time_ratio'] else 'n/a'
    lines.append(f"| {row['low']} | {high} | {pct(row['top1_low_finetuned'])} | "
                 f"{pct(row['top1_high_at_high'])} | {pct(row['top1_high_at_selected'])} | "
                 f"{ratio} ({row['train_seconds'][row['low']]['mean']:.0f} s / "
                 f"{row['train_seconds'][high]['mean']:.0f} s) | {row['flops_ratio']:.2f} | "
                 f"{verdict(row['holds'])} |")
  return lines + ['']


def format_cached(claim: dict, epochs) -> List[str]:
  lines = ["### 'cached' against 'sgd' fine-tuning, same K_test and head epochs: "
           f"{verdict(claim['holds'])}", '',
           "Holds when 'cached' is not below 'sgd' by more than the larger of sgd's seed "
           'std and the per-seed spread. Wall times are whole finetune-stage runs (dataset '
           "loading and compilation included). 'cached' costs two forward passes plus the head's "
           "epochs on stored features, 'sgd' one forward pass per epoch, so the speed-up grows "
           f"with the epochs; here both ran {epochs} epochs (the demo's).", '',
           "| K_train | sgd top-1 | cached top-1 | cached - sgd | sgd s | cached s | speed-up |",
           '|---|---|---|---|---|---|---|']
  for k, row in sorted(claim['rows'].items()):
    speedup = f"{row['speedup']:.1f}x" if row['speedup'] else 'n/a'
    sgd_s, cached_s = row['sgd_seconds'], row['cached_seconds']
    seconds = [f"{x['mean']:.1f}" if x['mean'] is not None else 'not run'
               for x in (sgd_s, cached_s)]
    lines.append(f"| {k} | {pct(row['sgd'])} | {pct(row['cached'])} | "
                 f"{margin_text(row['compare'])} | {seconds[0]} | {seconds[1]} | {speedup} |")
  for k, row in sorted(claim.get('long', {}).items()):
    lines += ['', f"At {row['epochs']} epochs (K_train {k}, seed {row['seed']}, K_test "
              f"{row['test_res']}, one run each): 'sgd' {100 * row['sgd']:.2f}% in "
              f"{row['sgd_seconds']:.0f} s, 'cached' {100 * row['cached']:.2f}% in "
              f"{row['cached_seconds']:.0f} s: {row['sgd_seconds'] / row['cached_seconds']:.1f}x "
              'faster.']
  return lines + ['']


def format_tables(results: dict, runs_by_res: Dict[int, list]) -> List[str]:
  lines = ['## Test-resolution sweeps (validation top-1 %, mean ± std over seeds)', '',
           '![accuracy against K_test](accuracy_vs_test_res.png)', '',
           '![zero fraction](zero_fraction.png)', '']
  for k, runs in sorted(runs_by_res.items()):
    analytic = results['analytic'][k]
    lines += [f"### K_train = {k} (analytic K_test* = {analytic['test_res_exact']:.1f}, "
              f"E[sigma] = {analytic['expected_sigma']:.3f}; train time "
              f"{stats([r['train_seconds'] for r in runs])['mean']:.0f} s (median step x "
              f"steps; wall {stats([r['train_wall_seconds'] for r in runs])['mean']:.0f} s), "
              f"{results['train_flops_per_image'][k] / 1e6:.1f} MFLOPs per training image)",
              '', '| K_test | trained | parametric | fine-tuned at selected | zero features '
              '(trained) |', '|---|---|---|---|---|']
    trained = curve_stats(runs, sweep_curve('trained'))
    parametric = curve_stats(runs, sweep_curve('parametric'))
    tuned = curve_stats(runs, variant_curve('ft_selected'))
    zeros = curve_stats(runs, sweep_curve('trained', 'zero_fraction'))
    for res in sorted(trained):
      lines.append(f"| {res} | {pct(trained[res])} | {pct(parametric.get(res))} | "
                   f"{pct(tuned.get(res))} | {pct(zeros.get(res))} |")
    lines.append('')
  return lines


def reproduce(plan: Plan, root: epath.Path, out: epath.Path, phase: str = 'all',
              command: str = '') -> Optional[dict]:
  """Runs `phase` of the reproduction; returns results.json's content when it writes one."""
  start = time.perf_counter()
  if phase in ('train', 'all'):
    plan = select_epochs(plan, root)
    train_all(plan, root)
  else:
    plan = recorded_epochs(plan, root)
  if phase == 'all':
    analyse_all(plan, root)
  if phase in ('all', 'report'):
    return write_report(plan, root, out, time.perf_counter() - start, command)
  return None


def main(argv):
  del argv
  from fixres_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  main_lib.quiet_library_logs()
  plan = Plan(train_res=[int(k) for k in FLAGS.train_res], seeds=[int(s) for s in FLAGS.seeds],
              quick=FLAGS.quick, data_dir=FLAGS.data_dir,
              compare_res=[int(k) for k in FLAGS.compare_res],
              long_epochs=0 if FLAGS.quick else FLAGS.long_epochs,
              epochs_grid=QUICK_EPOCHS if FLAGS.quick and not FLAGS['epochs'].present else
              [int(e) for e in FLAGS.epochs])
  if FLAGS.quick:  # the tiny grid, unless given explicitly
    plan = dataclasses.replace(
        plan, train_res=plan.train_res if FLAGS['train_res'].present else QUICK_TRAIN_RES,
        seeds=plan.seeds if FLAGS['seeds'].present else QUICK_SEEDS)
  reproduce(plan, epath.Path(FLAGS.results_root), epath.Path(FLAGS.out), FLAGS.phase,
            'python -m fixres_jax.reproduce ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  define_flags()
  app.run(main)
