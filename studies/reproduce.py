"""Reproduces the paper's claims on the embedded dataset and generates docs/RESULTS.md.

  python -m studies.reproduce --out=docs --data_dir=/tmp/tfds_demo \
      --results_root=/tmp/fixres_repro [--demo_root=/tmp/demo4] [--seeds=0,1,2] \
      [--train_res=48,64,96] [--quick]

For each K_train and seed: train (configs/demo.py at K_train: the demo's dataset, network and
epochs) on train[:90%]; pick the best K_test on the held-out train[90%:] (never on validation);
sweep K_test on the validation split (the trained network and the parametric adaptation);
FixRes fine-tuning (the paper's: the official 'sgd' mode and K_test from the trained network,
whatever the demo's finetune.mode and auto_model) at the analytic K_test*, at the selected
K_test and, as controls, at K_test = K_train and with the head's learning rate 0 (last-BN
statistics only); 'cached' against 'sgd' fine-tuning at the selected K_test. With several
--epochs, the training epochs are first chosen on the held-out slice (the lowest K_train's
first seed is trained with each; the best held-out top-1 wins). With --demo_root
(studies.demo's finished workdirs ROOT/seed_N), a training run that trains exactly as the
demo's seed did (at the demo's K_train) is copied from it rather than repeated (train_once).
Every run has its own workdir under --results_root, and a re-run skips finished runs, so an
interrupted reproduction resumes where it stopped. Then it writes OUT/RESULTS.md (every number
generated), OUT/results.json (the raw numbers) and the figures OUT/accuracy_vs_test_res.png and
OUT/zero_fraction.png.

This module plans and runs the grid and collects each run's numbers; studies/claims.py
judges the claims from them and studies/reproduce_report.py writes the files. The recipe,
modern and copy_accuracy studies run their grids with its configs and run_once.

--quick runs a tiny grid on fixres_synthetic/tiny (CI): the same files, numbers meaningless.
"""

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

from studies import claims
from studies import common
from studies import reproduce_report

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (other modules imported in
  the same process, e.g. by the tests, define flags of the same names)."""
  flags.DEFINE_string('out', 'docs', 'Where RESULTS.md, results.json and the figures go.')
  flags.DEFINE_string('results_root', '/tmp/fixres_repro', 'One workdir per run under here.')
  flags.DEFINE_string('data_dir', '', 'tfds data dir for fixres_synthetic ("" = tfds default).')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds: each is a full train + fine-tune run.')
  flags.DEFINE_list('train_res', ['48', '64', '96'], 'The K_train grid.')
  flags.DEFINE_list('epochs', ['8'], "Training epochs to choose from on the held-out slice "
                    "(one value, the default: the demo's, no choice).")
  flags.DEFINE_string('demo_root', '', "Finished demo workdirs (ROOT/seed_N, studies.demo): a "
                      "training run that trains exactly as seed N's demo did copies it.")
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
  demo_root: str = ''  # finished demo workdirs whose training runs reuse (train_once)

  def sweep_resolutions(self, train_res: int) -> List[int]:
    """Validation sweep: 16 px steps from K_train - 16 to 2 K_train (the figure's x-axis)."""
    if self.quick:  # few resolutions: each one is compiled
      return [train_res, train_res + 8, train_res + 16]
    return list(range(max(16, train_res - 16), 2 * train_res + 1, 16))

  def select_resolutions(self, train_res: int) -> List[int]:
    """Held-out selection grid: the sweep's (each resolution is one pass over the slice)."""
    return self.sweep_resolutions(train_res)


QUICK_TRAIN_RES, QUICK_SEEDS, QUICK_EPOCHS = (16, 24), (0, 1), (1, 2)
DATASET = 'fixres_synthetic/default'  # the demo's dataset: 10,000 train, 2,000 validation images


# ---------------------------------------------------------------------------------------------
# Configs


def base_config(plan: Plan):
  """configs/demo.py, or a tiny model on fixres_synthetic/tiny for --quick."""
  config = common.load_demo_config()
  config.data.name = DATASET
  if plan.quick:
    config.data.name = 'fixres_synthetic/tiny'
    config.data.shuffle_buffer = 256
    config.model.stage_sizes = (1, 1)
    config.model.num_filters = 8
    config.train.batch_size = 32
    config.train.num_epochs = 2
    config.train.log_every_steps = 4
    config.finetune.log_every_steps = 4
    config.finetune.batch_size = 32
    config.finetune.num_epochs = 1
    config.sweep.batch_size = 32
    config.checkpoint.every_steps = 50
  if plan.num_epochs:
    config.train.num_epochs = plan.num_epochs
  config.data.data_dir = plan.data_dir
  config.data.train_split = FIT_SPLIT
  config.data.eval_split = EVAL_SPLIT
  config.sweep.parametric = False
  # The paper's protocol whatever the demo's choices: K_test from the trained network's
  # held-out curve (select_and_sweep) and fine-tuning in the official 'sgd' mode, which the
  # 'cached' variant is compared with.
  config.finetune.auto_model = 'trained'
  config.finetune.mode = 'sgd'
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
  config.sweep.parametric = parametric
  if parametric:
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
  from fixres_jax import recipe  # pylint: disable=g-import-not-at-top
  done = workdir / f"reproduce_{'_'.join(config.stages)}.json"
  if done.exists():
    return common.read_json(done)['seconds']
  workdir.mkdir(parents=True, exist_ok=True)
  logging.info('Running %s in %s', tuple(config.stages), workdir)
  start = time.perf_counter()
  recipe.run(config, str(workdir))
  seconds = time.perf_counter() - start
  done.write_text(json.dumps({'seconds': seconds, 'stages': list(config.stages)}))
  return seconds


def train_once(plan: Plan, config, workdir: epath.Path) -> None:
  """run_once for a training run, or a copy of the demo's finished training when the run
  would train exactly as the demo seed did (plan.demo_root)."""
  demo = epath.Path(plan.demo_root) / f'seed_{config.seed}' if plan.demo_root else None
  done = workdir / 'reproduce_train.json'
  if demo is not None and not done.exists() and trains_as_demo(config, demo):
    copy_demo_training(demo, workdir)
    return
  run_once(config, workdir)


def trains_as_demo(config, demo: epath.Path) -> bool:
  """Whether `config` trains as the demo workdir's run did: no field that the train stage
  depends on (rerun.field_stage) differs from the demo's config.json, and another data dir
  holds the same dataset (rerun lets the data move; a study may point at an altered copy of
  it under the same name, as studies.copy_accuracy does)."""
  from fixres_jax import rerun  # pylint: disable=g-import-not-at-top
  saved = common.read_json(demo / rerun.CONFIG_NAME)
  if saved is None or not (demo / 'checkpoints' / 'train').exists():
    return False
  changes = rerun.find_changes(rerun.flatten(saved), rerun.config_values(config))
  if 'data.data_dir' in changes:
    old, new = (describe_dataset(d, config.data.name) for d in changes['data.data_dir'])
    if not old or old != new:
      return False
  return not [name for name in changes if rerun.field_stage(name) == 'train']


def describe_dataset(data_dir: str, name: str) -> dict:
  """What tells a tfds dataset's copies apart: per version, its record files and their sizes
  (a downscaled copy keeps the original's dataset_info.json, so that cannot); {} when
  data_dir does not hold it."""
  root = epath.Path(data_dir or os.path.expanduser('~/tensorflow_datasets')) / name
  described = {}
  for info in sorted(root.glob('*/dataset_info.json')):
    described[info.parent.name] = sorted(
        (f.name, f.stat().length) for f in info.parent.glob('*.tfrecord*'))
  return described


def copy_demo_training(demo: epath.Path, workdir: epath.Path) -> None:
  """The demo's training checkpoint, config and training metrics in workdir, marked as
  finished with its median step time x steps and where it came from."""
  logging.info('Reusing the training of %s in %s', demo, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  shutil.rmtree(workdir / 'checkpoints' / 'train', ignore_errors=True)  # an unfinished start
  shutil.copytree(demo / 'checkpoints' / 'train', workdir / 'checkpoints' / 'train')
  shutil.copy(demo / 'config.json', workdir / 'config.json')
  lines = (demo / 'metrics.jsonl').read_text().splitlines()
  (workdir / 'metrics.jsonl').write_text(
      ''.join(f'{line}\n' for line in lines if json.loads(line)['stage'] == 'train'))
  (workdir / 'reproduce_train.json').write_text(json.dumps({
      'seconds': train_step_seconds(workdir / 'metrics.jsonl'), 'stages': ['train'],
      'copied_from': str(demo)}))


def copied_from(workdir: epath.Path) -> Optional[str]:
  """The demo workdir a finished training run was copied from (train_once), or None."""
  return common.read_json(workdir / 'reproduce_train.json', {}).get('copied_from')


def run_finetune(config, workdir: epath.Path) -> None:
  """The finetune stage, timed alone, then the validation sweep of its result."""
  run_once(config, workdir)
  sweep = config.copy_and_resolve_references()
  sweep.stages = ('sweep',)
  run_once(sweep, workdir)  # recipe.run finds the fine-tuned checkpoint in the workdir


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
  record = common.read_json(root / 'epochs.json')
  if record:
    return dataclasses.replace(plan, num_epochs=record['chosen'])
  return dataclasses.replace(plan, num_epochs=(list(plan.epochs_grid) or [0])[0])


def train_all(plan: Plan, root: epath.Path) -> None:
  for train_res in plan.train_res:  # cheapest first: whole K_train rows finish early
    for seed in plan.seeds:
      train_once(plan, train_config(plan, train_res, seed),
                 run_dir(root, train_res, seed, 'train'))


def analytic_test_res(plan: Plan, train_res: int, seed: int) -> dict:
  """The analytic K_test* that the (K_train, seed) run's own sweep computes: the library's
  function on the run's config (its training split, crop sampler and seed)."""
  from fixres_jax import analysis  # pylint: disable=g-import-not-at-top
  return analysis.analytic_test_res(train_config(plan, train_res, seed))


def best_heldout(workdir: epath.Path) -> dict:
  """The trained network's best record of a held-out sweep, by the run's
  finetune.auto_metric, as finetune.test_res='auto' chooses (analysis.best_record)."""
  from fixres_jax import analysis  # pylint: disable=g-import-not-at-top
  records = common.read_json(workdir / 'sweep.json')
  metric = common.read_json(workdir / 'config.json')['finetune']['auto_metric']
  return analysis.best_record([r for r in records if r['model'] == 'trained'], metric)


# The speed comparison of 'cached' against 'sgd' fine-tuning judges no claim of the paper: its
# runs come after every claim's runs, over all networks, so a stopped grid has whole claims.
LATE_VARIANTS = ('cached', 'sgd_long', 'cached_long')


def select_and_sweep(plan: Plan, root: epath.Path, train_res: int, seed: int,
                     k_star: int) -> None:
  """K_test selected on the held-out slice, and the validation sweep (claim (a))."""
  trained = run_dir(root, train_res, seed, 'train') / 'checkpoints' / 'train'
  select_dir = run_dir(root, train_res, seed, 'select')
  run_once(eval_config(plan, train_res, seed, trained, plan.select_resolutions(train_res),
                       split=HELDOUT_SPLIT), select_dir)
  best = best_heldout(select_dir)['test_res']
  sweep_config = eval_config(plan, train_res, seed, trained,
                             plan.sweep_resolutions(train_res) + [train_res, k_star, best],
                             parametric=True)
  run_once(sweep_config, run_dir(root, train_res, seed, 'sweep'))


def finetune_variants(plan: Plan, root: epath.Path, train_res: int, seed: int,
                      k_star: int) -> dict:
  """{name: config} of the fine-tuning runs of one (K_train, seed), after select_and_sweep.

  Runs that would repeat another (the same K_test) are not made twice.
  """
  trained = run_dir(root, train_res, seed, 'train') / 'checkpoints' / 'train'
  best = best_heldout(run_dir(root, train_res, seed, 'select'))['test_res']
  grid = plan.sweep_resolutions(train_res)
  variants = {
      'ft_selected': finetune_config(plan, train_res, seed, trained, best, grid),
      'ft_train_res': finetune_config(plan, train_res, seed, trained, train_res, []),
      'bn_stats_only': finetune_config(plan, train_res, seed, trained, best, [], base_lr=0.0),
      'cached': finetune_config(plan, train_res, seed, trained, best, [], mode='cached'),
  }
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
  return variants


def analyse_all(plan: Plan, root: epath.Path) -> None:
  """Everything after training, for every (K_train, seed) whose training has finished, in
  passes over them all: selection and sweep (claim (a)), then the claims' fine-tuning runs,
  then LATE_VARIANTS."""
  done = [(k, s) for k in plan.train_res for s in plan.seeds
          if (run_dir(root, k, s, 'train') / 'reproduce_train.json').exists()]
  k_star = {(k, s): analytic_test_res(plan, k, s)['test_res'] for k, s in done}
  for k, s in done:
    select_and_sweep(plan, root, k, s, k_star[k, s])
  variants = {(k, s): finetune_variants(plan, root, k, s, k_star[k, s]) for k, s in done}
  for late in (False, True):
    for (k, s), configs in variants.items():
      for name, config in configs.items():
        if (name in LATE_VARIANTS) == late:
          run_finetune(config, run_dir(root, k, s, name))


# ---------------------------------------------------------------------------------------------
# Cost


def train_flops_per_image(plan: Plan, train_res: int) -> float:
  """FLOPs of one training step per image at train_res, from XLA's cost analysis."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fixres_jax import stage  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  config = train_config(plan, train_res, 0)
  model = train.create_model(config, 10)
  variables = train.init_variables(model, train_res, 0)
  batch_size = config.train.batch_size
  tx = train.create_optimizer(config.train, lambda step: 0.1, variables['params'])
  state = stage.create_train_state(model, variables, tx)
  batch = {'image': jax.ShapeDtypeStruct((batch_size, train_res, train_res, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  cost = jax.jit(train.train_step).lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) / batch_size


# ---------------------------------------------------------------------------------------------
# Collecting


def train_step_seconds(path: epath.Path) -> float:
  """Training time as median step time x steps: robust to other jobs on a shared machine
  and to interruptions (a resumed run's wall time covers only its last part)."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  steps = [r for r in records if r['stage'] == 'train' and 'step_time_s' in r]
  return float(np.median([r['step_time_s'] for r in steps]) * max(r['step'] for r in steps))


def finished_sweep(workdir: epath.Path) -> Optional[list]:
  """The sweep.json records of a run whose sweep has finished (run_once's record), or None:
  a sweep writes its file as it goes."""
  if not (workdir / 'reproduce_sweep.json').exists():
    return None
  return common.read_json(workdir / 'sweep.json')


def collect_run(root: epath.Path, train_res: int, seed: int, k_star: int) -> Optional[dict]:
  """The numbers of one (K_train, seed): None until its training has finished."""
  workdir = functools.partial(run_dir, root, train_res, seed)
  timing = common.read_json(workdir('train') / 'reproduce_train.json')
  if timing is None:
    return None
  run = {'train_res': train_res, 'seed': seed, 'train_wall_seconds': timing['seconds'],
         'train_copied_from': copied_from(workdir('train')),
         'train_seconds': train_step_seconds(workdir('train') / 'metrics.jsonl'),
         'analytic_test_res': k_star}
  select = finished_sweep(workdir('select'))
  if select:
    run['heldout'] = [{k: r[k] for k in ('test_res', 'top1', 'loss')}
                      for r in select if r['model'] == 'trained']
    run['selected_test_res'] = best_heldout(workdir('select'))['test_res']
  sweep = finished_sweep(workdir('sweep'))
  if sweep:
    run['sweep'] = [{k: r[k] for k in ('model', 'test_res', 'top1', 'zero_fraction')}
                    for r in sweep]
  run['variants'] = {}
  for name in claims.VARIANTS + tuple(f'ft_at_{k}' for k in range(8, 1025, 8)):
    records = finished_sweep(workdir(name))
    if not records:
      continue
    config = common.read_json(workdir(name) / 'config.json')
    test_res = config['finetune']['test_res']
    run['variants'][name] = {
        'test_res': test_res, 'top1': claims.top1_at(records, 'finetuned', test_res),
        'finetune_seconds': common.read_json(
            workdir(name) / 'reproduce_finetune.json')['seconds'],
        'mode': config['finetune']['mode'],
        'epochs': config['finetune']['num_epochs'],
        'curve': [{k: r[k] for k in ('test_res', 'top1', 'zero_fraction')}
                  for r in records if r['model'] == 'finetuned']}
  return run


def run_times(root: epath.Path, runs_by_res: Dict[int, list]) -> tuple:
  """(sum of the runs' wall times, first start to last end) over the reported runs (s)."""
  spans = []
  for k, runs in runs_by_res.items():
    for run in runs:
      for path in run_dir(root, k, run['seed'], '').glob('*/reproduce_*.json'):
        seconds = common.read_json(path)['seconds']
        end = os.path.getmtime(path)
        spans.append((end - seconds, end))
  return (sum(end - start for start, end in spans),
          max(end for _, end in spans) - min(start for start, _ in spans))


def summarize_analytic(by_seed: Dict[int, dict]) -> dict:
  """One K_train's analytic K_test*: the first seed's, and each seed's (the Monte Carlo draws
  with the run's seed, so the digits may differ a little between seeds)."""
  fields = ('test_res', 'test_res_exact', 'expected_sigma')
  first = by_seed[min(by_seed)]
  return {**{f: first[f] for f in fields},
          'by_seed': {s: {f: v[f] for f in fields} for s, v in by_seed.items()}}


def write_report(plan: Plan, root: epath.Path, out: epath.Path, seconds: float,
                 command: str) -> dict:
  """Collects every finished run under root and writes RESULTS.md, results.json, figures."""
  analytic = {(k, s): analytic_test_res(plan, k, s) for k in plan.train_res for s in plan.seeds}
  runs_by_res = {}
  for k in plan.train_res:
    runs = [collect_run(root, k, s, analytic[k, s]['test_res']) for s in plan.seeds]
    runs = [r for r in runs if r and 'sweep' in r and 'selected_test_res' in r]
    if runs:
      runs_by_res[k] = runs
  if not runs_by_res:
    raise ValueError(f'No finished runs under {root}: run with --phase=all first.')
  flops = {k: train_flops_per_image(plan, k) for k in runs_by_res}
  compute, elapsed = run_times(root, runs_by_res)
  results = {
      'command': command,
      'seconds_this_invocation': seconds, 'seconds_all_runs': compute,
      'seconds_elapsed': elapsed,
      'plan': dataclasses.asdict(plan), 'heldout_split': HELDOUT_SPLIT,
      'fit_split': FIT_SPLIT, 'eval_split': EVAL_SPLIT, 'sigmas': claims.SIGMAS,
      'analytic': {k: summarize_analytic({s: analytic[k, s] for s in plan.seeds})
                   for k in plan.train_res},
      'train_flops_per_image': flops, 'claims': claims.evaluate(runs_by_res, flops),
      'epochs_selection': common.read_json(root / 'epochs.json'),
      'runs': [r for runs in runs_by_res.values() for r in runs]}
  reproduce_report.write(out, base_config(plan), results, runs_by_res)
  return results


def reproduce(plan: Plan, root: epath.Path, out: epath.Path, phase: str,
              command: str) -> Optional[dict]:
  """Runs `phase` of the reproduction; returns results.json's content when it writes one.

  Args:
    plan: the grid.
    root: the runs' workdirs go under here.
    out: where RESULTS.md, results.json and the figures go.
    phase: 'train', 'report' or 'all' (see --phase).
    command: the command line, quoted in RESULTS.md.
  """
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
  from fixres_jax import devices  # pylint: disable=g-import-not-at-top
  devices.provision_cpu_threads()  # before jax's backend exists: threads for N CPU devices
  from fixres_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  main_lib.quiet_library_logs()
  plan = Plan(train_res=[int(k) for k in FLAGS.train_res], seeds=[int(s) for s in FLAGS.seeds],
              quick=FLAGS.quick, data_dir=FLAGS.data_dir,
              compare_res=[int(k) for k in FLAGS.compare_res],
              long_epochs=0 if FLAGS.quick else FLAGS.long_epochs, demo_root=FLAGS.demo_root,
              epochs_grid=QUICK_EPOCHS if FLAGS.quick and not FLAGS['epochs'].present else
              [int(e) for e in FLAGS.epochs])
  if FLAGS.quick:  # the tiny grid, unless given explicitly
    plan = dataclasses.replace(
        plan, train_res=plan.train_res if FLAGS['train_res'].present else QUICK_TRAIN_RES,
        seeds=plan.seeds if FLAGS['seeds'].present else QUICK_SEEDS)
  reproduce(plan, epath.Path(FLAGS.results_root), epath.Path(FLAGS.out), FLAGS.phase,
            common.format_command('studies.reproduce'))


if __name__ == '__main__':
  define_flags()
  app.run(main)
