"""A study of why XLA:CPU trains slower than PyTorch.

COMMAND
  python -m benchmarks.torch_cpu --out=docs/benchmarks/cpu_gap.json   # 2 cores: ~30 min

It asks where the Flax/PyTorch gap on CPU comes from and how far it closes (PyTorch's steps:
benchmarks/torch_steps.py). It writes one JSON with
  profile: one train step of each framework at --profile_res, its time split by operation
    (XLA's thunks from jax.profiler, classified from the compiled HLO: convolution forward,
    input gradient, kernel gradient, transposes and copies, the rest; PyTorch's operators
    from torch.profiler);
  variants: benchmarks/steps.py run in a fresh process per XLA:CPU setting (the flags are read
    once, when the backend starts), batch size, dtype and thread count, each with PyTorch timed
    in the same process, so every ratio is measured under the same load.
"""

import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import steps
from benchmarks import thunks
from benchmarks import torch_steps

FLAGS = flags.FLAGS
# PyTorch's profiler does not split a convolution's backward pass into its two gradients.
BACKWARD = 'convolution, backward (input and kernel gradients)'

# The study: each variant is benchmarks/steps.py in a fresh process, pinned to one core with
# one PyTorch thread unless it says otherwise: the CPU time of a single thread is not inflated
# by other work on the machine, while two OpenMP threads on two shared cores wait for each
# other whenever one is preempted. (name, what it tests, extra XLA_FLAGS, extra steps.py
# arguments, one core?)
ONE_CORE = ('taskset', '-c', '0')
VARIANTS = (
    ('default', 'jax defaults: convolutions and reductions in YNNPACK fusions', '', (), True),
    ('eigen_convolutions', "YNNPACK fusions off: XLA's older Eigen convolutions",
     '--xla_cpu_experimental_ynn_fusion_type=', (), True),
    ('xnn_graph_fusion', 'XNNPACK graph fusion (greedy)',
     '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY', (), True),
    ('onednn', 'oneDNN thunks for matmuls and convolutions', '--xla_cpu_use_onednn=true', (),
     True),
    ('vector_width_512', 'AVX-512 code generation for the fusions XLA emits itself',
     '--xla_cpu_prefer_vector_width=512', (), True),
    ('fast_math', 'unsafe fast math', '--xla_cpu_enable_fast_math=true', (), True),
    ('batch_16', 'twice the batch', '', ('--batch=16',), True),
    ('bfloat16', 'bfloat16 computation (PyTorch: CPU autocast)', '', ('--dtype=bfloat16',), True),
    ('two_cores', 'both cores: XLA thread pool and PyTorch OpenMP threads (the default setup)',
     '', (), False),
)


def define_study_flags():
  flags.DEFINE_list('variants', [v[0] for v in VARIANTS], 'Variants of the study to run.')
  flags.DEFINE_integer('profile_res', 224, 'Resolution of the per-operation profiles; 0: none.')
  flags.DEFINE_integer('variant_timeout', 1200, 'Seconds allowed per variant.')


def profile_flax(step, rounds: int = 3) -> dict:
  """Milliseconds per step in each category, summed over XLA:CPU's thunks (jax.profiler).

  Each round is traced apart and the fastest is kept: the one other work disturbed least.
  """
  import jax  # pylint: disable=g-import-not-at-top
  categories = thunks.classify_thunks(step.compiled.as_text())
  profiles = []
  for _ in range(rounds):
    with tempfile.TemporaryDirectory() as folder:
      jax.profiler.start_trace(folder)
      wall = step.run()
      jax.profiler.stop_trace()
      trace = glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)[0]
      profile = jax.profiler.ProfileData.from_file(trace)
    totals = collections.Counter()
    for plane in profile.planes:
      for line in plane.lines:
        for event in line.events:
          if event.name in categories:
            totals[categories[event.name]] += event.duration_ns / 1e6
    profiles.append({'step_ms': wall * 1e3, 'ops_ms': dict(totals.most_common())})
  fastest = min(profiles, key=lambda p: p['step_ms'])
  return dict(fastest, rounds_ms=[p['step_ms'] for p in profiles],
              thunks=collections.Counter(categories.values()))


def categorize_torch(op: str) -> str:
  if 'conv' in op.lower():
    return BACKWARD if 'backward' in op.lower() else thunks.FORWARD
  if op in ('aten::copy_', 'aten::contiguous', 'aten::clone', 'aten::_to_copy', 'aten::to'):
    return thunks.COPIES
  if op in ('aten::addmm', 'aten::mm', 'aten::linear'):
    return thunks.DENSE
  return thunks.OTHER


def profile_torch(step, rounds: int = 3) -> dict:
  """Milliseconds per step in each category: self CPU time of PyTorch's operators.

  Each round is profiled apart and the fastest is kept.
  """
  import torch  # pylint: disable=g-import-not-at-top
  profiles = []
  for _ in range(rounds):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
      wall = step.run()
    totals = collections.Counter()
    for event in profiler.key_averages():
      totals[categorize_torch(event.key)] += event.self_cpu_time_total / 1e3
    profiles.append({'step_ms': wall * 1e3, 'ops_ms': dict(totals.most_common())})
  fastest = min(profiles, key=lambda p: p['step_ms'])
  return dict(fastest, rounds_ms=[p['step_ms'] for p in profiles])


def profile_both(resolution: int) -> dict:
  """Where a train step's time goes, in Flax (XLA:CPU) and in PyTorch, in one process.

  Like the variants, on one core with one PyTorch thread.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  cpus = os.sched_getaffinity(0)
  set_affinity({min(cpus)})
  torch.set_num_threads(1)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  model = steps.create_model(FLAGS.model, FLAGS.num_classes, FLAGS.dtype)
  flax_step, = steps.create_steps(model, FLAGS.batch, [resolution], [], FLAGS.num_classes, mesh)
  torch_model = torch_steps.create_torch_model(FLAGS.model, FLAGS.num_classes)
  torch_step = torch_steps.TorchStep('train', torch_model, FLAGS.batch, resolution,
                                     FLAGS.num_classes, 'channels_last', FLAGS.dtype)
  for step in (flax_step, torch_step, flax_step, torch_step):
    step.run()
  profile = {'resolution': resolution, 'batch': FLAGS.batch, 'model': FLAGS.model,
             'torch_memory_format': 'channels_last', 'cores': 1, 'torch_threads': 1,
             'flax': profile_flax(flax_step), 'torch': profile_torch(torch_step)}
  set_affinity(cpus)  # the variants choose their own cores
  return profile


def set_affinity(cpus) -> None:
  """Moves every thread of this process, XLA's pool included, onto `cpus` (Linux)."""
  for thread in os.listdir('/proc/self/task'):
    try:
      os.sched_setaffinity(int(thread), cpus)
    except OSError:
      pass  # a thread that has just ended


def summarize(result: dict) -> dict:
  """The figures of one variant's benchmarks/steps.py JSON that the study compares."""
  flax = {f"{r['step']}@{r['resolution']}": r for r in result['records']
          if r['framework'] == 'flax'}
  torch = {f"{r['step']}@{r['resolution']}": r for r in result['records']
           if r['framework'] == 'torch'}
  return {
      'flax_step_s': {k: r['fastest_s'] for k, r in flax.items()},
      'torch_step_s': {k: r['fastest_s'] for k, r in torch.items()},
      # The ratio of the fastest rounds: other work on the machine slows PyTorch's OpenMP
      # threads far more than XLA's, and the variants run minutes apart.
      'flax_over_torch': {f"{d['step']}@{d['resolution']}": d['fastest']
                          for d in result['derived']['flax_over_torch']},
      'flax_over_torch_median': {f"{d['step']}@{d['resolution']}": d['measured']
                                 for d in result['derived']['flax_over_torch']},
      'flax_over_torch_cpu_time': {f"{d['step']}@{d['resolution']}": d['cpu_time']
                                   for d in result['derived']['flax_over_torch']},
      'train_cost_ratio': {f"{d['resolution']}/{d['base']}": d['fastest']
                           for d in result['derived']['train_cost_ratio']},
      'compile_s': sum(r['lower_s'] + r['compile_s'] for r in flax.values()),
      'thunks': {k: r.get('thunks') for k, r in flax.items() if k.startswith('train')},
      'load_average_1min': result['machine'].get('load_average_1min'),
      'torch': result.get('torch', {}),
  }


def run_variant(variant, folder: str) -> dict:
  """benchmarks/steps.py with and without Flax in a fresh process under one variant."""
  name, description, xla_flags, args, one_core = variant
  prefix = ONE_CORE if one_core else ()
  args = (*args, '--torch_threads=1') if one_core else args
  out = os.path.join(folder, f'{name}.json')
  command = [*prefix, sys.executable, '-m', 'benchmarks.steps', f'--model={FLAGS.model}',
             f'--batch={FLAGS.batch}', f'--dtype={FLAGS.dtype}',
             f"--train_res={','.join(FLAGS.train_res)}", f"--test_res={','.join(FLAGS.test_res)}",
             f"--torch_res={','.join(FLAGS.torch_res)}",
             f"--torch_formats={','.join(FLAGS.torch_formats)}", '--torch', '--hlo_summary',
             f'--warmup={FLAGS.warmup}', f'--iters={FLAGS.iters}', f'--out={out}', *args]
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip())
  record = {'name': name, 'description': description, 'xla_flags': xla_flags,
            'args': list(args), 'prefix': ' '.join(prefix)}
  start = time.perf_counter()
  try:
    completed = subprocess.run(command, env=env, capture_output=True, text=True,
                               timeout=FLAGS.variant_timeout, check=False)
  except subprocess.TimeoutExpired:
    completed = None
  record['wall_s'] = time.perf_counter() - start
  if completed is None or completed.returncode:
    record['error'] = (completed.stderr[-1500:] if completed else
                       f'timed out after {FLAGS.variant_timeout} s')
    return record
  with open(out) as f:
    record['summary'] = summarize(json.load(f))
  return record


def main(argv):
  del argv
  unknown = set(FLAGS.variants) - {v[0] for v in VARIANTS}
  if unknown:
    raise app.UsageError(f'Unknown --variants {sorted(unknown)}: '
                         f'choose from {[v[0] for v in VARIANTS]}.')
  study = {'kind': 'cpu_gap', 'machine': steps.describe_machine(),
           'config': {'model': FLAGS.model, 'batch': FLAGS.batch, 'dtype': FLAGS.dtype,
                      'train_res': [int(r) for r in FLAGS.train_res],
                      'test_res': [int(r) for r in FLAGS.test_res],
                      'warmup': FLAGS.warmup, 'iters': FLAGS.iters},
           'profile': None, 'variants': []}
  if FLAGS.profile_res:
    study['profile'] = profile_both(FLAGS.profile_res)
    steps.write_json(study, FLAGS.out)
  with tempfile.TemporaryDirectory() as folder:
    for variant in VARIANTS:
      if variant[0] in FLAGS.variants:
        study['variants'].append(run_variant(variant, folder))
        print(f'variant {variant[0]} done', file=sys.stderr)
        steps.write_json(study, FLAGS.out)
  print(json.dumps(study, indent=1))


if __name__ == '__main__':
  define_study_flags()
  # The study's own defaults for the shared flags of benchmarks/steps.py.
  FLAGS.set_default('train_res', ['128', '224'])
  FLAGS.set_default('test_res', ['224'])
  FLAGS.set_default('torch_formats', ['channels_last'])
  FLAGS.set_default('out', 'docs/benchmarks/cpu_gap.json')
  app.run(main)
