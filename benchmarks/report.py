"""docs/PERFORMANCE.md from the benchmark JSON files, and README's Performance block.

COMMAND
  python -m benchmarks.report [--inputs=docs/benchmarks/*.json] [--out=docs/PERFORMANCE.md] \
      [--readme=README.md]

Reads the JSON of benchmarks/steps.py (kind 'steps': docs/benchmarks/cpu.json, and gpu.json
once benchmarks/gpu.sh has run on a GPU) and of benchmarks/torch_cpu.py (kind 'cpu_gap':
docs/benchmarks/cpu_gap.json), and renders every number with the machine it came from.
Nothing in the output is typed by hand.
"""

import glob
import json
import os

from absl import app
from absl import flags

from studies import common

flags.DEFINE_list('inputs', ['docs/benchmarks/*.json'], 'JSON files or glob patterns.')
flags.DEFINE_string('out', 'docs/PERFORMANCE.md', 'Markdown file to write.')
flags.DEFINE_string('readme', 'README.md', "README whose Performance block is rewritten ('': "
                    'print the block only).')
FLAGS = flags.FLAGS

STEP_NAMES = {'train': 'train_step', 'eval': 'eval_step', 'finetune': 'finetune_step'}
FORWARD, INPUT_GRAD, KERNEL_GRAD, BACKWARD = (
    'convolution, forward', 'convolution, input gradient', 'convolution, kernel gradient',
    'convolution, backward (input and kernel gradients)')
GRAD_COPIES, COPIES, ALL_COPIES = ('transposes feeding gradient convolutions',
                                   'transposes and copies', 'transposes and copies, all')
DENSE, OTHER = 'dense layer', 'BatchNorm, ReLU, pooling, loss, optimizer'
PROFILE_ROWS = (FORWARD, INPUT_GRAD, KERNEL_GRAD, BACKWARD, GRAD_COPIES, ALL_COPIES, DENSE,
                OTHER)
SHARED_ROWS = (FORWARD, BACKWARD, ALL_COPIES, DENSE, OTHER)  # PyTorch has these too


def number(value, digits: int = 2, suffix: str = '') -> str:
  if value is None:
    return 'n/a'
  return f'{value:,.{digits}f}{suffix}'


def milliseconds(seconds) -> str:
  return number(seconds * 1e3 if seconds is not None else None, 1)


def flax_over_torch(derived) -> list:
  """Flax / PyTorch three ways (see benchmarks/steps.py's ratio), or n/a with no Flax twin."""
  if derived is None:
    return ['n/a'] * 3
  return [number(derived['measured']), number(derived.get('fastest')),
          number(derived.get('cpu_time'))]


def describe_machine(machine: dict) -> str:
  """One line: the device, the host, the software, and the load when it was measured."""
  if machine['platform'] == 'cpu':
    device = (f"CPU {machine['cpu_model']}, {machine.get('cpu_affinity') or machine['cpu_count']}"
              ' cores')
  else:
    device = f"{machine['device_count']} x {machine['device_kind']} ({machine['platform']}"
    if machine.get('device_memory_gb'):
      device += f", {machine['device_memory_gb']:.0f} GiB for XLA"
    if machine.get('peak_memory_gb'):
      device += f", peak {machine['peak_memory_gb']:.1f} GiB used"
    device += ')'
  load = machine.get('load_average_1min')
  end = machine.get('load_average_1min_end')
  load_text = '' if load is None else f', load average {load:.1f}' + (
      f' -> {end:.1f}' if end is not None else '')
  flags_text = f", XLA_FLAGS='{machine['xla_flags']}'" if machine.get('xla_flags') else ''
  return (f"{device}; jax {machine['jax']}, flax {machine['flax']}, Python {machine['python']}"
          f"{flags_text}; {machine['date']}{load_text}")


def load_results(patterns) -> list:
  """[(file name, JSON)] of every file the patterns match, in name order."""
  paths = sorted({p for pattern in patterns for p in glob.glob(pattern)})
  results = []
  for path in paths:
    with open(path) as f:
      results.append((os.path.basename(path), json.load(f)))
  return results


def render_steps(name: str, result: dict) -> str:
  config, machine = result['config'], result['machine']
  flax = [r for r in result['records'] if r['framework'] == 'flax']
  torch = [r for r in result['records'] if r['framework'] == 'torch']
  peak = config['peak_tflops_per_device']
  parts = [
      f"## {name}: {config['model']}, {config['dtype']}, batch {config['batch']}",
      f'Machine: {describe_machine(machine)}.',
      f"Median of {config['iters']} timed rounds (every step once per round, in a new random "
      f"order each round) after {config['warmup']} warm-up calls; synthetic in-memory batches "
      f"on {config['num_devices']} device(s). FLOPs are XLA's count for the step as written "
      '(its CPU lowering, the same figure on every device); '
      + (f"MFU uses the {config['peak_note']} ({number(peak, 0)} TFLOP/s)." if peak else
         "no MFU: this device's peak FLOP/s is unknown."),
      common.format_table(
          ['step', 'K', 'step time (ms)', 'fastest (ms)', 'images/s', 'lower + compile (s)',
           'GFLOP/step', 'TFLOP/s', 'MFU'],
          [[STEP_NAMES[r['step']], r['resolution'], milliseconds(r['step_s']),
            milliseconds(r.get('fastest_s')), number(r.get('images_per_s'), 1),
            number(r['lower_s'] + r['compile_s'], 1),
            number(r['flops'] / 1e9, 1), number(r.get('tflops_per_s'), 3),
            number(r['mfu'] * 100, 1, '%') if r.get('mfu') else 'n/a'] for r in flax]),
      '### What FixRes saves',
      common.format_table(
          ['train_step cost', 'measured (time)', 'fastest rounds', 'theory (pixels)',
           "XLA's FLOP ratio"],
          [[f"K={d['resolution']} / K={d['base']}", number(d['measured']),
            number(d.get('fastest')), number(d['theory']), number(d['flops_ratio'])]
           for d in result['derived']['train_cost_ratio']]),
      common.format_table(
          ['K_test', 'finetune_step / eval_step', 'fastest rounds', 'target',
           'met (measured)'],
          [[d['resolution'], number(d['measured'], 3), number(d.get('fastest'), 3),
            f"<= {d['target']}",
            'yes' if d['measured'] is not None and d['measured'] <= d['target'] else 'no']
           for d in result['derived']['finetune_over_eval']]),
  ]
  if torch:
    ratios = {(d['step'], d['resolution'], d['memory_format']): d
              for d in result['derived']['flax_over_torch']}
    info = result['torch']
    parts += [
        '### Side by side with PyTorch',
        f"torch {info['torch']}, torchvision {info['torchvision']}, {info['threads']} threads, "
        f"oneDNN {'on' if info['mkldnn'] else 'off'}; {info['step']}. The ratio is Flax's step "
        "time over PyTorch's (above 1: Flax is slower), in the same process and rounds: the "
        'median of per-round ratios, the ratio of the fastest rounds, and the median ratio of '
        "CPU time (all threads). Other work on the machine slows PyTorch's OpenMP threads far "
        "more than XLA's thread pool, so the fastest rounds are the fairer comparison.",
        common.format_table(
            ['PyTorch step', 'K', 'memory format', 'step time (ms)', 'fastest (ms)',
             'images/s', 'Flax / PyTorch', 'fastest rounds', 'CPU time'],
            [[STEP_NAMES[r['step']], r['resolution'], r['memory_format'],
              milliseconds(r['step_s']), milliseconds(r.get('fastest_s')),
              number(r.get('images_per_s'), 1)] + flax_over_torch(
                  ratios.get((r['step'], r['resolution'], r['memory_format'])))
             for r in torch])]
  elif 'skipped' in result.get('torch', {}):
    parts.append(f"PyTorch: skipped ({result['torch']['skipped']}).")
  return '\n\n'.join(parts)


def render_profile(profile: dict) -> str:
  ops, torch = profile['flax']['ops_ms'], dict(profile['torch']['ops_ms'])
  flax = dict(ops)
  flax[BACKWARD] = flax.get(INPUT_GRAD, 0) + flax.get(KERNEL_GRAD, 0)
  flax[ALL_COPIES] = flax.get(GRAD_COPIES, 0) + flax.get(COPIES, 0)
  torch[ALL_COPIES] = torch.get(COPIES, 0)
  flax_total, torch_total = sum(ops.values()), sum(profile['torch']['ops_ms'].values())
  rows = []
  for row in PROFILE_ROWS:
    if row in flax or row in torch:
      rows.append([row, number(flax.get(row), 1), number(torch.get(row), 1),
                   number(flax[row] / torch[row]) if flax.get(row) and torch.get(row) else ''])
  rows.append(['sum of operations', number(flax_total, 1), number(torch_total, 1),
               number(flax_total / torch_total)])
  rows.append(['step (wall clock)', number(profile['flax']['step_ms'], 1),
               number(profile['torch']['step_ms'], 1),
               number(profile['flax']['step_ms'] / profile['torch']['step_ms'])])
  largest = max(SHARED_ROWS, key=lambda k: flax.get(k, 0) - torch.get(k, 0))
  return '\n\n'.join([
      f"### Where a train step's time goes ({profile['model']}, K={profile['resolution']}, "
      f"batch {profile['batch']}, PyTorch {profile['torch_memory_format']}, "
      f"{profile.get('cores', 'all')} core(s))",
      *([f"Profiled on: {describe_machine(profile['machine'])}."] if 'machine' in profile
        else []),
      f"Milliseconds per step, in the fastest of {len(profile['flax'].get('rounds_ms', [0]))} "
      'profiled steps of each framework, summed over operations (XLA: the duration of each '
      'thunk, on whichever thread ran it; PyTorch: the self CPU time of each operator). '
      'Operations may '
      "overlap, so the sum can differ from the wall-clock step. Flax's thunks by category: "
      + ', '.join(f'{k}: {v}' for k, v in profile['flax']['thunks'].items()) + '.',
      common.format_table(['operation', 'Flax (XLA:CPU)', 'PyTorch', 'Flax / PyTorch'], rows),
      f"The largest excess over PyTorch is in '{largest}': "
      f"{number(flax.get(largest, 0) - torch.get(largest, 0), 1)} ms per step more.",
  ])


def render_variants(variants: list) -> str:
  default = next((v for v in variants if v['name'] == 'default' and 'summary' in v), None)
  rows = []
  for v in variants:
    setting = ' '.join(filter(None, [v['prefix'], v['xla_flags'], *v['args']])) or '(none)'
    if 'summary' not in v:
      rows.append([v['name'], v['description'], f'`{setting}`', f"failed: {v['error'][-120:]}"]
                  + [''] * 6)
      continue
    s = v['summary']
    ratio = s['flax_over_torch']
    train = [k for k in s['flax_step_s'] if k.startswith('train@')]
    same = ('' if default is None or v is default else
            'same' if s['thunks'] == default['summary']['thunks'] else 'changed')
    rows.append([
        v['name'], v['description'], f'`{setting}`',
        ', '.join(f"{k}: {number(s['flax_step_s'][k] * 1e3, 0)}" for k in sorted(train)),
        ', '.join(f"{k}: {number(t * 1e3, 0)}" for k, t in sorted(s['torch_step_s'].items())
                  if k.startswith('train@')),
        ', '.join(f'{k}: {number(r)} ({number(s["flax_over_torch_median"].get(k))}, '
                  f'{number(s.get("flax_over_torch_cpu_time", {}).get(k))})'
                  for k, r in sorted(ratio.items())),
        number(s['compile_s'], 0), same, number(s['load_average_1min'], 1)])
  parts = [
      'Step times are the fastest round of each step. Flax / PyTorch is the ratio of the '
      'fastest rounds, with the median of per-round ratios and the median ratio of CPU time '
      'in brackets. With one thread each (every variant but two_cores) the CPU-time ratio is '
      'the one other work on the machine does not inflate. "XLA program vs '
      'default" compares the compiled train steps\' operations by kind: "same" means the '
      'setting did not change what XLA compiled. "load" is the 1-minute load average when the '
      'variant started.',
      common.format_table(
          ['variant', 'what', 'setting', 'Flax train (ms)', 'PyTorch train (ms)',
           'Flax / PyTorch', 'compile (s)', 'XLA program vs default', 'load'], rows)]
  key, scored = rank_variants(variants)
  if key:
    base = dict((name, r) for r, name in scored).get('default')
    parts.append(f'Flax / PyTorch CPU time for {key}, one thread each: {number(base)} with '
                 f'the defaults; the lowest is {number(scored[0][0])} ({scored[0][1]}). Each '
                 'variant is a separate process; its ratio is measured within that process, '
                 'so it compares across variants better than their step times do.')
  return '\n\n'.join(parts)


def render_gap(name: str, result: dict) -> str:
  config = result['config']
  parts = [f'## {name}: why Flax trains slower than PyTorch on this CPU, and what closes it',
           f"Machine: {describe_machine(result['machine'])}.",
           f"Model {config['model']}, batch {config['batch']}, {config['dtype']} unless a "
           f"variant says otherwise; {config['iters']} timed rounds per variant."]
  if result.get('profile'):
    parts.append(render_profile(result['profile']))
  if result.get('variants'):
    parts += ['### XLA:CPU flags, batch, dtype and threads', render_variants(result['variants'])]
  return '\n\n'.join(parts)


# The GPU step each CPU transform feeds: transform name -> (step, resolution).
FEEDS = {'train@128': ('train', 128), 'train@160': ('train', 160), 'train@224': ('train', 224),
         'finetune@288': ('finetune', 288), 'test@224': ('eval', 224),
         'test@288': ('eval', 288)}


def gpu_rates(results: list) -> dict:
  """(step, resolution) -> (images/s, device kind, file) of every GPU steps JSON."""
  rates = {}
  for name, result in results:
    if result.get('kind') == 'steps' and result['machine']['platform'] != 'cpu':
      for r in result['records']:
        if r['framework'] == 'flax' and r.get('images_per_s'):
          rates[(r['step'], r['resolution'])] = (r['images_per_s'],
                                                 result['machine']['device_kind'], name)
  return rates


def render_input(name: str, result: dict, rates: dict) -> str:
  """Per-core input throughput, the cores one GPU needs, the downscaled copies."""
  machine = result['machine']
  mix = result.get('mix')
  mix_text = ('an ImageNet-like mix of sizes: ' + ', '.join(
      f'{f * 100:.0f}% {w}x{h}' for f, w, h in mix) if mix else 'the given images')
  rows, core_rows = [], []
  for transform, r in result['results'].items():
    if ' copy ' in transform or 'RandAugment' in transform:
      continue
    rows.append([transform, number(r['fast_img_per_cpu_s'], 0), number(r['fast_img_per_s'], 0),
                 number(r['baseline_img_per_cpu_s'], 0), number(r['cpu_ratio']),
                 number(r['ratio'])])
    rate = rates.get(FEEDS.get(transform))
    if rate:
      core_rows.append([transform, f'{FEEDS[transform][0]}_step@{FEEDS[transform][1]}',
                        number(rate[0], 0), number(r['fast_img_per_cpu_s'], 0),
                        number(rate[0] / r['fast_img_per_cpu_s'], 1)])
    else:
      core_rows.append([transform, f'{FEEDS[transform][0]}_step@{FEEDS[transform][1]}',
                        'not measured', number(r['fast_img_per_cpu_s'], 0), 'n/a'])
  copy_rows = [[t.split(' copy ')[1].replace('s', 'shorter side ', 1) + ' px',
                number(result['copies']['mean_jpeg_kib'].get(t.split(' copy s')[1]), 1),
                number(r['baseline_img_per_cpu_s'], 0), number(r['fast_img_per_cpu_s'], 0),
                number(r['cpu_ratio']), number(r['ratio'])]
               for t, r in result['results'].items() if ' copy ' in t]
  augment_rows = [[t, number(r['baseline_img_per_cpu_s'], 0), number(r['fast_img_per_cpu_s'], 0),
                   number(r['cpu_ratio']), number(r['ratio'])]
                  for t, r in result['results'].items() if 'RandAugment' in t]
  decode = result.get('decode_img_per_cpu_s', {})
  full = decode.get('1/1')
  devices = sorted({v[1] for v in rates.values()})
  parts = [
      f'## {name}: input pipeline throughput per CPU core',
      f"Machine: CPU {machine['cpu_model']}, {machine['cpu_affinity']} cores, TensorFlow "
      f"{machine['tensorflow']}; {machine['date']}, load average "
      f"{result['load_average_before_after'][0]} -> {result['load_average_before_after'][1]} "
      '(other jobs shared the cores: images per CPU second is the figure that does not '
      'depend on them).',
      f"{result['images']} photo-like JPEGs (quality 90, mean {result['mean_jpeg_kib']} KiB, "
      f"median {result['median_size'][0]}x{result['median_size'][1]}, mean "
      f"{result['mean_megapixels']} Mpixel) in {mix_text}; encoded bytes in memory; tf.data "
      f"parallel map, batch {result['batch_size']}; median of {result['rounds']} rounds of "
      f"{result['seconds_per_run']} s, the fast path and the full-decode baseline alternating.",
      common.format_table(
          ['transform', 'fast path img/CPU-s', 'fast path img/s (wall)',
           'full decode img/CPU-s', 'fast / full (CPU)', 'fast / full (wall)'], rows),
      '### CPU cores needed to feed one GPU',
      'Cores = the GPU step rate (images/s) / the fast path\'s images per CPU second, '
      'assuming per-core throughput scales with cores (tf.data\'s parallel map does, short of '
      'memory bandwidth).'
      + (f" GPU rates: {', '.join(devices)} from "
         f"{', '.join(sorted({v[2] for v in rates.values()}))}." if rates else
         ' No GPU step rates found (benchmarks/gpu.sh writes them).'),
      common.format_table(
          ['transform', 'feeds', 'GPU img/s', 'img/CPU-s', 'cores needed'], core_rows)]
  if copy_rows:
    parts += ['### train@128 on downscaled copies',
              'The same images through fixres_jax.data.prepare.downscale_image (shorter side '
              f"capped, JPEG quality {result['copies']['quality']}), the fast path on both, "
              'in the same rounds.',
              common.format_table(
                  ['copy', 'mean JPEG KiB', 'originals img/CPU-s', 'copy img/CPU-s',
                   'copy / originals (CPU)', 'copy / originals (wall)'], copy_rows)]
  if augment_rows:
    parts += ['### RandAugment in the train transform',
              'The train transform with `data.randaugment` against the same transform without '
              'it (the fast path both times), in the same rounds: the ratio is what '
              'RandAugment costs per core.',
              common.format_table(
                  ['transform', 'without img/CPU-s', 'with img/CPU-s',
                   'with / without (CPU)', 'with / without (wall)'], augment_rows)]
  if full:
    parts += ['### Where a decode\'s time goes',
              'Whole-image decode at each DCT scale (libjpeg), images per CPU second: '
              + ', '.join(f'{k}: {number(v, 0)} ({number(v / full)}x)'
                          for k, v in decode.items())
              + '. The 1/8 decode skips nearly all of the inverse DCT, upsampling and colour '
              'conversion but none of the entropy (Huffman) decoding, so it bounds what any '
              'decode-side trick can gain over a full decode of the same file; only fewer '
              'coded coefficients (a smaller or lower-quality file: a downscaled copy) or '
              'another decoder (nvJPEG on the GPU) go below it.']
  shares = result.get('train_crops_by_dct_scale')
  if shares:
    parts.append('Share of RandomResizedCrops (this mix) that the fast path decodes at each '
                 'DCT scale (a crop needs both sides >= r x K for scale 1/r): '
                 + '; '.join(f"{k}: " + ', '.join(f'{r} {v * 100:.0f}%' for r, v in s.items())
                             for k, s in shares.items()) + '.')
  return '\n\n'.join(parts)


def render_loop(name: str, result: dict) -> str:
  ms, config = result['ms_per_step'], result['config']
  rounds = result['rounds_ms_per_step']
  return '\n\n'.join([
      f'## {name}: the training loop is not the bottleneck',
      f"The step loop (stage.run_steps) with a tiny ResNet ({config['model']}) at {config['image_size']} px, "
      f"batch {config['batch']}, {result['devices']} CPU device(s), {result['cpu_count']} "
      f"cores; {result['date']}, load average {result['load_average_before_after'][0]} -> "
      f"{result['load_average_before_after'][1]}; the fastest (the least disturbed by other jobs) "
      f"and the median of {config['rounds']} rounds of {config['steps']} steps (python -m "
      'benchmarks.loop_overhead).',
      common.format_table(
          ['fed by', 'ms per step, fastest round', 'median'],
          [[what, number(ms[key]), number(result['median_ms_per_step'][key])]
           for what, key in (
               ('one batch already on the device', 'device'),
               ('NumPy batches in memory, through prefetch_to_devices', 'host'),
               (f"the real pipeline ({config['dataset']} JPEGs), through "
                'prefetch_to_devices', 'pipeline'),
               ('the real pipeline alone, no model (ms per batch)', 'pipeline alone'))]),
      f"Host-to-device transfer and prefetching: {signed_ms(result['transfer_and_prefetch_ms'])}"
      ' per step over the batch already on the device (fastest rounds). Fed by the real '
      f"pipeline, a step takes {signed_ms(result['pipeline_over_bound_ms'])} than the slower "
      'of the step alone and the pipeline alone. On this CPU the step and the pipeline share '
      'the same cores (a GPU host does not). The step fed by the device batch ranged '
      f"{number(min(rounds['device']))}-{number(max(rounds['device']))} ms over the rounds: "
      'differences below that spread are not resolved by this run.'])


def signed_ms(value: float) -> str:
  return f"{number(abs(value))} ms {'more' if value >= 0 else 'less'}"


def render_service(name: str, result: dict) -> str:
  config = result['config']
  return '\n\n'.join([
      f'## {name}: training batches through the tf.data service',
      f"{config['transform']} on {config['dataset']}, batch {config['batch']}, "
      f"{config['seconds']} s per run; a dispatcher and its workers on 127.0.0.1 in another "
      f"process, on the same {result['cpu_count']} cores as the trainer; {result['date']}, load "
      f"average {result['load_average_before_after'][0]} -> "
      f"{result['load_average_before_after'][1]} (python -m benchmarks.service_throughput). "
      'The batches are the same as the local ones (tests/test_service.py); on one machine the '
      'workers compete with each other for the same cores, so this shows the overhead, not '
      'the speed-up of workers on other hosts.',
      common.format_table(
          ['workers', 'service img/s', 'local img/s (same round)', 'service / local'],
          [[r['workers'], number(r['service_img_per_s'], 0), number(r['local_img_per_s'], 0),
            number(r['ratio'])] for r in result['runs']])])


def render_calibration(name: str, result: dict) -> str:
  config, machine, records = result['config'], result['machine'], result['records']
  grid, one = records['grid'], records['one_temperature']
  ratio = result['grid_over_one_temperature']
  return '\n\n'.join([
      f'## {name}: what the calibrated loss costs an evaluation',
      f"evaluate.eval_step of {config['model']} ({config['num_classes']} classes, "
      f"{config['dtype']}) at {config['resolution']} px, batch {config['batch']}, as it is (the NLL "
      f"at each of {config['temperatures']} temperatures) against the same step compiled with "
      f"one temperature; {config['iters']} alternating rounds on {machine['cpu_model']}, "
      f"{machine.get('cpu_affinity') or machine['cpu_count']} cores, {machine['date']}, load "
      f"average {number(machine['load_average_1min'])} (python -m benchmarks.calibration_cost).",
      common.format_table(
          ['step', 'XLA FLOPs', 'median s', 'fastest s'],
          [[what, f"{r['flops']:.4g}", number(r['step_s'], 3), number(r['fastest_s'], 3)]
           for what, r in (('with the temperature grid', grid), ('one temperature', one))]),
      f"The grid adds {number(100 * (grid['flops'] / one['flops'] - 1), 4)} % of the step's "
      f"FLOPs; time ratio grid / one temperature: {number(ratio['measured'])} (median of the "
      f"per-round ratios), {number(ratio['fastest'])} (fastest rounds), "
      f"{number(ratio['cpu_time'])} (CPU time)."])


def render(results: list) -> str:
  sections = ['# Performance',
              'Generated by `python -m benchmarks.report` from '
              + ', '.join(f'docs/benchmarks/{name}' for name, _ in results)
              + '; do not edit by hand. Commands: `python -m benchmarks.steps --torch '
              '--out=docs/benchmarks/cpu.json` (CPU), `bash benchmarks/gpu.sh OUT_DIR` (GPU), '
              '`python -m benchmarks.torch_cpu` (the CPU study), `python -m benchmarks.input_pipeline '
              '--out=docs/benchmarks/input_cpu.json`, `python -m benchmarks.loop_overhead '
              '--out=docs/benchmarks/loop_cpu.json`, `python -m benchmarks.service_throughput '
              '--out=docs/benchmarks/service_cpu.json`, `python -m benchmarks.calibration_cost '
              '--batch=32 --iters=10 --out=docs/benchmarks/calibration_cost_cpu.json`.']
  for name, result in results:
    if result.get('kind') == 'steps':
      sections.append(render_steps(name, result))
    elif result.get('kind') == 'cpu_gap':
      sections.append(render_gap(name, result))
    elif result.get('kind') == 'input_pipeline':
      sections.append(render_input(name, result, gpu_rates(results)))
    elif result.get('kind') == 'loop_overhead':
      sections.append(render_loop(name, result))
    elif result.get('kind') == 'service':
      sections.append(render_service(name, result))
    elif result.get('kind') == 'calibration_cost':
      sections.append(render_calibration(name, result))
  return '\n\n'.join(sections) + '\n'


def summarize_steps(result: dict) -> str:
  """One README bullet for a steps JSON."""
  machine, config, derived = result['machine'], result['config'], result['derived']
  where = (f"CPU ({machine['cpu_model']}, {machine.get('cpu_affinity') or machine['cpu_count']} "
           'cores)' if machine['platform'] == 'cpu' else machine['device_kind'])
  facts = []
  for d in derived['train_cost_ratio'][-1:]:
    facts.append(f"train_step at {d['resolution']} px costs {number(d['measured'])}x the step at "
                 f"{d['base']} px (theory {number(d['theory'])})")
  finetune = [d['measured'] for d in derived['finetune_over_eval'] if d['measured']]
  if finetune:
    span = dict.fromkeys([number(min(finetune)), number(max(finetune))])
    facts.append(f"finetune_step / eval_step {'-'.join(span)} "
                 f'(target <= {derived["finetune_over_eval"][0]["target"]})')
  speed = [f"{r['step']}@{r['resolution']} {number(r['images_per_s'], 0)} img/s"
           + (f" (MFU {number(r['mfu'] * 100, 1)}%)" if r.get('mfu') else '')
           for r in result['records'] if r['framework'] == 'flax' and r.get('images_per_s')]
  if machine['platform'] != 'cpu':
    facts.append(', '.join(speed))
  torch = [d for d in derived['flax_over_torch'] if d['step'] == 'train' and d.get('fastest')]
  if torch:
    best = {}
    for d in torch:
      # PyTorch's faster memory format is the one Flax compares worst against.
      best[d['resolution']] = max(best.get(d['resolution'], d['fastest']), d['fastest'])
    facts.append('Flax train step / PyTorch (fastest rounds, PyTorch in its faster memory '
                 'format) '
                 + ', '.join(f'{number(r)} at {k} px' for k, r in sorted(best.items())))
  return (f"- {where}, jax {machine['jax']}, {config['model']} {config['dtype']} batch "
          f"{config['batch']}: " + '; '.join(facts) + '.')


def rank_variants(variants: list):
  """The largest train@K and the one-core variants sorted by Flax / PyTorch CPU time there."""
  ranked = [v for v in variants if 'summary' in v and v.get('prefix')]
  ratios = [v['summary'].get('flax_over_torch_cpu_time', {}) for v in ranked]
  keys = {k for r in ratios for k in r if r[k]}
  if not keys:
    return None, []
  key = max(keys, key=lambda k: (k.startswith('train'), int(k.split('@')[1])))
  return key, sorted((r[key], v['name']) for r, v in zip(ratios, ranked) if r.get(key))


def summarize_gap(result: dict) -> str:
  """One README bullet for the CPU study: the default ratio and the setting that lowers it."""
  key, scored = rank_variants(result['variants'])
  default = dict((name, r) for r, name in scored).get('default')
  text = (f"- Why (docs/PERFORMANCE.md, {result['config']['model']} on this CPU, one thread "
          f'each, CPU time): Flax / PyTorch for {key} is {number(default)} with the defaults; '
          f'the lowest is {number(scored[0][0])} ({scored[0][1]})' if key else '- Why: no '
          'one-core variant finished')
  if result.get('profile'):
    ops = result['profile']['flax']['ops_ms']
    total = sum(ops.values())
    largest = sorted(ops.items(), key=lambda kv: -kv[1])[:2]
    text += ('; in XLA:CPU the largest parts of a train step are '
             + ' and '.join(f'{k} ({100 * v / total:.0f}%)' for k, v in largest))
  return text + '.'


def summarize_input(result: dict, rates: dict) -> str:
  """One README bullet: per-core rates, cores per GPU, the copies' gain."""
  r = result['results']
  facts = [f"{t} {number(v['fast_img_per_cpu_s'], 0)} img/CPU-s (fast/full decode "
           f"{number(v['cpu_ratio'])})" for t, v in r.items()
           if ' copy ' not in t and 'RandAugment' not in t]
  cores = [f"{t}: {number(rates[FEEDS[t]][0] / r[t]['fast_img_per_cpu_s'], 1)}"
           for t in r if t in FEEDS and FEEDS[t] in rates]
  copies = [f"short side {t.split(' copy s')[1]}: {number(v['cpu_ratio'])}x"
            for t, v in r.items() if ' copy ' in t]
  text = (f"- Input pipeline ({result['machine']['cpu_model']}, "
          f"{result['machine']['cpu_affinity']} cores shared with other jobs, ImageNet-like JPEG sizes, "
          f"median {result['median_size'][0]}x{result['median_size'][1]}): " + ', '.join(facts))
  if cores:
    text += '; cores to feed one ' + sorted({v[1] for v in rates.values()})[0] + ': ' + ', '.join(cores)
  if copies:
    text += '; train@128 on a downscaled copy, per CPU second over the originals: ' + ', '.join(copies)
  augments = [f"{t.split(' + ')[1]} at {t.split(' + ')[0]}: {number(v['cpu_ratio'])}x"
              for t, v in r.items() if 'RandAugment' in t]
  if augments:
    text += '; with ' + ', '.join(augments) + ' the images per CPU second of the same transform'
  return text + '.'


README_MARKERS = common.readme_markers('performance', 'benchmarks.report')


def readme_block(results: list) -> str:
  """README's Performance block: one bullet per steps, CPU-study and input-pipeline JSON."""
  lines = ['Measured by `benchmarks/`, generated by `python -m benchmarks.report`; tables and '
           'machines in [docs/PERFORMANCE.md](docs/PERFORMANCE.md).', '']
  lines += [summarize_steps(r) for _, r in results if r.get('kind') == 'steps']
  lines += [summarize_gap(r) for _, r in results if r.get('kind') == 'cpu_gap']
  lines += [summarize_input(r, gpu_rates(results)) for _, r in results
            if r.get('kind') == 'input_pipeline']
  return '\n'.join(lines)


def main(argv):
  del argv
  results = load_results(FLAGS.inputs)
  if not results:
    raise app.UsageError(f'No JSON matches --inputs={FLAGS.inputs}: run benchmarks/steps.py '
                         'first (see its COMMAND).')
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    f.write(render(results))
  block = readme_block(results)
  if FLAGS.readme:
    common.write_readme_block(FLAGS.readme, README_MARKERS, block)
  print(block)


if __name__ == '__main__':
  app.run(main)
