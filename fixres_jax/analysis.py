"""Test-resolution sweep, parametric adaptation, K_test='auto', and their outputs.

The sweep evaluates every model at every K_test of config.sweep.resolutions on every set of
config.sweep.evals (evalsets.py: the validation split by default; ImageNet's robustness sets,
the embedded dataset's shifts), in one pass over each set per resolution (each batch goes
through every model) with evaluate.py's step, compiled once per resolution and label rule:
top-1/top-5, calibration (ECE, NLL) and statistics of the pooled features, from which come
quantiles, the figure features.png and the parametric adaptation's fits. The first set of
config.sweep.evals is the headline: the table, the frontier and features.png show it.
Each K_test is evaluated at each crop fraction of sweep_crop_pcts (records' 'crop_pct'):
config.data.crop_pct, and the fine-tuned model's when 'auto' chose another
(finetune.auto_crop_pcts), or config.sweep.crop_pcts; with several, the table, sweep.png and
frontier.json have a column or curve per model and crop, features.png shows the first.

Models: 'trained', 'finetuned' (when there is one) and 'parametric', the trained network with
its pooled features mapped by parametric.py's scalar transform, fitted at each K_test on
config.sweep.parametric_split, a slice of the TRAINING split (never the validation split), onto
the target law config.sweep.parametric_target names.

With an adapter bank (adapters.py), model 'adapter' is each of its adapters, scored at its
own K_test only.

Outputs (WORKDIR/): sweep.json (records {'eval', 'model', 'test_res', 'top1', 'top5',
'num_images', 'zero_fraction', 'loss', 'nll', 'ece', 'tta', 'forward_passes',
'relative_flops'}, 'eval' naming the set; config.sweep.tta's test-time augmentation (tta.py)
and its cost per image), sweep.csv,
sweep.png (top-1 against K_test, one panel per set; K_train, the analytic K_test* of
resolution.py and the fine-tuned model's K_test marked), stats.json, features.png
and sweep_meta.json (timing, K_test*, the fine-tuned model's K_test, fits); with
config.sweep.latency_batch_size, frontier.json and frontier.png (accuracy against the latency
latency.py measures at each K_test). finetune.auto_max_ms_per_image limits 'auto' to the
K_test within that latency budget.
"""

import copy
import csv
import dataclasses
import functools
import itertools
import json
import time
from typing import Callable, Dict, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import evaluate
from fixres_jax import latency
from fixres_jax import parallel
from fixres_jax import parametric
from fixres_jax import preemption
from fixres_jax import resolution
from fixres_jax import transform_record
from fixres_jax import tta

AUTO = 'auto'
SHAPE_IMAGES = 500  # training images whose shapes feed the analytic K_test*
SAMPLER_CROPS = 20_000  # Monte Carlo crops for K_test* (standard error of E[sigma] ~0.0015)


@dataclasses.dataclass
class SweepResult:
  records: list  # sweep.json
  stats: dict  # stats.json: {'edges', 'records'}
  meta: dict  # sweep_meta.json
  frontier: Optional[dict] = None  # frontier.json, when the sweep timed the network


def sweep(config, dataset, mesh, models: Dict[str, dict], model,
          finetune_test_res: Optional[tuple] = None, workdir=None,
          finetune_crop_pct: Optional[float] = None,
          adapters: Optional[Dict[int, dict]] = None,
          passes: Optional[dict] = None) -> SweepResult:
  """Evaluates each model, and the parametric adaptation, at each config.sweep.resolutions
  and crop fraction (sweep_crop_pcts).

  Args:
    models: {'trained': variables, 'finetuned': variables, ...}.
    model: the flax module (all models share one architecture).
    finetune_test_res: (K_test, how it was chosen) of models['finetuned'], as
      finetuned_test_res gives them; recorded in the metadata, marked in sweep.png.
    workdir: where sweep.json and sweep.csv are rewritten after each resolution, so that a
      later failure loses none of them (write_sweep writes every output at the end).
    finetune_crop_pct: the crop fraction models['finetuned'] was made at
      (finetuned_crop_pct); swept beside config.data.crop_pct when sweep.crop_pcts is ().

    adapters: {K_test: variables} of the adapter bank (adapters.load_bank): each is scored
      at its own K_test, as model 'adapter'.
    passes: the trained model's feature histograms that select_test_res measured,
      {(split, K_test, crop_pct): histogram}: a parametric fit on one of them needs no pass.

  Returns:
    the records, feature statistics and metadata (timing, analytic K_test*, fits).
  """
  from fixres_jax.data import pipeline  # only the loop needs TensorFlow
  cfg, train_res = config.sweep, config.train.image_size
  models = {name: parallel.replicate(v, mesh) for name, v in models.items()}
  adapters = adapters or {}
  step_fn = evaluate.jit_eval_step(model)  # the parametric fits': the test view alone
  augment = tta.for_model(tta.parse(cfg.tta), model, train_res)  # of the scored passes
  # One jitted step per label rule; without test-time augmentation the fits' step is one.
  step_fns = {evaluate.SINGLE: step_fn} if augment == tta.PLAIN else {}
  eval_sets = pipeline.load_eval_sets(config, dataset)
  fits = {}
  crops = sweep_crop_pcts(config, finetune_crop_pct if 'finetuned' in models else None)

  def step_for(eval_data):
    scoring = evaluate.Scoring(eval_data.rule, tuple(eval_data.classes))
    if scoring not in step_fns:
      step_fns[scoring] = evaluate.jit_eval_step(model, scoring, augment)
    return step_fns[scoring]

  def fit_at(test_res, crop_pct):  # the trained model's features on a training slice
    if (test_res, crop_pct) not in fits:
      measured = (passes or {}).get((cfg.parametric_split, test_res, crop_pct))
      if measured is not None:  # select_test_res passed over this slice already
        fits[test_res, crop_pct] = evaluate.fit_histogram(measured)
      else:
        fits[test_res, crop_pct] = evaluate.fit_pooled_features(
            step_fn, models['trained'], pipeline.config_eval_batches(
                with_crop_pct(config, crop_pct), dataset, cfg.parametric_split, test_res),
            mesh)
    return fits[test_res, crop_pct]

  def fit_target(crop_pct):  # the law the features at every K_test are mapped onto
    if cfg.parametric_target == parametric.TEST_TRANSFORM:
      return fit_at(train_res, crop_pct)
    return fit_train_view()

  @functools.cache
  def fit_train_view():  # the train transform does not crop by crop_pct
    return evaluate.fit_pooled_features(
        step_fn, models['trained'],
        pipeline.train_view_batches(config, dataset, cfg.parametric_split), mesh)

  records, stats, seconds, timings = [], [], {}, {}
  start = time.perf_counter()
  for test_res, crop_pct in itertools.product(cfg.resolutions, crops):
    res_start = time.perf_counter()
    crop_config = with_crop_pct(config, crop_pct)
    # Every model with an adaptation (the identity for most): one trace per resolution.
    entries = {name: (v, parametric.IDENTITY) for name, v in models.items()}
    if cfg.parametric:  # the trained model's pass also yields its adapted version
      entries['trained'] = (models['trained'],
                            parametric.quantile_map(fit_at(test_res, crop_pct),
                                                    fit_target(crop_pct)))
    if test_res in adapters:  # the bank's adapter made at this K_test, placed when used
      entries['adapter'] = (parallel.replicate(adapters[test_res], mesh),
                            parametric.IDENTITY)
    for eval_data in eval_sets:
      totals = evaluate.evaluate(step_for(eval_data), entries,
                                 pipeline.eval_set_batches(crop_config, eval_data, test_res,
                                                           augment), mesh)
      results = {name: total['plain'] for name, total in totals.items()}
      if cfg.parametric:
        results['parametric'] = totals['trained']['adapted']
      for name, total in results.items():
        metrics, feature_stats = evaluate.summarize(total)
        key = {'eval': eval_data.name, 'model': name, 'test_res': int(test_res),
               'crop_pct': crop_pct}
        records.append({**key, **metrics, **tta.describe(augment, test_res)})
        stats.append({**key, **feature_stats})
        logging.info('sweep %s %s @ %d, crop %g: top1 %.4f, ECE %.4f, zero features %.3f',
                     eval_data.name, name, test_res, crop_pct, metrics['top1'], metrics['ece'],
                     metrics['zero_fraction'])
    seconds[int(test_res)] = seconds.get(int(test_res), 0.0) + time.perf_counter() - res_start
    # What serving at this K_test costs (any crop), one device, warm.
    if cfg.latency_batch_size and int(test_res) not in timings:
      timings[int(test_res)] = tta.time_forward(model, models['trained'], augment, test_res,
                                                cfg.latency_batch_size, config.data.dtype)
    if workdir is not None:
      write_records(workdir, records)
  total_seconds = time.perf_counter() - start
  logging.info('Sweep: %d evaluations at %d resolutions took %.1f s.', len(records),
               len(cfg.resolutions), total_seconds)
  meta = {'seconds': total_seconds, 'seconds_per_resolution': seconds, 'train_res': train_res,
          'eval_split': config.data.eval_split, 'crop_pcts': list(crops),
          'evals': [{'name': e.name, 'dataset': e.source.name, 'split': e.split,
                     'rule': e.rule, 'num_classes_scored': len(e.classes) or None}
                    for e in eval_sets],
          'analytic_test_res': analytic_test_res(config, dataset),
          'tta': {'name': augment.name, 'forward_passes': augment.forward_passes,
                  'pool_window': list(augment.pool_window)}}
  if adapters:
    meta['adapters'] = sorted(int(k) for k in adapters)
  if 'finetuned' in models and finetune_test_res and finetune_test_res[0] is not None:
    meta['finetune_test_res'] = {'test_res': int(finetune_test_res[0]),
                                 'chosen': finetune_test_res[1],
                                 'crop_pct': finetune_crop_pct or config.data.crop_pct}
  if cfg.parametric:
    # Keyed by K_test, and by 'K_test crop c' when several crop fractions were swept.
    fit_name = lambda r, c: int(r) if len(crops) == 1 else f'{r} crop {c:g}'
    meta['parametric'] = {
        'split': cfg.parametric_split, 'shape': parametric.SHAPE,
        'target': cfg.parametric_target,
        'target_fit': dataclasses.asdict(fit_target(crops[0])),
        'fits': {fit_name(*k): dataclasses.asdict(f) for k, f in sorted(fits.items())},
        'maps': {fit_name(*k): [float(v) for v in parametric.quantile_map(
            fits[k], fit_target(k[1]))] for k in sorted(fits)}}
  frontier = None
  if timings:
    frontier = {**latency.describe_stack(), 'batch_size': cfg.latency_batch_size,
                'points': latency.frontier(crop_curves(headline(records)), timings)}
  return SweepResult(records, {'edges': evaluate.HISTOGRAM_EDGES.tolist(), 'records': stats},
                     meta, frontier)


def sweep_crop_pcts(config, finetune_crop_pct: Optional[float] = None) -> tuple:
  """The crop fractions the sweep evaluates: config.sweep.crop_pcts, or config.data.crop_pct
  and, when it differs, the one the fine-tuned model was made at."""
  if config.sweep.crop_pcts:
    return tuple(float(c) for c in config.sweep.crop_pcts)
  return tuple(dict.fromkeys(float(c) for c in (config.data.crop_pct, finetune_crop_pct)
                             if c is not None))


def crop_curves(records: list) -> list:
  """`records`, each model named with its crop fraction ('trained crop 0.95') when they
  hold several: one curve (table column, frontier line) per model and crop."""
  if len({r.get('crop_pct') for r in records}) < 2:
    return records
  return [{**r, 'model': f"{r['model']} crop {r['crop_pct']:g}"} for r in records]


def analytic_test_res(config, dataset=None) -> dict:
  """resolution.recommend_test_res for K_train, the train crop sampler and the image shapes.

  The one implementation of the analytic K_test*: a run's sweep and the studies (which pass
  the run's config) call it, so that a report and a run cannot disagree. The shapes are those
  of up to SHAPE_IMAGES images of config.data.train_split (JPEG headers only), from a tfds
  dataset or a folder; the Monte Carlo draws with config.seed.

  Args:
    config: the run's config.
    dataset: its opened source; None opens config.data's (a study, outside a run).

  Returns:
    recommend_test_res's dict, with 'image_shapes' saying which images it measured.
  """
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from fixres_jax.data import sources  # pylint: disable=g-import-not-at-top
  if dataset is None:
    dataset = pipeline.load_dataset(config)
  shapes = sources.read_image_shapes(dataset, config.data.train_split, SHAPE_IMAGES,
                                     skip_corrupt=config.data.skip_corrupt)
  note = f'{len(shapes)} images of {config.data.train_split}'
  if not len(shapes):  # every one skipped as corrupt: resolution's default shape
    shapes, note = None, f'no readable image of {config.data.train_split}: 500x375 assumed'
  result = resolution.recommend_test_res(config.train.image_size, config.data.crop_pct,
                                         config.data.crop, image_shapes=shapes,
                                         samples=SAMPLER_CROPS, seed=config.seed)
  logging.info('Analytic K_test* for K_train=%d (%s crops, %s): %.1f', config.train.image_size,
               config.data.crop, note, result['test_res_exact'])
  return {**result, 'image_shapes': note}


def resolve_test_res(config, workdir, dataset, mesh, variables: dict, model,
                     passes: Optional[dict] = None, adapt: Optional[Callable] = None):
  """`config`, or a copy with finetune.test_res and data.crop_pct chosen by select_test_res
  (which adds its passes to `passes`) when finetune.test_res is 'auto'."""
  if config.finetune.test_res != AUTO:
    return config
  resolved = copy.deepcopy(config)
  resolved.finetune.test_res, resolved.data.crop_pct = select_test_res(
      config, workdir, dataset, mesh, variables, model, passes, adapt)
  return resolved


def with_crop_pct(config, crop_pct: float):
  """`config`, or a copy whose test transform crops `crop_pct` (config.data.crop_pct)."""
  if crop_pct == config.data.crop_pct:
    return config
  copied = copy.deepcopy(config)
  copied.data.crop_pct = crop_pct
  return copied


def select_test_res(config, workdir, dataset, mesh, variables: dict, model,
                    passes: Optional[dict] = None, adapt: Optional[Callable] = None) -> tuple:
  """The best (K_test, crop fraction) on config.finetune.auto_split, a TRAINING-split slice,
  of the trained model, or of it adapted at each pair (finetune.auto_model='adapted').

  Evaluates every pair of config.finetune.auto_resolutions (default: config.sweep.resolutions)
  and config.finetune.auto_crop_pcts (default: config.data.crop_pct alone), one pass over the
  slice each, and keeps the best by config.finetune.auto_metric (best_record). The choice and
  every score go to WORKDIR/auto_test_res.json, which a re-run of the same configuration
  reuses, and every re-run once fine-tuning has saved work (that work was made at the pair
  chosen then; config.redo='finetune' chooses again).

  Args:
    passes: where each pass's feature histogram is added, {(split, K_test, crop_pct):
      histogram}, for the sweep's parametric fits on the same slice (sweep's `passes`): the
      trained model's only, so none are added when the adapted model is scored.
    adapt: (K_test, crop_pct) -> `variables` adapted there (adapters.fit_candidate), which
      finetune.auto_model='adapted' scores.

  Returns:
    (K_test, crop_pct).
  """
  from fixres_jax.data import pipeline  # only the loop needs TensorFlow
  cfg = config.finetune
  resolutions = [int(r) for r in (cfg.auto_resolutions or config.sweep.resolutions)]
  crops = [float(c) for c in (cfg.auto_crop_pcts or (config.data.crop_pct,))]
  path = epath.Path(workdir) / 'auto_test_res.json'
  if path.exists():
    choice = json.loads(path.read_text())
    chosen = choice['test_res'], choice.get('crop_pct', config.data.crop_pct)
    # A record from before the crop fraction was chosen: chosen at data.crop_pct alone.
    if (choice['split'] == cfg.auto_split and choice['resolutions'] == resolutions
        and choice.get('crop_pcts', crops) == crops
        and choice.get('metric', 'top1') == cfg.auto_metric
        and choice.get('max_ms_per_image', 0.0) == cfg.auto_max_ms_per_image
        and choice.get('model', 'trained') == cfg.auto_model):
      logging.info('K_test = %d, crop %g, chosen before (%s).', *chosen, path)
      return chosen
    if checkpoint.has_steps(epath.Path(workdir) / 'checkpoints' / 'finetune'):
      logging.info('K_test = %d, crop %g, chosen before (%s) with other settings: the saved '
                   'fine-tuning was made there.', *chosen, path)
      return chosen
  if cfg.auto_model == 'adapted':
    if adapt is None:
      raise ValueError("finetune.auto_model='adapted' needs `adapt` (adapters.fit_candidate).")
    passes = None
  step_fn = evaluate.jit_eval_step(model)
  trained = parallel.replicate(variables, mesh)
  records = []
  for test_res in resolutions:
    ms_per_image = None
    if cfg.auto_max_ms_per_image:  # the crop fraction does not change the forward pass
      ms_per_image = latency.time_forward(model, trained, test_res,
                                          config.sweep.latency_batch_size,
                                          config.data.dtype)['ms_per_image']
    for crop_pct in crops:
      scored = trained
      if cfg.auto_model == 'adapted':
        preemption.check_stop(f'the adapter at K_test={test_res}, crop {crop_pct:g}')
        scored = parallel.replicate(adapt(test_res, crop_pct), mesh)
      batches = pipeline.config_eval_batches(with_crop_pct(config, crop_pct), dataset,
                                             cfg.auto_split, test_res)
      metrics = evaluate.evaluate_model(step_fn, scored, batches, mesh,
                                        histogram=passes is not None)
      if passes is not None:
        passes[cfg.auto_split, test_res, crop_pct] = metrics.pop('histogram')
      if ms_per_image is not None:
        metrics['ms_per_image'] = ms_per_image
      records.append({'test_res': test_res, 'crop_pct': crop_pct, **metrics})
      logging.info('auto K_test: top1 %.4f of the %s model at %d, crop %g, on %s',
                   metrics['top1'], cfg.auto_model, test_res, crop_pct, cfg.auto_split)
  best = best_record(within_budget(records, cfg.auto_max_ms_per_image), cfg.auto_metric)
  index = records.index(best)
  if jax.process_count() > 1:  # timings differ between hosts: process 0's choice holds
    index = int(multihost_utils.broadcast_one_to_all(np.int32(index)))
  test_res, crop_pct = records[index]['test_res'], records[index]['crop_pct']
  if jax.process_index() == 0:
    path.write_text(json.dumps({'test_res': test_res, 'crop_pct': crop_pct,
                                'split': cfg.auto_split, 'metric': cfg.auto_metric,
                                'model': cfg.auto_model,
                                'resolutions': resolutions, 'crop_pcts': crops,
                                'max_ms_per_image': cfg.auto_max_ms_per_image,
                                'records': records}, indent=2))
  logging.info('K_test = %d, crop %g, chosen on %s (best %s of the %s model, %s x crops %s); '
               'recorded in %s.', test_res, crop_pct, cfg.auto_split, cfg.auto_metric,
               cfg.auto_model, resolutions, crops, path)
  return test_res, crop_pct


def within_budget(records: list, max_ms_per_image: float) -> list:
  """latency.within_budget, where a budget no K_test meets is the user's to change."""
  fast_enough = latency.within_budget(records, max_ms_per_image)
  if not fast_enough:
    fastest = min(records, key=lambda r: r['ms_per_image'])
    raise errors.ConfigError(
        f'config.finetune.auto_max_ms_per_image={max_ms_per_image}: no K_test of '
        f"{[r['test_res'] for r in records]} is that fast here (the fastest, "
        f"{fastest['test_res']}, takes {fastest['ms_per_image']:.3g} ms per image, "
        f"{latency.describe_stack()['device']}): raise the budget or add smaller K_test to "
        'config.finetune.auto_resolutions.')
  return fast_enough


def best_record(records: list, metric: str) -> dict:
  """The record with the highest top-1 (ties: the lower loss), or the lowest `metric` (a
  loss; ties: the higher top-1); the first of those still tied."""
  if metric == 'top1':
    key = lambda r: (r['top1'], -r['loss'])
  else:
    key = lambda r: (-r[metric], r['top1'])
  return max(records, key=key)


def headline(records: list) -> list:
  """The records of the sweep's first set (config.sweep.evals[0]), its headline."""
  first = records[0].get('eval') if records else None
  return [r for r in records if r.get('eval') == first]


def first_crop(records: list) -> list:
  """The records at the first crop fraction they hold (all of them when they hold none)."""
  crop = records[0].get('crop_pct') if records else None
  return [r for r in records if r.get('crop_pct') == crop]


def format_table(records: list) -> str:
  """Top-1 (%) per test resolution (rows) and model (columns); one table per set after the
  first, each under its name."""
  sets = list(dict.fromkeys(r.get('eval') for r in records))
  tables = [format_set_table([r for r in records if r.get('eval') == s]) for s in sets]
  if len(sets) == 1:
    return tables[0]
  return '\n\n'.join(f'{s}:\n{t}' for s, t in zip(sets, tables))


def format_set_table(records: list) -> str:
  """format_table for the records of one set; a column per model and crop fraction when they
  hold several."""
  records = crop_curves(records)
  names = list(dict.fromkeys(r['model'] for r in records))
  width = max([12] + [len(n) + 2 for n in names])
  resolutions = sorted({r['test_res'] for r in records})
  top1 = {(r['model'], r['test_res']): r['top1'] for r in records}
  lines = ['K_test  ' + ''.join(f'{n:>{width}}' for n in names)]
  for res in resolutions:
    cells = ''.join(f'{100 * top1[(n, res)]:>{width - 1}.2f}%' if (n, res) in top1
                    else f'{"-":>{width}}' for n in names)
    lines.append(f'{res:>6}  {cells}')
  return '\n'.join(lines)


def finetuned_test_res(config, workdir) -> tuple:
  """(K_test the fine-tuned model was made at, how it was chosen), from the workdir's records:
  the finished stage's test transform, else the 'auto' choice or the config."""
  record = transform_record.read(workdir, 'finetune')
  if record is not None:
    return record['image_size'], record['chosen']
  path = epath.Path(workdir) / 'auto_test_res.json'
  choice = json.loads(path.read_text()) if path.exists() else None
  if choice and config.finetune.test_res in (AUTO, choice['test_res']):
    return choice['test_res'], f"chosen on the held-out {choice['split']}"
  if config.finetune.test_res == AUTO:
    return None, 'not chosen yet'
  return int(config.finetune.test_res), 'config.finetune.test_res'


def finetuned_crop_pct(config, workdir) -> float:
  """The crop fraction the fine-tuned model was made at: its stage's test transform, else the
  'auto' choice, else config.data.crop_pct."""
  record = transform_record.read(workdir, 'finetune')
  if record is not None:
    return record['crop_pct']
  path = epath.Path(workdir) / 'auto_test_res.json'
  choice = json.loads(path.read_text()) if path.exists() else None
  if choice and config.finetune.test_res == AUTO:
    return choice.get('crop_pct', config.data.crop_pct)
  return config.data.crop_pct


def describe_outputs(config, workdir, records: list) -> str:
  """The end of a run's output: where its files are and, in words, what the table shows."""
  workdir = epath.Path(workdir)
  sets = list(dict.fromkeys(r.get('eval') for r in records))
  records = headline(records)
  names = list(dict.fromkeys(r['model'] for r in records))
  k_test, how = finetuned_test_res(config, workdir)
  columns = {'trained': f'the network trained at K_train={config.train.image_size}',
             'finetuned': f'the same network after FixRes fine-tuning at K_test={k_test} '
                          f'({how})',
             'parametric': 'the trained network with the parametric adaptation'}
  shown = '; '.join(f"'{n}' is {columns.get(n, n)}" for n in names)
  lines = [
      f'The table: top-1 on {config.data.eval_split} at each test resolution K_test; {shown}.',
      tta_sentence(records),
      best_sentence(records, config.train.image_size),
      f'Other sets, in sweep.json and sweep.png: {", ".join(sets[1:])}.' if len(sets) > 1
      else '',
      f'Table: {workdir / "sweep.csv"} (and sweep.json). Plot: {workdir / "sweep.png"} (and '
      f'features.png). Checkpoints: {workdir / "checkpoints"} (train, finetune).']
  return '\n'.join(line for line in lines if line)


def tta_sentence(records: list) -> str:
  """The test-time augmentation the scores average over and its cost ('' for none)."""
  if not records or records[0].get('tta', tta.NONE) == tta.NONE:
    return ''
  passes = records[0]['forward_passes']
  return (f"Every score is of test-time augmentation {records[0]['tta']!r} ({passes} forward "
          f"pass{'es' if passes != 1 else ''} per image; sweep.json's 'relative_flops': the "
          "compute against one pass at K_test).")


def best_sentence(records: list, train_res: int) -> str:
  """Where the trained network tests best, and what fine-tuning does there."""
  trained = [r for r in records if r['model'] == 'trained']
  if not trained:
    return ''
  best = max(trained, key=lambda r: r['top1'])
  at_train = next((r for r in trained if r['test_res'] == train_res
                   and r.get('crop_pct') == best.get('crop_pct')), None)
  several = len({r.get('crop_pct') for r in records}) > 1  # then each place names its crop
  where = lambda r: f"K_test={r['test_res']}" + (f", crop {r['crop_pct']:g}" if several else '')
  text = f"The trained network tests best at {where(best)} ({100 * best['top1']:.2f}%"
  text += f", {100 * at_train['top1']:.2f}% at K_train)." if at_train else ').'
  finetuned = [r for r in records if r['model'] == 'finetuned']
  if finetuned:
    top = max(finetuned, key=lambda r: r['top1'])
    text += f" The fine-tuned network's best is {100 * top['top1']:.2f}% at {where(top)}."
  return text


CSV_FIELDS = ('eval', 'model', 'test_res', 'crop_pct', 'top1', 'top5', 'loss', 'zero_fraction',
              'num_images', 'nll', 'ece', 'tta', 'forward_passes', 'relative_flops')


def write_sweep(workdir, result: SweepResult) -> None:
  """sweep.json, sweep.csv, stats.json, sweep_meta.json, sweep.png, features.png (process 0)."""
  if jax.process_index() != 0:
    return
  write_records(workdir, result.records)
  workdir = epath.Path(workdir)
  (workdir / 'stats.json').write_text(json.dumps(result.stats))
  (workdir / 'sweep_meta.json').write_text(json.dumps(result.meta, indent=2))
  save_figure(plot_sweep(result.records, result.meta), workdir / 'sweep.png')
  features = {**result.stats, 'records': first_crop(headline(result.stats['records']))}
  save_figure(plot_features(features, result.meta['train_res']), workdir / 'features.png')
  if result.frontier:
    (workdir / 'frontier.json').write_text(json.dumps(result.frontier, indent=2))
    save_figure(latency.plot_frontier(result.frontier['points'], result.frontier['batch_size'],
                                      result.frontier['device']), workdir / 'frontier.png')


def write_records(workdir, records: list) -> None:
  """sweep.json and sweep.csv (process 0)."""
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  (workdir / 'sweep.json').write_text(json.dumps(records, indent=2))
  with (workdir / 'sweep.csv').open('w') as f:
    writer = csv.DictWriter(f, CSV_FIELDS, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(records)


def save_figure(figure, path: epath.Path) -> None:
  with path.open('wb') as f:
    figure.savefig(f, format='png', bbox_inches='tight')


# Each model's own marker and line, so that none hides another where they agree: at K_train
# the parametric adaptation is the identity, so its curve (dashed, small markers, on top)
# runs along the trained network's wider line and through its hollow circles.
CURVE_STYLES = {
    'trained': dict(marker='o', markersize=9, fillstyle='none', markeredgewidth=1.6,
                    linestyle='-', linewidth=2.8, zorder=2),
    'finetuned': dict(marker='s', markersize=5.5, linestyle='-', linewidth=1.6, zorder=3),
    'parametric': dict(marker='D', markersize=3.5, linestyle='--', dashes=(3, 2.5),
                       linewidth=1.3, zorder=4),
}
OTHER_CURVE_STYLE = dict(marker='v', markersize=5, linestyle=':', linewidth=1.4, zorder=3)
MARK_STYLE = dict(linewidth=1.2, zorder=1)  # the vertical K_test marks, under the curves


def plot_sweep(records: list, meta: dict):
  """Top-1 against K_test, one panel per evaluation set and one curve per model (and crop
  fraction, when the records hold several: crop_curves); K_train, the
  analytic K_test* and the K_test the fine-tuned model was made at (meta['finetune_test_res'],
  when there is one) marked."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  sets = list(dict.fromkeys(r.get('eval') for r in records))
  columns = min(len(sets), 3)
  rows = -(-len(sets) // columns)
  fig = figure.Figure(figsize=(6.4 + 4.4 * (columns - 1), 4.2 * rows), dpi=110)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax, eval_name in zip(axes, sets):
    colors = {}
    mine = crop_curves([r for r in records if r.get('eval') == eval_name])
    for name in dict.fromkeys(r['model'] for r in mine):
      points = sorted((r['test_res'], 100 * r['top1']) for r in mine if r['model'] == name)
      base = name.split(' crop ')[0]  # the model, whose style every crop's curve keeps
      (line,) = ax.plot(*zip(*points), label=name, **CURVE_STYLES.get(base, OTHER_CURVE_STYLE))
      colors[name] = line.get_color()
      colors.setdefault(base, line.get_color())
    crop = (meta.get('finetune_test_res') or {}).get('crop_pct')  # its own curve's colour
    mark_test_resolutions(ax, meta, colors.get(f'finetuned crop {crop:g}' if crop else '',
                                               colors.get('finetuned', 'C1')))
    ax.set_xlabel('test resolution K_test (px)')
    on = meta['eval_split'] if len(sets) == 1 else eval_name
    ax.set_ylabel(f'top-1 on {on} (%)')
    if len(sets) > 1:
      ax.set_title(eval_name)
    ax.grid(alpha=0.3)
  for ax in axes[len(sets):]:
    ax.set_visible(False)
  # Beside the last panel of the first row, where it covers no curve.
  axes[min(columns, len(sets)) - 1].legend(fontsize='small', loc='upper left',
                                           bbox_to_anchor=(1.02, 1), borderaxespad=0)
  return fig


def mark_test_resolutions(ax, meta: dict, finetuned_color: str) -> None:
  """Vertical lines at K_train, the analytic K_test* and the fine-tuned model's K_test."""
  ax.axvline(meta['train_res'], color='black', linestyle=':',
             label=f"K_train = {meta['train_res']}", **MARK_STYLE)
  k_star = meta['analytic_test_res']['test_res_exact']
  ax.axvline(k_star, color='gray', linestyle='--', label=f'analytic K_test* = {k_star:.0f}',
             **MARK_STYLE)
  finetuned_at = meta.get('finetune_test_res')
  if finetuned_at:
    crop = (f", crop {finetuned_at['crop_pct']:g}" if len(meta.get('crop_pcts', ())) > 1
            else '')
    ax.axvline(finetuned_at['test_res'], color=finetuned_color, linestyle='-.',
               label=f"fine-tuned at K_test = {finetuned_at['test_res']}{crop}\n"
                     f"({finetuned_at['chosen']})", **MARK_STYLE)


def plot_features(stats: dict, train_res: int):
  """Histograms of the pooled features at a few K_test (K_train among them), per model."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  records = stats['records']
  names = list(dict.fromkeys(r['model'] for r in records))
  resolutions = sorted({r['test_res'] for r in records})
  spread = np.linspace(0, len(resolutions) - 1, min(3, len(resolutions))).round().astype(int)
  picks = {resolutions[i] for i in spread} | ({train_res} & set(resolutions))
  edges = np.asarray(stats['edges'])
  shown = [r for r in records if r['test_res'] in picks]
  used = np.flatnonzero(np.sum([r['counts'][1:-1] for r in shown], axis=0))
  fig = figure.Figure(figsize=(4.2 * len(names), 3.6), dpi=110)
  axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
  for ax, name in zip(axes, names):
    for r in sorted((r for r in shown if r['model'] == name), key=lambda r: r['test_res']):
      counts = np.asarray(r['counts'][1:-1], np.float64)  # the bins between the edges
      density = counts / r['num_values'] / np.diff(np.log10(edges))
      ax.stairs(density, edges, label=f"K_test {r['test_res']} "
                f"(zeros {100 * r['zero_fraction']:.0f}%)")
    ax.set_xscale('log')
    if used.size:
      ax.set_xlim(edges[used[0]], edges[used[-1] + 1])
    ax.set_title(name)
    ax.set_xlabel('pooled feature value')
    ax.legend(fontsize='small')
  axes[0].set_ylabel('fraction of features per decade')
  return fig
