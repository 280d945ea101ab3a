"""PyTorch's side of the step benchmark, and a study of why XLA:CPU trains slower.

COMMAND
  python -m benchmarks.torch_cpu --out=docs/benchmarks/cpu_gap.json   # 2 cores: ~30 min

`create_steps` gives benchmarks/steps.py (--torch) torchvision's same network running the same
SGD train step (momentum 0.9, weight decay 1e-4, cross-entropy) and inference, in NCHW
('contiguous') and NHWC ('channels_last') memory formats, so that both frameworks are timed
in the same process and the same rounds.

The study (this file's main) asks where the Flax/PyTorch gap on CPU comes from and how far it
closes. It writes one JSON with
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
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
MEMORY_FORMATS = ('contiguous', 'channels_last')


def create_torch_model(name: str, num_classes: int):
  import torchvision  # pylint: disable=g-import-not-at-top
  if name == 'tiny':  # the same network as benchmarks/steps.py's 'tiny'
    from torchvision.models import resnet  # pylint: disable=g-import-not-at-top
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
  return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


class TorchStep:
  """One torchvision step (train: SGD update; eval: inference) on a fixed random batch."""

  def __init__(self, kind, model, batch_size, resolution, num_classes, memory_format, dtype):
    import torch  # pylint: disable=g-import-not-at-top
    self.kind, self.resolution, self.batch_size = kind, resolution, batch_size
    self.memory_format, self.times, self.cpu_times = memory_format, [], []
    torch.manual_seed(0)
    self.image = torch.randn(batch_size, 3, resolution, resolution)
    self.label = torch.randint(0, num_classes, (batch_size,))
    if memory_format == 'channels_last':
      model = model.to(memory_format=torch.channels_last)
      self.image = self.image.contiguous(memory_format=torch.channels_last)
    self.model = model
    self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                     weight_decay=1e-4)
    # bfloat16 the way PyTorch users get it on CPU: autocast, float32 parameters.
    self.autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
    self.torch = torch

  def run(self) -> float:
    torch = self.torch
    start = time.perf_counter()
    if self.kind == 'train':
      self.model.train()
      self.optimizer.zero_grad(set_to_none=True)
      with self.autocast:
        loss = torch.nn.functional.cross_entropy(self.model(self.image), self.label)
      loss.backward()
      self.optimizer.step()
    else:
      self.model.eval()
      with torch.inference_mode(), self.autocast:
        self.model(self.image).float().sum().item()
    return time.perf_counter() - start

  def record(self, peak_tflops) -> dict:
    del peak_tflops  # FLOPs are XLA's count; see the Flax record of the same step
    step_s = statistics.median(self.times) if self.times else None
    return {'framework': 'torch', 'step': self.kind, 'resolution': self.resolution,
            'batch': self.batch_size, 'memory_format': self.memory_format, 'step_s': step_s,
            'fastest_s': min(self.times) if self.times else None, 'times_s': self.times,
            'cpu_times_s': self.cpu_times,
            'images_per_s': self.batch_size / step_s if step_s else None}


def create_steps(model_name: str, batch_size: int, resolutions, num_classes: int,
                 dtype: str = 'float32', threads: int = 0, memory_formats=MEMORY_FORMATS):
  """Train and eval steps at each resolution in both memory formats, and what ran them.

  Raises:
    ImportError: when PyTorch or torchvision is not installed.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  unknown = set(memory_formats) - set(MEMORY_FORMATS)
  if unknown:
    raise ValueError(f'Unknown memory formats {sorted(unknown)}: use {MEMORY_FORMATS}.')
  steps = []
  for memory_format in memory_formats:
    model = create_torch_model(model_name, num_classes)
    for kind in ('train', 'eval'):
      steps += [TorchStep(kind, model, batch_size, r, num_classes, memory_format, dtype)
                for r in resolutions]
  info = {'torch': torch.__version__, 'torchvision': torchvision.__version__,
          'threads': torch.get_num_threads(), 'mkldnn': torch.backends.mkldnn.is_available(),
          'resolutions': list(resolutions), 'memory_formats': list(memory_formats),
          'step': 'SGD(momentum 0.9, weight decay 1e-4) on cross-entropy; eval: inference_mode'}
  return steps, info


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


FORWARD, INPUT_GRAD, KERNEL_GRAD = ('convolution, forward', 'convolution, input gradient',
                                    'convolution, kernel gradient')
BACKWARD = 'convolution, backward (input and kernel gradients)'
COPIES, DENSE, OTHER = ('transposes and copies', 'dense layer',
                        'BatchNorm, ReLU, pooling, loss, optimizer')
GRAD_COPIES = 'transposes feeding gradient convolutions'


def parse_entry(hlo_text: str) -> dict:
  """{name: (opcode, shape, called computation's text, metadata op_name, operand names)} of
  the entry computation: the thunks XLA:CPU runs."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r'^(?:ENTRY )?%?(\S+) \(.*?\{$\n(.*?)^\}', hlo_text, re.M | re.S)}
  entry = re.search(r'^ENTRY %?(\S+) ', hlo_text, re.M).group(1)
  instructions = {}
  for line in bodies[entry].splitlines():
    match = re.match(r'\s*(?:ROOT )?%?(\S+) = (\(.*?\)|\S+) ([\w-]+)\(', line)
    if match:
      called = re.search(r'calls=%?([\w.-]+)', line)
      op_name = re.search(r'op_name="([^"]*)"', line)
      operands = line[match.end():line.find(')', match.end())]
      instructions[match.group(1)] = (
          match.group(3), match.group(2), bodies.get(called.group(1), '') if called else '',
          op_name.group(1) if op_name else '', re.findall(r'%([\w.-]+)', operands))
  return instructions


def dims(shape: str) -> tuple:
  """(3, 3, 64, 64) from 'f32[3,3,64,64]{3,2,1,0}'."""
  match = re.search(r'\[([\d,]*)\]', shape)
  return tuple(int(d) for d in match.group(1).split(',') if d) if match else ()


def classify_thunks(hlo_text: str) -> dict:
  """{thunk name: category} for a compiled train step.

  Forward convolutions carry jvp(...) in their op_name, gradients transpose(jvp(...)) or no
  metadata at all; a gradient convolution whose result has a kernel's dimensions (in any
  order) is a kernel gradient, the others are input gradients.
  """
  instructions = parse_entry(hlo_text)
  kernels = {tuple(sorted(dims(shape))) for opcode, shape, *_ in instructions.values()
             if opcode == 'parameter' and len(dims(shape)) == 4}
  categories = {}
  for name, (opcode, shape, body, op_name, _) in instructions.items():
    convolution = re.search(r'= (\S+) convolution\(', body)
    if opcode == 'convolution' or convolution:
      result = dims(shape if opcode == 'convolution' else convolution.group(1))
      if op_name and 'transpose(' not in op_name:
        categories[name] = FORWARD
      else:
        categories[name] = KERNEL_GRAD if tuple(sorted(result)) in kernels else INPUT_GRAD
    elif opcode in ('copy', 'transpose') or name.startswith(('transpose', 'copy')):
      categories[name] = COPIES
    elif opcode == 'dot' or ' dot(' in body:
      categories[name] = DENSE
    elif opcode != 'parameter':
      categories[name] = OTHER
  # Which transposes only feed gradient convolutions (layouts the gradients need)?
  consumers = collections.defaultdict(set)
  for name, info in instructions.items():
    for operand in info[4]:
      consumers[operand].add(categories.get(name))
  for name, category in categories.items():
    if category == COPIES and consumers[name] and consumers[name] <= {INPUT_GRAD, KERNEL_GRAD}:
      categories[name] = GRAD_COPIES
  return categories


def count_thunks(hlo_text: str) -> dict:
  """Top-level instructions of a compiled program by kind (name without its number)."""
  kinds = collections.Counter(re.sub(r'\.\d+$', '', name) for name, info in
                              parse_entry(hlo_text).items() if info[0] != 'parameter')
  return dict(kinds.most_common(8))


def profile_flax(step, rounds: int = 3) -> dict:
  """Milliseconds per step in each category, summed over XLA:CPU's thunks (jax.profiler).

  Each round is traced apart and the fastest is kept: the one other work disturbed least.
  """
  import jax  # pylint: disable=g-import-not-at-top
  categories = classify_thunks(step.compiled.as_text())
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
    return BACKWARD if 'backward' in op.lower() else FORWARD
  if op in ('aten::copy_', 'aten::contiguous', 'aten::clone', 'aten::_to_copy', 'aten::to'):
    return COPIES
  if op in ('aten::addmm', 'aten::mm', 'aten::linear'):
    return DENSE
  return OTHER


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
  from benchmarks import steps  # pylint: disable=g-import-not-at-top
  cpus = os.sched_getaffinity(0)
  set_affinity({min(cpus)})
  torch.set_num_threads(1)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  model = steps.create_model(FLAGS.model, FLAGS.num_classes, FLAGS.dtype)
  flax_step, = steps.create_steps(model, FLAGS.batch, [resolution], [], FLAGS.num_classes, mesh)
  torch_step = TorchStep('train', create_torch_model(FLAGS.model, FLAGS.num_classes),
                         FLAGS.batch, resolution, FLAGS.num_classes, 'channels_last', FLAGS.dtype)
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
  from benchmarks import steps  # pylint: disable=g-import-not-at-top
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
  from benchmarks import steps as _  # pylint: disable=g-import-not-at-top,unused-import
  define_study_flags()
  # The study's own defaults for the shared flags of benchmarks/steps.py.
  FLAGS.set_default('train_res', ['128', '224'])
  FLAGS.set_default('test_res', ['224'])
  FLAGS.set_default('torch_formats', ['channels_last'])
  FLAGS.set_default('out', 'docs/benchmarks/cpu_gap.json')
  app.run(main)
