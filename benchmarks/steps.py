"""Step times of the three jitted FixRes steps, side by side, in one process; prints JSON.

COMMAND
  python -m benchmarks.steps --torch --out=docs/benchmarks/cpu.json
  bash benchmarks/gpu.sh OUT_DIR                                      # a GPU, see that file

For one model and global batch, with synthetic in-memory batches, it measures the compile
time (lowering and XLA compilation timed apart), XLA's FLOP count and the median step time of
  train_step     at each K_train (--train_res): every BN in training mode, full backward pass;
  eval_step      at each K_test (--test_res): inference;
  finetune_step  at each K_test: FixRes fine-tuning, where only the classifier is
                 differentiated and only the last BN's statistics move, so XLA drops the
                 backbone's backward pass and the step should cost about one forward pass.
With --torch, torchvision's same network runs the same SGD train step (and inference) in the
same process, in both memory formats (benchmarks/torch_steps.py).

Timed rounds call every step once each, in a new random order every round, so that load from
other processes on a shared machine, and the cold caches a large step leaves behind, hit all
of them alike. A ratio is given twice: the median of its per-round ratios ('measured') and
the ratio of the fastest rounds ('fastest', the least disturbed).
Derived figures: the train-cost ratio of each K_train to the smallest (theory: the pixel
ratio, (224/128)^2 = 3.06), finetune_step / eval_step at each K_test (target <= 1.05),
images/s, achieved FLOP/s and, where the device's dense bf16 peak is known (or given with
--peak_tflops), the model FLOP utilisation (MFU). docs/PERFORMANCE.md is generated from this
JSON by benchmarks/report.py.

Exit status 75 means the device ran out of memory (benchmarks/gpu.sh retries with half the
batch). Neither this file nor the steps it imports use TensorFlow.
"""

import datetime
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import types

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import thunks
from benchmarks import torch_steps
from fixres_jax import evaluate
from fixres_jax import finetune
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import stage
from fixres_jax import train
from studies import common

flags.DEFINE_string('model', 'resnet50',
                    f"One of {models.ARCH_NAMES[:-1]}, or 'tiny' (one basic block per stage).")
flags.DEFINE_integer('batch', 8, 'Global batch size.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Computation dtype.')
flags.DEFINE_list('train_res', ['128', '160', '224'], 'K_train values for train_step.')
flags.DEFINE_list('test_res', ['160', '224', '288', '320'],
                  'K_test values for eval_step and finetune_step.')
flags.DEFINE_integer('warmup', 2, 'Untimed calls of each step after compiling.')
flags.DEFINE_integer('iters', 5, 'Timed rounds (one call of every step per round).')
flags.DEFINE_integer('num_classes', 1000, 'Classifier size.')
flags.DEFINE_integer('num_devices', 0, 'Devices to shard the batch over; 0: all.')
flags.DEFINE_float('peak_tflops', 0.0,
                   'Peak FLOP/s per device for MFU, in TFLOP/s; 0: look up the device kind.')
flags.DEFINE_bool('torch', False, 'Also time torchvision on the CPU (skipped if not installed).')
flags.DEFINE_list('torch_res', ['128', '224'], 'Resolutions of the PyTorch steps.')
flags.DEFINE_list('torch_formats', ['contiguous', 'channels_last'],
                  'PyTorch memory formats: contiguous (NCHW) and/or channels_last (NHWC).')
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads; 0: PyTorch default.')
flags.DEFINE_bool('hlo_summary', False, 'Record the compiled programs\' operations by kind.')
flags.DEFINE_integer('simulate_oom_above', 0,
                     'Testing benchmarks/gpu.sh: act out of memory when --batch is larger.')
flags.DEFINE_string('fill_flops', '',
                    'A result JSON whose FLOPs the device could not count (GPU runs): count '
                    'them here, on abstract shapes of the same steps, and rewrite the file.')
flags.DEFINE_string('out', '', 'Also write the JSON here (rewritten as results come in).')
FLAGS = flags.FLAGS

FINETUNE_TARGET = 1.05  # a fine-tuning step should cost about one forward pass
OOM_EXIT_STATUS = 75  # EX_TEMPFAIL: benchmarks/gpu.sh retries with half the batch

# Dense bf16 peak TFLOP/s per device (vendor datasheets, without sparsity). First match wins,
# so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ('h100 pcie', 756.0), ('h100 nvl', 835.0), ('h100', 989.0), ('h200', 989.0),
    ('gh200', 989.0), ('b200', 2250.0), ('a100', 312.0), ('l40s', 362.0), ('l40', 181.0),
    ('l4', 121.0),
    ('tpu v4', 275.0), ('tpu v5 lite', 197.0), ('tpu v5e', 197.0), ('tpu v5', 459.0),
    ('tpu v6 lite', 918.0), ('tpu v6e', 918.0),
)

# 'tiny' is torchvision's ResNet(BasicBlock, [1, 1, 1, 1]): cheap enough for tests.
TINY = dict(stage_sizes=(1, 1, 1, 1), block='basic', num_filters=64)


def create_model(name: str, num_classes: int, dtype: str):
  if name == 'tiny':
    return models.create_model('resnet', num_classes, dtype=dtype, **TINY)
  return models.create_model(name, num_classes, dtype=dtype)


def look_up_peak_tflops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_BF16_TFLOPS if name in kind), None)


def package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def device_memory_gb(key: str) -> float | None:
  """A figure of the first device's memory_stats() (GPUs and TPUs have them, CPUs not)."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None  # some backends do not implement it
  return stats[key] / 2**30 if key in stats else None


def load_average() -> float | None:
  return os.getloadavg()[0] if hasattr(os, 'getloadavg') else None


def describe_machine() -> dict:
  """Where the numbers come from."""
  device = jax.devices()[0]
  return {
      'platform': device.platform, 'device_kind': device.device_kind,
      'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
      'cpu_model': common.read_cpu_model(),
      'python': platform.python_version(), 'jax': jax.__version__,
      'jaxlib': package_version('jaxlib'),
      'jax_cuda_plugin': package_version('jax-cuda13-plugin') or package_version(
          'jax-cuda12-plugin'),
      'device_memory_gb': device_memory_gb('bytes_limit'),
      'flax': flax.__version__, 'optax': optax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'cpu_affinity': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
      # Other work on the machine slows every step alike; ratios are robust, times are not.
      'load_average_1min': load_average(),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
  }


def create_batch(batch_size: int, resolution: int, num_classes: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      'image': rng.standard_normal((batch_size, resolution, resolution, 3), np.float32),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32),
      'mask': np.ones(batch_size, np.float32),
  }


def sgd_config(weight_decay=1e-4, momentum=0.9):
  """The few config fields create_optimizer/create_finetune_state read (no ml_collections)."""
  return types.SimpleNamespace(optimizer='sgd', weight_decay=weight_decay, momentum=momentum,
                               nesterov=False, no_decay=())


def flops_of(costs) -> float:
  costs = costs[0] if isinstance(costs, (list, tuple)) else costs
  return float(costs.get('flops', 0.0)) if costs else 0.0


def model_flops(jitted, args) -> float:
  """FLOPs of the step as written, counted by XLA on its CPU lowering.

  Counting the program before backend optimisation gives the same figure on every device:
  on GPUs the compiled program hands convolutions to cuDNN custom calls, whose FLOPs XLA's
  cost analysis cannot see (it reports about 2% of the real count there).
  """
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  return flops_of(jitted.trace(*shapes).lower(lowering_platforms=('cpu',)).cost_analysis())


class Step:
  """One compiled step and the state it threads through its calls."""

  def __init__(self, kind, resolution, batch_size, jitted, carry, batch, donates):
    self.kind, self.resolution, self.batch_size = kind, resolution, batch_size
    self.batch, self.donates, self.times, self.cpu_times = batch, donates, [], []
    start = time.perf_counter()
    lowered = jitted.lower(*carry(), batch)
    lowered_at = time.perf_counter()
    self.compiled = lowered.compile()
    self.lower_s, self.compile_s = lowered_at - start, time.perf_counter() - lowered_at
    self.flops = model_flops(jitted, (*carry(), batch))
    self.compiled_flops = flops_of(self.compiled.cost_analysis())
    self.carry, self.thunks = carry, None

  def run(self) -> float:
    """One call, waited for; returns its seconds."""
    args = self.carry()
    start = time.perf_counter()
    out = jax.block_until_ready(self.compiled(*args, self.batch))
    seconds = time.perf_counter() - start
    if self.donates:
      self.carry.set(out[0])
    return seconds

  def record(self, peak_tflops) -> dict:
    step_s = statistics.median(self.times) if self.times else None
    record = {'framework': 'flax', 'step': self.kind, 'resolution': self.resolution,
              'batch': self.batch_size, 'lower_s': self.lower_s, 'compile_s': self.compile_s,
              'flops': self.flops, 'compiled_flops': self.compiled_flops, 'step_s': step_s,
              'fastest_s': min(self.times) if self.times else None, 'times_s': self.times,
              'cpu_times_s': self.cpu_times}
    if self.thunks:
      record['thunks'] = self.thunks
    if step_s:
      record['images_per_s'] = self.batch_size / step_s
      record['tflops_per_s'] = self.flops / step_s / 1e12
      record['mfu'] = record['tflops_per_s'] / peak_tflops if peak_tflops else None
    return record


class Carry:
  """Holds a train state shared by the steps of one kind (shapes do not depend on resolution)."""

  def __init__(self, *values):
    self.values = values

  def __call__(self):
    return self.values

  def set(self, value):
    self.values = (value,) + self.values[1:]


def jit_single_eval_step(model):
  """The evaluation step of one model (evaluate.jit_eval_step's, without its sharing of
  variables between models), on (variables, batch)."""
  return jax.jit(functools.partial(evaluate.eval_step, model))


def create_steps(model, batch_size: int, train_res, test_res, num_classes: int, mesh):
  """Compiles the steps one by one; yields them in the order they run in a round."""
  # On the host, so that every state below gets buffers of its own (train and finetune
  # donate theirs).
  variables = jax.device_get(train.init_variables(model, max(train_res + test_res), seed=0))
  schedule = optax.constant_schedule(0.01)
  tx = train.create_optimizer(sgd_config(), schedule, variables['params'])
  train_state = parallel.replicate(stage.create_train_state(model, variables, tx), mesh)
  names = models.finetuned_names(model, train_bn_affine=False)
  finetune_state = parallel.replicate(finetune.create_finetune_state(
      model, variables, sgd_config(), schedule, names), mesh)
  variables = parallel.replicate(variables, mesh)

  train_fn = jax.jit(train.train_step, donate_argnums=0)
  eval_fn = jit_single_eval_step(model)
  finetune_fn = jax.jit(functools.partial(finetune.finetune_step, trainable=names,
                                          last_bn_path=model.last_bn_path), donate_argnums=0)
  train_carry, finetune_carry, eval_carry = (Carry(train_state), Carry(finetune_state),
                                             Carry(variables))

  def batch_at(resolution):
    return parallel.make_global_batch(create_batch(batch_size, resolution, num_classes), mesh)

  for resolution in train_res:
    yield Step('train', resolution, batch_size, train_fn, train_carry, batch_at(resolution),
               donates=True)
  for resolution in test_res:
    batch = batch_at(resolution)
    yield Step('eval', resolution, batch_size, eval_fn, eval_carry, batch, donates=False)
    yield Step('finetune', resolution, batch_size, finetune_fn, finetune_carry, batch,
               donates=True)


def time_step(step) -> None:
  """One timed call: wall-clock and CPU seconds."""
  cpu = time.process_time()
  step.times.append(step.run())
  step.cpu_times.append(time.process_time() - cpu)


def time_rounds(steps: list, iters: int, after_round=lambda i: None) -> None:
  """Times every step once per round, for `iters` rounds; after_round(i) after each."""
  order = np.random.default_rng(0)
  for i in range(iters):
    # A new order every round: a step that follows a large one finds cold caches, which
    # would otherwise bias the same ratios every round.
    for index in order.permutation(len(steps)):
      time_step(steps[index])
    after_round(i)


def ratio(numerator, denominator) -> dict:
  """Two estimates of a time ratio on a machine that other work shares.

  measured: the median of per-round ratios (robust to load that drifts between rounds);
  fastest: the ratio of the fastest rounds (other work only ever adds time, so the fastest
  round of each step is the one it disturbed least);
  cpu_time: the median ratio of the process's CPU time (all threads) per step, which load
  does not inflate when each framework runs one thread (benchmarks/torch_cpu.py 'one_core').
  """
  a, b = numerator.get('times_s', []), denominator.get('times_s', [])
  if not a or not b:
    return {'measured': None, 'fastest': None, 'cpu_time': None}
  cpu = [x / y for x, y in zip(numerator.get('cpu_times_s', []),
                                denominator.get('cpu_times_s', []))]  # older files lack them
  return {'measured': statistics.median(x / y for x, y in zip(a, b)),
          'fastest': min(a) / min(b), 'cpu_time': statistics.median(cpu) if cpu else None}


def derive(records: list) -> dict:
  """Train-cost ratios to the smallest K_train, finetune/eval at each K_test, torch/flax."""
  by_key = {(r['framework'], r['step'], r['resolution'], r.get('memory_format')): r
            for r in records}
  flax_train = sorted(r['resolution'] for r in records
                      if r['framework'] == 'flax' and r['step'] == 'train')
  derived = {'train_cost_ratio': [], 'finetune_over_eval': [], 'flax_over_torch': []}
  if flax_train:
    base = by_key['flax', 'train', flax_train[0], None]
    for resolution in flax_train[1:]:
      record = by_key['flax', 'train', resolution, None]
      derived['train_cost_ratio'].append({
          'resolution': resolution, 'base': base['resolution'], **ratio(record, base),
          'theory': (resolution / base['resolution'])**2,
          'flops_ratio': record['flops'] / base['flops'] if base['flops'] else None})
  for (framework, step, resolution, _), record in sorted(
      by_key.items(), key=lambda item: (item[0][:3], item[0][3] or '')):
    if framework == 'flax' and step == 'finetune':
      derived['finetune_over_eval'].append({
          'resolution': resolution, 'target': FINETUNE_TARGET,
          **ratio(record, by_key['flax', 'eval', resolution, None])})
    if framework == 'torch' and ('flax', step, resolution, None) in by_key:
      derived['flax_over_torch'].append({
          'step': step, 'resolution': resolution, 'memory_format': record['memory_format'],
          **ratio(by_key['flax', step, resolution, None], record)})
  return derived


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def benchmark(write) -> dict:
  """Compiles, warms up and times every step; `write(result)` is called as results come in."""
  train_res = [int(r) for r in FLAGS.train_res]
  test_res = [int(r) for r in FLAGS.test_res]
  num_devices = FLAGS.num_devices or jax.device_count()
  if FLAGS.batch % num_devices:
    raise app.UsageError(f'--batch={FLAGS.batch} does not split over {num_devices} devices: '
                         f'use a multiple of {num_devices} or set --num_devices.')
  if FLAGS.simulate_oom_above and FLAGS.batch > FLAGS.simulate_oom_above:
    raise MemoryError(f'RESOURCE_EXHAUSTED: simulated at --batch={FLAGS.batch}.')
  mesh = jax.make_mesh((num_devices,), (parallel.DATA_AXIS,),
                       devices=jax.devices()[:num_devices])
  machine = describe_machine()
  peak = FLAGS.peak_tflops or look_up_peak_tflops(machine['device_kind'])
  result = {
      'kind': 'steps', 'machine': machine,
      'config': {'model': FLAGS.model, 'batch': FLAGS.batch, 'dtype': FLAGS.dtype,
                 'num_devices': num_devices, 'warmup': FLAGS.warmup, 'iters': FLAGS.iters,
                 'train_res': train_res, 'test_res': test_res,
                 'peak_tflops_per_device': peak,
                 'peak_note': 'dense bf16 peak of the device' if peak else
                              'peak of the device, unknown here: no MFU'},
      'records': [], 'derived': {}}
  model = create_model(FLAGS.model, FLAGS.num_classes, FLAGS.dtype)
  steps = []

  def update():
    result['records'] = [s.record(peak) for s in steps]
    result['derived'] = derive(result['records'])
    result['machine']['load_average_1min_end'] = load_average()
    result['machine']['peak_memory_gb'] = device_memory_gb('peak_bytes_in_use')
    write(result)

  for step in create_steps(model, FLAGS.batch, train_res, test_res, FLAGS.num_classes, mesh):
    if FLAGS.hlo_summary:
      step.thunks = thunks.count_thunks(step.compiled.as_text())
    print(f'compiled {step.kind}@{step.resolution}: lower {step.lower_s:.1f} s, '
          f'compile {step.compile_s:.1f} s', file=sys.stderr)
    steps.append(step)
    update()  # a run cut short by a time limit still leaves its compile times
    # Warm up at once, so that running out of memory shows before the next compile.
    for _ in range(FLAGS.warmup):
      step.run()
  for step in create_torch_steps(result):
    steps.append(step)
    for _ in range(FLAGS.warmup):
      step.run()

  def report_round(i):
    print(f'round {i + 1}/{FLAGS.iters} done', file=sys.stderr)
    update()

  time_rounds(steps, FLAGS.iters, report_round)
  return result


def create_torch_steps(result: dict) -> list:
  """PyTorch's side (a note in result['torch'] when it is skipped)."""
  if not FLAGS.torch:
    result['torch'] = {'skipped': 'run without --torch'}
    return []
  try:
    steps, info = torch_steps.create_steps(FLAGS.model, FLAGS.batch,
                                           [int(r) for r in FLAGS.torch_res], FLAGS.num_classes,
                                           FLAGS.dtype, FLAGS.torch_threads, FLAGS.torch_formats)
  except ImportError as e:
    result['torch'] = {'skipped': f'PyTorch is not installed ({e})'}
    return []
  result['torch'] = info
  return steps


def write_json(result: dict, path: str) -> None:
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      json.dump(result, f, indent=1)
    os.replace(path + '.tmp', path)


def count_step_flops(model_name: str, dtype: str, batch: int, kind: str, resolution: int,
                     num_classes: int = 1000) -> float:
  """FLOPs of one step of the benchmark, from shapes only: nothing is allocated or compiled."""
  model = create_model(model_name, num_classes, dtype)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)), train=False))
  schedule = optax.constant_schedule(0.01)
  names = models.finetuned_names(model, train_bn_affine=False)
  batch_shapes = {'image': jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32),
                  'label': jax.ShapeDtypeStruct((batch,), jnp.int32),
                  'mask': jax.ShapeDtypeStruct((batch,), jnp.float32)}
  if kind == 'train':
    state = jax.eval_shape(lambda v: stage.create_train_state(
        model, v, train.create_optimizer(sgd_config(), schedule, v['params'])), variables)
    return model_flops(jax.jit(train.train_step), (state, batch_shapes))
  if kind == 'finetune':
    state = jax.eval_shape(lambda v: finetune.create_finetune_state(
        model, v, sgd_config(), schedule, names), variables)
    step = functools.partial(finetune.finetune_step, trainable=names,
                             last_bn_path=model.last_bn_path)
    return model_flops(jax.jit(step), (state, batch_shapes))
  return model_flops(jit_single_eval_step(model), (variables, batch_shapes))


def fill_flops(path: str) -> dict:
  """Adds FLOPs, TFLOP/s and MFU to the records of a result that lacks them."""
  with open(path) as f:
    result = json.load(f)
  config, peak = result['config'], result['config'].get('peak_tflops_per_device')
  for record in result['records']:
    if record.get('framework') != 'flax' or record.get('flops'):
      continue
    record['flops'] = count_step_flops(config['model'], config['dtype'], record['batch'],
                                       record['step'], record['resolution'])
    record['flops_counted_on'] = 'cpu (abstract shapes; the device could not count them)'
    if record.get('step_s'):
      record['tflops_per_s'] = record['flops'] / record['step_s'] / 1e12
      record['mfu'] = record['tflops_per_s'] / peak if peak else None
  result['derived'] = derive(result['records'])
  write_json(result, path)
  return result


def main(argv):
  del argv
  if FLAGS.fill_flops:
    print(json.dumps(fill_flops(FLAGS.fill_flops)['records'], indent=1))
    return
  try:
    result = benchmark(functools.partial(write_json, path=FLAGS.out))
  except Exception as e:  # pylint: disable=broad-except
    if is_out_of_memory(e):
      print(f'Out of device memory at --batch={FLAGS.batch}: {str(e)[:300]}', file=sys.stderr)
      sys.exit(OOM_EXIT_STATUS)
    raise
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
