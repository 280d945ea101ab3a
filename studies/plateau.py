"""The demo network's first steps, one change at a time: when does it leave chance level?

  python -m studies.plateau --data_dir=/tmp/tfds_demo --root=/tmp/plateau \
      --variants=baseline,zero_init --seeds=0,1,2 --steps=400
  python -m studies.plateau --phase=report --root=/tmp/plateau --out=docs

Trains configs/demo.py's network through the real input pipeline for --steps steps with each
variant's overrides, recording every step's loss and, every --probe_every steps, each top-level
module's gradient norm and the spread of the logits. A run is written to ROOT/VARIANT/seed_N.json
as soon as it ends, and a re-run skips it. The report says, per variant, the step at which the
smoothed loss first falls below 0.9 ln(num_classes) ("left chance") and draws the curves.
"""

import functools
import json
import math
import time
from typing import Dict

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from studies import common

FLAGS = flags.FLAGS

# Every run starts from the demo's training as it was when this study began (at 64 px, output
# stride 32); configs/demo.py has since taken the last rows' changes (base_lr 0.4, a zero
# classifier), trains at 48 px on fixres_synthetic 4.0.0's smaller images ('demo_v4') and
# runs its last stage at stride 1 ('demo_v5').
START = {'train.base_lr': 0.2, 'model.zero_init_head': False, 'train.image_size': 64,
         'model.output_stride': 32}

# fixres_synthetic's ranges at each version (render.Style fields), and the other datasets
# tried; each is written as a folder dataset of the same scenes (write_style_dataset).
V1 = {'texture_contrast': (12.0, 72.0), 'object_size': (0.2, 0.8), 'cycles': (4.0, 8.0),
      'short_side': (200, 320)}
V2 = {**V1, 'texture_contrast': (24.0, 144.0)}
V3 = {**V2, 'object_size': (0.4, 0.9), 'cycles': (8.0, 16.0)}
V4 = {**V3, 'short_side': (128, 192)}
STYLES: Dict[str, dict] = {
    'v1': V1,
    'contrast_x2': V2,
    'contrast_x3': {**V1, 'texture_contrast': (36.0, 180.0)},
    'large_objects': {**V1, 'object_size': (0.4, 0.9)},
    'contrast_x2_large_objects': {**V2, 'object_size': (0.4, 0.9)},
    'objects_cycles_6_12': {**V2, 'object_size': (0.4, 0.9), 'cycles': (6.0, 12.0)},
    'v3': V3,
    'v4': V4,
}

# Variant -> (dataset style, config overrides on top of START): one change at a time.
DEMO_NOW = {'train.base_lr': 0.4, 'model.zero_init_head': True}
VARIANTS: Dict[str, tuple] = {
    'baseline': ('v1', {}),
    'zero_init': ('v1', {'model.zero_init_residual': True}),
    'zero_head': ('v1', {'model.zero_init_head': True}),
    'lr_half': ('v1', {'train.base_lr': 0.1}),
    'lr_double': ('v1', {'train.base_lr': 0.4}),
    'no_warmup': ('v1', {'train.warmup_epochs': 0}),
    'warmup_3': ('v1', {'train.warmup_epochs': 3}),
    'no_weight_decay': ('v1', {'train.weight_decay': 0.0}),
    'batch_32': ('v1', {'train.batch_size': 32}),
    'batch_128': ('v1', {'train.batch_size': 128}),
    'exact_decode': ('v1', {'data.train_decode': 'exact'}),
    'inception_crop': ('v1', {'data.crop': 'inception'}),
    **{name: (name, {}) for name in STYLES if name not in ('v1', 'v3', 'v4', 'objects_cycles_6_12')},
    'contrast_x2_zero_head': ('contrast_x2', {'model.zero_init_head': True}),
    'contrast_x2_short_warmup': ('contrast_x2', {'train.warmup_epochs': 0.25}),
    'contrast_x2_batch_32': ('contrast_x2', {'train.batch_size': 32}),
    'contrast_x2_lr_double_zero_head': ('contrast_x2', DEMO_NOW),
    'objects_cycles_6_12': ('objects_cycles_6_12', DEMO_NOW),
    'v3_start_training': ('v3', {}),
    'demo_now': ('v3', DEMO_NOW),  # fixres_synthetic 3.0.0 and configs/demo.py at 64 px
    'demo_v4': ('v4', {**DEMO_NOW, 'train.image_size': 48}),
    'demo_v5': ('v4', {**DEMO_NOW, 'train.image_size': 48, 'model.output_stride': 16}),  # as it is
}


COMMAND = ('python -m studies.plateau --data_dir=DATA --root=ROOT --steps=400 '
           '[--variants=...] [--seeds=...]; then --phase=report')
REPORT_SEEDS = (0, 1, 2)
EXPLANATION = """\
Every row trains configs/demo.py's network on its real input pipeline and schedule for the
first steps only, starting from the demo's training as this study began (base_lr 0.2, a
random classifier) with one change; each dataset is a folder of the same scenes rendered with
the stated ranges (the unchanged ones are version 1.0.0's: textures of 12-72 grey levels on
objects 0.2-0.8 of the short side, 4-8 cycles). An epoch is 140 steps at the batch of 64.

What the curves show. At initialisation the pooled features are dominated by the
class-independent clutter, and the quickest way down from the initial loss is to silence them:
the classifier's weight norm falls while the loss stays at chance (ln 10). On the seeds that
stay there, the gradient reaching conv1 then decays by orders of magnitude: the network has
collapsed to a near-constant output. The network leaves chance when conv1 has grown texture
detectors, and conv1's gradient norm is the first to rise when it does. No change of the
training removes the plateau: not the initialisation (zero-init of the last BatchNorm of each
block, a zero classifier: the latter shortens it, not below an epoch), half or twice the learning
rate, no or a longer warm-up, no weight decay, exact decoding or Inception crops; halving the
batch on the doubled contrast about doubles its length in steps: it is counted in images seen, not
in steps. What shortens it is how much texture signal a crop carries: doubling the texture
contrast (fixres_synthetic 2.0.0) does, tripling it or larger objects on the doubled contrast
shorten it further. fixres_synthetic 3.0.0 keeps 2.0.0's contrast and draws objects 0.4-0.9 of
the short side with 8-16 cycles: the textures cover more of each crop without becoming coarser
(they are a little finer; the resolution effect the demo exists to show depends on their
fineness), and every seed leaves chance within 100 steps. The demo's training has also changed
since (twice the learning rate, a zero classifier): on 2.0.0 that shortened the plateau a
little, on 3.0.0 it makes no clear difference (demo_now against v3_start_training), and it was
kept. Objects 0.4-0.9 with 6-12 cycles also left chance early, but in two full demo runs made
the task easy enough that FixRes fine-tuning had little left to fix. The demo then moved to
48 px on fixres_synthetic 4.0.0, the same scenes on smaller images (demo_v4), and ran its last
stage at stride 1 (demo_v5, the demo as it is): its seeds leave chance a little later than at
64 px, within the first epoch."""


def define_flags() -> None:
  flags.DEFINE_string('root', '/tmp/plateau', 'One JSON per (variant, seed) under here.')
  flags.DEFINE_string('data_dir', '', 'tfds data dir for fixres_synthetic.')
  flags.DEFINE_string('out', 'docs', 'Where the report goes.')
  flags.DEFINE_list('variants', list(VARIANTS), 'Variants to run.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per variant.')
  flags.DEFINE_integer('steps', 400, 'Training steps per run (the schedule is the full run).')
  flags.DEFINE_integer('probe_every', 10, 'Gradient norms every this many steps.')
  flags.DEFINE_list('overrides', [], 'KEY=VALUE config overrides for every run.')
  flags.DEFINE_enum('phase', 'run', ['run', 'report'], 'Run the variants, or report.')


def module_norms(tree) -> dict:
  """The L2 norm of each top-level module's leaves."""
  return {name: jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(sub)))
          for name, sub in tree.items()}


def probe(state, batch):
  """Per-module gradient norms and the logits' spread on one batch (no update)."""
  from fixres_jax import train
  def loss_fn(params):
    logits, _ = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                               batch['image'], train=True, mutable=['batch_stats'])
    return train.compute_loss(logits, batch['label'], None, train.Objective()), logits
  (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return {'grad_norm': module_norms(grads), 'param_norm': module_norms(state.params),
          'logit_std': jnp.std(logits, axis=0).mean(),
          'pred_entropy': -jnp.mean(jnp.sum(jax.nn.softmax(logits) *
                                            jax.nn.log_softmax(logits), -1))}


def run_one(config, steps: int, probe_every: int) -> dict:
  """Trains `steps` steps of config's train stage; returns the curves."""
  from fixres_jax import parallel
  from fixres_jax import stage as stage_lib
  from fixres_jax import train
  from fixres_jax.data import pipeline
  dataset = pipeline.load_dataset(config)
  mesh = parallel.create_mesh()
  cfg = config.train
  model = train.create_model(config, dataset.num_classes)
  steps_per_epoch = pipeline.stage_steps_per_epoch(config, dataset, 'train')
  learning_rate = train.create_schedule_per_256(cfg, steps_per_epoch, cfg.batch_size)
  variables = train.init_variables(model, cfg.image_size, config.seed)
  tx = train.create_optimizer(cfg, learning_rate, variables['params'])
  state = parallel.replicate(stage_lib.create_train_state(model, variables, tx), mesh)
  step_fn = jax.jit(functools.partial(train.train_step, objective=train.objective(config)))
  probe_fn = jax.jit(probe)
  batches = parallel.prefetch_to_devices(
      pipeline.stage_batches(config, dataset, 'train', 0), mesh)
  losses, top1s, probes = [], [], []
  start = time.perf_counter()
  for step in range(1, steps + 1):
    batch = next(batches)
    if step % probe_every == 1 or probe_every == 1:
      probes.append({'step': step, **jax.tree.map(float, jax.device_get(probe_fn(state, batch)))})
    state, metrics = step_fn(state, batch)
    metrics = jax.device_get(metrics)
    losses.append(float(metrics['loss']))
    top1s.append(float(metrics['top1']))
  return {'loss': losses, 'top1': top1s, 'probes': probes, 'steps_per_epoch': steps_per_epoch,
          'total_steps': int(cfg.num_epochs * steps_per_epoch),
          'lr': [float(learning_rate(s)) for s in range(steps)],
          'seconds': time.perf_counter() - start, 'num_classes': dataset.num_classes}


def render_file(args) -> None:
  """Renders one image of a style variant into its folder dataset."""
  from fixres_jax.data.synthetic import examples  # pylint: disable=g-import-not-at-top
  from fixres_jax.data.synthetic import render  # pylint: disable=g-import-not-at-top
  folder, style, split, index = args
  rng = np.random.default_rng([0, examples.SPLIT_IDS[split], index])
  label = index % render.NUM_CLASSES
  jpeg, _ = render.render_jpeg(rng, label, render.Style(**style))
  path = epath.Path(folder) / split / render.CLASS_NAMES[label] / f'{index:05d}.jpg'
  path.write_bytes(jpeg)


def write_style_dataset(folder: epath.Path, style: dict, num_train: int = 10_000,
                        num_validation: int = 100) -> None:
  """fixres_synthetic/default's first scenes in `style`, as FOLDER/{train,validation}/CLASS."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from fixres_jax.data.synthetic import render  # pylint: disable=g-import-not-at-top
  if (folder / 'done').exists():
    return
  for split in ('train', 'validation'):
    for name in render.CLASS_NAMES:
      (folder / split / name).mkdir(parents=True, exist_ok=True)
  jobs = [(str(folder), style, 'train', i) for i in range(num_train)]
  jobs += [(str(folder), style, 'validation', i) for i in range(num_validation)]
  with concurrent.futures.ProcessPoolExecutor() as pool:
    list(pool.map(render_file, jobs, chunksize=64))
  (folder / 'done').write_text('')


def run_variants(root: epath.Path, variants, seeds, steps: int, probe_every: int,
                 data_dir: str, overrides) -> None:
  for name in variants:
    for seed in seeds:
      path = root / name / f'seed_{seed}.json'
      if path.exists():
        continue
      style, changes = VARIANTS[name]
      folder = root / 'datasets' / style
      write_style_dataset(folder, STYLES[style])
      data = {'data.name': 'folder', 'data.folder': str(folder)}
      config = common.demo_config(data_dir, seed, {**START, **changes, **data, **overrides})
      logging.info('%s seed %d: %s', name, seed, VARIANTS[name])
      record = run_one(config, steps, probe_every)
      record.update(variant=name, seed=seed, overrides=changes, style=STYLES[style])
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(record))
      logging.info('%s seed %d: left chance at step %s (%.0f s).', name, seed,
                   left_chance_step(record), record['seconds'])


def smooth(values, window: int = 20) -> np.ndarray:
  """Trailing mean over `window` steps."""
  values = np.asarray(values, np.float64)
  cumsum = np.concatenate([[0.0], np.cumsum(values)])
  ends = np.arange(1, len(values) + 1)
  starts = np.maximum(ends - window, 0)
  return (cumsum[ends] - cumsum[starts]) / (ends - starts)


def left_chance_step(record: dict, fraction: float = 0.9):
  """The first step whose trailing-mean loss is below fraction * ln(num_classes)."""
  below = np.nonzero(smooth(record['loss']) < fraction * math.log(record['num_classes']))[0]
  return int(below[0]) + 1 if below.size else None


def collect(root: epath.Path, variants, seeds) -> Dict[str, list]:
  """{variant: [records of its finished seeds]}."""
  runs = {}
  for name in variants:
    records = [common.read_json(root / name / f'seed_{seed}.json') for seed in seeds]
    runs[name] = [r for r in records if r]
  return runs


def summary_rows(runs: Dict[str, list]) -> list:
  """One table row per variant: the step each seed left chance level ('never' within the run)."""
  rows = []
  for name, records in runs.items():
    if not records:
      continue
    left = [left_chance_step(r) for r in records]
    shown = ', '.join(str(s) if s else f'>{len(r["loss"])}' for s, r in zip(left, records))
    rows.append([name, describe_change(name), shown, len(records[0]['loss'])])
  return rows


def describe_change(name: str) -> str:
  """The variant's dataset (its ranges where they differ from version 1.0.0's) and its
  config changes against the demo as this study began (START)."""
  style, changes = VARIANTS[name]
  parts = [f'{k}={v}' for k, v in changes.items()]
  parts += [f'dataset {k}={v}' for k, v in STYLES[style].items() if V1[k] != v]
  return ', '.join(parts) or 'none'


def probe_series(record: dict, key: str, module: str) -> list:
  return [p[key][module] for p in record['probes']]


def report(root: epath.Path, seeds, out: epath.Path, variants=None) -> str:
  """The markdown section on the chance plateau, with its two figures written to OUT."""
  runs = collect(root, variants or list(VARIANTS), seeds)
  plot_losses(runs, out / 'plateau_loss.png')
  lines = [common.format_table(
      ['variant', 'change', 'left chance at step (per seed)', 'steps run'],
      summary_rows(runs)), '',
      '![training loss over the first steps](plateau_loss.png)', '']
  if runs.get('baseline'):
    plot_gradients(runs['baseline'], out / 'plateau_gradients.png')
    rows = []
    for record in runs['baseline']:
      fc, grad = probe_series(record, 'param_norm', 'fc'), probe_series(record, 'grad_norm',
                                                                        'conv1')
      rows.append([record['seed'], left_chance_step(record) or 'never',
                   f'{fc[0]:.2f} -> {min(fc):.2f}', f'{grad[0]:.2f} -> {min(grad):.3f}'])
    lines += [common.format_table(
        ['seed', 'left chance at step', "classifier's weight norm (start -> lowest)",
         "conv1's gradient norm (start -> lowest)"], rows), '',
        '![gradient norms of the baseline](plateau_gradients.png)', '']
  return '\n'.join(lines)


def plot_losses(runs: Dict[str, list], path: epath.Path) -> None:
  """Smoothed training loss against step, one panel per variant, one line per seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [n for n, r in runs.items() if r]
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), sharex=True,
                           sharey=True, squeeze=False)
  for ax, name in zip(axes.flat, names):
    for record in runs[name]:
      ax.plot(np.arange(1, len(record['loss']) + 1), smooth(record['loss']), lw=1,
              label=f'seed {record["seed"]}')
    chance = math.log(runs[name][0]['num_classes'])
    ax.axhline(chance, color='grey', ls=':', lw=1)
    ax.axhline(0.9 * chance, color='grey', ls='--', lw=0.8)
    ax.set_title(name, fontsize=9)
  for ax in axes.flat[len(names):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=7)
  fig.supxlabel('step')
  fig.supylabel('training loss (20-step mean)')
  fig.tight_layout()
  common.save_figure(fig, path)


def plot_gradients(records: list, path: epath.Path) -> None:
  """Each top-level module's gradient norm over the first steps (one seed per line style)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  modules = list(records[0]['probes'][0]['grad_norm'])
  colours = plt.cm.viridis(np.linspace(0, 0.9, len(modules)))
  for style, record in zip(('-', '--', ':'), records):
    steps = [p['step'] for p in record['probes']]
    for colour, module in zip(colours, modules):
      ax.plot(steps, [p['grad_norm'][module] for p in record['probes']], style, color=colour,
              lw=1, label=module if style == '-' else None)
  ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('gradient norm')
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  common.save_figure(fig, path)


def main(argv):
  del argv
  from fixres_jax import devices  # pylint: disable=g-import-not-at-top
  devices.provision_cpu_threads()  # before jax's backend exists: threads for N CPU devices
  root = epath.Path(FLAGS.root)
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.phase == 'run':
    run_variants(root, FLAGS.variants, seeds, FLAGS.steps, FLAGS.probe_every, FLAGS.data_dir,
                 common.parse_overrides(FLAGS.overrides))
    return
  print(report(root, seeds, epath.Path(FLAGS.out), FLAGS.variants))


if __name__ == '__main__':
  define_flags()
  app.run(main)
