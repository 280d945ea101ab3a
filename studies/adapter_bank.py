"""The adapter bank's cost against one K_test, and the accuracy-latency frontier, on the demo.

  python -m studies.adapter_bank --source=/tmp/demo3/seed_0 --data_dir=/tmp/tfds_idle \
      --work=/tmp/adapter_bank_study [--resolutions=80,96,112,128]

copies a finished demo workdir (--source) under --work, once per step below, without its
fine-tuning, and runs `python -m fixres_jax.main --config=configs/demo.py` there (K_test fixed
at the one the demo chose):

  single      the finetune stage at K_test alone, finetune.mode='cached';
  bank        the same stage with finetune.adapter_resolutions=--resolutions;
  sweep       the sweep of the bank's workdir: every adapter at its own K_test, and
              frontier.json;
  sgd         what a user without the bank runs per K: the finetune stage at K_test in mode
              'sgd' (a forward pass of the backbone per step) for the demo's num_epochs;
  sgd_recipe  the same for the base config's num_epochs (ResNet-50's recipe), the cost of one
              K_test at the paper's fine-tuning length.

Each command is timed (wall and CPU seconds, the load average before and after: the machine
may be shared), and each K's passes are read from the run's metrics.jsonl. A step recorded in
--work/steps.json is not run again. Writes docs/adapter_bank.json and README's two blocks.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
from etils import epath

from fixres_jax import config as config_lib
from studies import common

FLAGS = flags.FLAGS
BANK_MARKERS = common.readme_markers('adapter bank', 'studies.adapter_bank')
FRONTIER_MARKERS = common.readme_markers('frontier', 'studies.adapter_bank')
# The frontier's batch: the base config's (configs/demo.py does not time the network).
LATENCY_BATCH = config_lib.get_base_config().sweep.latency_batch_size


def define_flags() -> None:
  """Defined only when run as a script (tests import this module next to others' flags)."""
  flags.DEFINE_string('source', '/tmp/demo3/seed_0', 'A finished demo workdir (not modified).')
  flags.DEFINE_string('data_dir', '', 'tfds data dir of the demo\'s dataset ("" = default).')
  flags.DEFINE_string('work', '/tmp/adapter_bank_study', 'Where the copies run.')
  flags.DEFINE_list('resolutions', ['80', '96', '112', '128'], 'The bank\'s K_test.')
  flags.DEFINE_string('out', 'docs/adapter_bank.json', 'The result.')
  flags.DEFINE_string('readme', 'README.md', "README whose blocks are rewritten ('': none).")


def run_timed(args: list) -> dict:
  """Runs `python -m fixres_jax.main ARGS` from the repository root; its wall and CPU time."""
  before, load = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'fixres_jax.main', *args], cwd=common.REPO, check=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return {'wall_s': wall, 'cpu_s': cpu, 'load_before': load, 'load_after': os.getloadavg()[0],
          'command': 'python -m fixres_jax.main ' + ' '.join(args)}


def pass_timings(workdir: epath.Path, resolutions=()) -> dict:
  """{K_test: {'pass1_s', 'pass2_s', 'head_s'}} of the cached passes a run recorded: the
  stage's, and the bank's at `resolutions`.

  The copy's metrics.jsonl begins with the source run's records, whose choice of K_test
  (finetune.auto_model='adapted') fitted adapters at other K: only the bank's K count, and
  for each K the last record, this run's.
  """
  timings = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    tag = record['stage']
    if tag == 'finetune_cache':
      k = json.loads((workdir / 'checkpoints/finetune/test_transform.json').read_text())[
          'image_size']
    elif tag.startswith('adapter_') and tag.endswith('_cache'):
      k = int(tag.split('_')[1])
      if k not in resolutions:
        continue
    else:
      continue
    timings[k] = {n: record[n] for n in ('pass1_s', 'pass2_s', 'head_s')}
  return timings


def run_steps(source: epath.Path, work: epath.Path, data_dir: str, resolutions: list) -> dict:
  """The steps (single, bank, sweep, sgd, sgd_recipe), each run unless --work/steps.json has it."""
  k_test = json.loads((source / 'auto_test_res.json').read_text())['test_res']
  common_args = ['--config=configs/demo.py', f'--config.data.data_dir={data_dir}',
                 '--config.redo=finetune',
                 f'--config.finetune.test_res={k_test}']
  bank_args = ['--config.finetune.mode=cached',
               f'--config.finetune.adapter_resolutions=({",".join(map(str, resolutions))},)']
  recipe_epochs = config_lib.get_base_config().finetune.num_epochs
  # The sweep reaches every adapter: the demo's own sweep may stop below the bank's K_test.
  demo_sweep = common.load_demo_config().sweep.resolutions
  sweep_res = ','.join(map(str, sorted({*demo_sweep, *resolutions})))
  plan = {'single': ('single', ['--config.stages=finetune', '--config.finetune.mode=cached']),
          'bank': ('bank', ['--config.stages=finetune', *bank_args]),
          'sweep': ('bank', ['--config.stages=sweep', *bank_args,
                             f'--config.sweep.resolutions=({sweep_res},)',
                             f'--config.sweep.latency_batch_size={LATENCY_BATCH}']),
          'sgd': ('sgd', ['--config.stages=finetune', '--config.finetune.mode=sgd']),
          'sgd_recipe': ('sgd_recipe', ['--config.stages=finetune', '--config.finetune.mode=sgd',
                                        f'--config.finetune.num_epochs={recipe_epochs}'])}
  path = work / 'steps.json'
  steps = json.loads(path.read_text()) if path.exists() else {}
  for name, (copy, args) in plan.items():
    if name in steps:
      continue
    workdir = work / copy
    if name != 'sweep':  # a fresh copy: an interrupted step starts again
      shutil.rmtree(workdir, ignore_errors=True)
      shutil.copytree(source, workdir)
      # The source's own fine-tuning goes: every step fine-tunes (config.redo keeps work whose
      # values did not change, which the 'sgd' step's are).
      shutil.rmtree(workdir / 'checkpoints' / 'finetune')
    steps[name] = run_timed([*common_args, f'--workdir={workdir}', *args])
    path.write_text(json.dumps(steps, indent=1))
  return {'k_test': k_test, 'steps': steps, 'recipe_epochs': recipe_epochs}


def collect(source: epath.Path, work: epath.Path, data_dir: str, resolutions: list) -> dict:
  """Runs what is missing; the result docs/adapter_bank.json holds."""
  result = run_steps(source, work, data_dir, resolutions)
  sweep = json.loads((work / 'bank' / 'sweep.json').read_text())
  headline = [r for r in sweep if r.get('eval', 'validation') == sweep[0].get('eval')]
  return {**result, 'source': str(source), 'resolutions': resolutions,
          'machine': common.describe_machine(os.cpu_count()),
          'passes': {'single': pass_timings(work / 'single'),
                     'bank': pass_timings(work / 'bank', resolutions)},
          'top1': {model: {r['test_res']: r['top1'] for r in headline if r['model'] == model}
                   for model in ('finetuned', 'adapter')},
          'frontier': json.loads((work / 'bank' / 'frontier.json').read_text())}


def loads(result: dict) -> str:
  low = min(min(s['load_before'], s['load_after']) for s in result['steps'].values())
  high = max(max(s['load_before'], s['load_after']) for s in result['steps'].values())
  return f'{low:.1f}-{high:.1f}'


def bank_block(result: dict) -> str:
  """README's paragraph on what the bank cost against one K_test, and its adapters' top-1."""
  steps, k_test = result['steps'], result['k_test']
  passes = {int(k): v for k, v in result['passes']['bank'].items()}
  others = [k for k in sorted(passes) if k != k_test]
  per_k = ', '.join(f"{k}: {passes[k]['pass1_s'] + passes[k]['pass2_s']:.0f} s" for k in others)
  adapter = {int(k): v for k, v in result['top1']['adapter'].items()}
  finetuned = {int(k): v for k, v in result['top1']['finetuned'].items()}
  return (
      f'Measured by `python -m studies.adapter_bank` ([docs/adapter_bank.json]'
      f'(docs/adapter_bank.json)) on copies of the demo\'s {epath.Path(result["source"]).name}'
      f' workdir, on {result["machine"]}. The machine was shared (1-minute load average '
      f'{loads(result)} around the runs), so wall times are noisy; CPU times (user + system) '
      f'are steadier. The cached finetune stage at K_test={k_test} alone: '
      f"{steps['single']['wall_s']:.0f} s wall, {steps['single']['cpu_s']:.0f} s CPU (the "
      f'whole command); with the bank at {", ".join(map(str, result["resolutions"]))}: '
      f"{steps['bank']['wall_s']:.0f} s wall, {steps['bank']['cpu_s']:.0f} s CPU, the two "
      f'passes of each further K taking {per_k} wall and its head '
      f"{max(passes[k]['head_s'] for k in others):.1f} s or less. "
      + sgd_comparison(result) + 'Top-1 on validation of each adapter at its own K_test (one '
      'seed, no spread): '
      + ', '.join(f'{k}: {100 * adapter[k]:.2f}%' for k in sorted(adapter))
      + f' (the network fine-tuned at {k_test}, at those K_test: '
      + ', '.join(f'{100 * finetuned[k]:.2f}%' for k in sorted(adapter) if k in finetuned)
      + ').')


def sgd_comparison(result: dict) -> str:
  """What the bank cost against one K_test fine-tuned without it (mode 'sgd'), in CPU time."""
  steps = result['steps']
  if 'sgd_recipe' not in steps:
    return ''
  bank, k_test, n = steps['bank']['cpu_s'], result['k_test'], len(result['resolutions'])
  return (
      f"Without a bank each K_test is its own finetune stage; in mode 'sgd' at {k_test} it "
      f"took {steps['sgd']['cpu_s']:.0f} s CPU for the demo's epochs and "
      f"{steps['sgd_recipe']['cpu_s']:.0f} s CPU for the {result['recipe_epochs']} epochs of "
      f"ResNet-50's recipe: the bank of {n} K_test cost "
      f"{bank / steps['sgd_recipe']['cpu_s']:.2f}x one K_test at the recipe's length "
      f"({bank / steps['sgd']['cpu_s']:.2f}x at the demo's). Each K's passes run at its own "
      "pixels, so a bank costs the sum over its K of two inference passes, not one K_test's. ")


def frontier_block(result: dict) -> str:
  """README's line of frontier numbers: the latency at each K_test, and which adapters are on
  the front."""
  frontier = result['frontier']
  ms = {p['test_res']: p['ms_per_image'] for p in frontier['points']}
  front = sorted(p['test_res'] for p in frontier['points']
                 if p['model'] == 'adapter' and p['pareto'])
  times = [ms[k] for k in sorted(ms)]
  noisy = any(later < earlier for earlier, later in zip(times, times[1:]))
  return (
      "The demo's frontier, from the sweep of that bank (frontier.json: "
      f"{frontier['device']}, {frontier['stack']}, batch {frontier['batch_size']}, the same "
      'shared machine), in ms per image: '
      + ', '.join(f'{k}: {ms[k]:.3f}' for k in sorted(ms))
      + (' (not increasing with K_test: at that load the timings measure the other jobs as '
         'much as the network)' if noisy else '')
      + f"; the adapters on the accuracy-latency front: K_test {', '.join(map(str, front))}.")


def main(argv):
  del argv
  resolutions = [int(k) for k in FLAGS.resolutions]
  result = collect(epath.Path(FLAGS.source), epath.Path(FLAGS.work), FLAGS.data_dir,
                   resolutions)
  out = epath.Path(FLAGS.out)
  out.write_text(json.dumps(result, indent=1) + '\n')
  result = json.loads(out.read_text())  # what the README test renders: keys as JSON has them
  if FLAGS.readme:
    common.write_readme_block(FLAGS.readme, BANK_MARKERS, bank_block(result))
    common.write_readme_block(FLAGS.readme, FRONTIER_MARKERS, frontier_block(result))
  print(bank_block(result), frontier_block(result), sep='\n\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
