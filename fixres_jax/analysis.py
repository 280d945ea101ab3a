"""Test-resolution sweep: every model at every K_test, as a table and WORKDIR/sweep.json."""

import functools
import json
import time
from typing import Dict

from absl import logging
from etils import epath
import jax

from fixres_jax import train


def sweep(config, dataset, mesh, models: Dict[str, dict], apply_fn) -> list:
  """Evaluates each model's variables at each of config.sweep.resolutions.

  Args:
    models: {'trained': variables, 'finetuned': variables, ...}.
    apply_fn: the model's apply function (all models share one architecture).

  Returns:
    records {'model', 'test_res', 'top1', 'top5', 'num_images', 'zero_fraction', 'loss'}.
  """
  from fixres_jax.data import pipeline  # only the loop needs TensorFlow
  eval_fn = jax.jit(functools.partial(train.eval_step, apply_fn))  # one compile per shape
  records = []
  start = time.perf_counter()
  for test_res in config.sweep.resolutions:
    for name, variables in models.items():
      batches = pipeline.eval_batches(dataset, config.data.eval_split, test_res,
                                      config.sweep.batch_size, config.data.crop_pct,
                                      dtype=config.data.dtype)
      result = train.evaluate(apply_fn, variables, batches, mesh, eval_fn=eval_fn)
      records.append({'model': name, 'test_res': int(test_res), **result})
      logging.info('sweep %s @ %d: top1 %.4f', name, test_res, result['top1'])
  logging.info('Sweep of %d resolutions took %.1f s.', len(config.sweep.resolutions),
               time.perf_counter() - start)
  return records


def format_table(records: list) -> str:
  """Top-1 (%) per test resolution (rows) and model (columns)."""
  names = list(dict.fromkeys(r['model'] for r in records))
  resolutions = sorted({r['test_res'] for r in records})
  top1 = {(r['model'], r['test_res']): r['top1'] for r in records}
  lines = ['K_test  ' + ''.join(f'{n:>12}' for n in names)]
  for res in resolutions:
    cells = ''.join(f'{100 * top1[(n, res)]:>11.2f}%' if (n, res) in top1 else f'{"-":>12}'
                    for n in names)
    lines.append(f'{res:>6}  {cells}')
  return '\n'.join(lines)


def write_sweep(workdir, records: list) -> epath.Path:
  path = epath.Path(workdir) / 'sweep.json'
  if jax.process_index() == 0:
    path.write_text(json.dumps(records, indent=2))
  return path
