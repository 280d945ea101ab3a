"""The FixRes recipe as a library call: train at K_train, fine-tune at K_test, sweep K_test.

  from fixres_jax import recipe
  models = recipe.run(config, workdir)  # what `python -m fixres_jax.main` runs

Re-running skips finished stages and resumes an interrupted one from its last checkpoint; a
config that saved work was not made with is refused (rerun.py). main.py adds the flags,
logging and exit codes around it.
"""

import functools

from absl import logging
from etils import epath
import jax

from fixres_jax import adapters
from fixres_jax import analysis
from fixres_jax import cached_finetune
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import parallel
from fixres_jax import preemption
from fixres_jax import rerun
from fixres_jax import stage as stage_lib
from fixres_jax import storage
from fixres_jax import train
from fixres_jax import transform_record
from fixres_jax import workdir as workdir_lib


def run(config, workdir: str) -> dict:
  """Runs config.stages in order; returns {'trained': variables, 'finetuned': ...}."""
  # Imported here, not at the top: TensorFlow (which it imports) reads its log level when it
  # loads, and main() sets that first.
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import sources  # pylint: disable=g-import-not-at-top
  config.stages = config_lib.parse_stages(config.stages)
  config_lib.validate(config, jax.device_count())
  sources.check_split_specs(config)
  storage.check_ready(workdir)
  workdir = epath.Path(workdir)
  workdir_lib.check_writable(workdir, needed_bytes=0)
  with workdir_lib.WorkdirLock(workdir):
    rerun.check(config, workdir)  # refuses a change that saved work was not made with
    dataset = pipeline.load_dataset(config)
    pipeline.log_dataset(dataset, (config.data.train_split, config.data.eval_split))
    not_held_out = pipeline.trained_on_selection(dataset, config)
    if not_held_out:
      logging.warning('%s', not_held_out)
    model = train.create_model(config, dataset.num_classes)
    workdir_lib.check_writable(workdir, workdir_lib.estimate_run_bytes(
        config, model, dataset.num_examples(config.data.train_split)))
    return run_stages(config, workdir, dataset, model)


def run_stages(config, workdir: epath.Path, dataset, model) -> dict:
  """Runs config.stages; a stop requested by a signal keeps any further one from starting
  (preemption.check_stop here, and before each evaluation pass of the sweep)."""
  mesh = parallel.create_mesh()
  models = {}
  passes = {}  # the 'auto' choice's passes on a training slice, which the sweep's fits reuse
  if 'train' in config.stages:
    preemption.check_stop('the train stage')
    models['trained'] = train.train_and_evaluate(config, workdir, train_data(config, dataset),
                                                 mesh)
    transform_record.write(workdir, transform_record.describe(
        config, 'train', config.train.image_size, 'config.train.image_size'))
  else:
    models['trained'] = load_trained(config, workdir, model)
  if 'finetune' in config.stages:
    preemption.check_stop('the finetune stage')
    # finetune.test_res='auto': K_test (and, with finetune.auto_crop_pcts, data.crop_pct)
    # chosen on a training-split slice, recorded in the workdir; the sweep keeps `config`.
    adapt = functools.partial(adapters.fit_candidate, config, workdir,
                              lambda c: finetune_data(c, dataset), mesh, models['trained'])
    resolved = analysis.resolve_test_res(config, workdir, dataset, mesh, models['trained'],
                                         model, passes, adapt)
    finetune_fn = cached_finetune.FINETUNE_MODES[resolved.finetune.mode]
    models['finetuned'] = finetune_fn(resolved, workdir, finetune_data(resolved, dataset), mesh,
                                      models['trained'])
    record = transform_record.describe(resolved, 'finetune',
                                       *analysis.finetuned_test_res(resolved, workdir))
    transform_record.write(workdir, record)
    if config.finetune.adapter_resolutions:  # at the stage's own transform (its record)
      adapters.build(config, workdir, lambda c: finetune_data(c, dataset), mesh,
                     models['trained'], models['finetuned'], record)
  elif checkpoint.has_steps(workdir / 'checkpoints' / 'finetune'):
    models['finetuned'] = checkpoint.load_variables(workdir / 'checkpoints' / 'finetune')
  if 'sweep' in config.stages:
    preemption.check_stop('the sweep')
    bank = (adapters.load_bank(workdir, models['finetuned'], config.sweep.resolutions)
            if 'finetuned' in models else {})  # each adapter at its own K_test
    result = analysis.sweep(config, dataset, mesh, models, model,
                            analysis.finetuned_test_res(config, workdir), workdir,
                            analysis.finetuned_crop_pct(config, workdir),
                            adapters=bank, passes=passes)
    analysis.write_sweep(workdir, result)
    print(analysis.format_table(result.records), flush=True)
    print(analysis.describe_outputs(config, workdir, result.records), flush=True)
  return models


def train_data(config, dataset) -> stage_lib.StageData:
  """What the train stage reads: training batches at K_train, validation at K_train."""
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return stage_lib.StageData(
      dataset.name, dataset.num_classes,
      pipeline.stage_steps_per_epoch(config, dataset, 'train'),
      lambda step: pipeline.stage_batches(config, dataset, 'train', step),
      eval_batches=lambda: pipeline.config_eval_batches(
          config, dataset, config.data.eval_split, config.train.image_size))


def finetune_data(config, dataset) -> stage_lib.StageData:
  """What the finetune stage reads: fine-tuning batches at K_test, and the cached mode's
  passes over the same images through the test transform."""
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg, split = config.finetune, config.data.train_split
  return stage_lib.StageData(
      dataset.name, dataset.num_classes,
      pipeline.stage_steps_per_epoch(config, dataset, 'finetune'),
      lambda step: pipeline.stage_batches(config, dataset, 'finetune', step),
      num_pass_batches=pipeline.num_eval_batches(dataset, split, cfg.batch_size),
      pass_batches=lambda start: pipeline.config_eval_batches(
          config, dataset, split, cfg.test_res, cfg.batch_size, start))


def load_trained(config, workdir: epath.Path, model) -> dict:
  """The train stage's result, or config.init_from (with a new head if init_head=False)."""
  trained = workdir / 'checkpoints' / 'train'
  if checkpoint.has_steps(trained):
    variables = checkpoint.load_variables(trained)
    train.check_variables(model, variables, str(trained))
    return variables
  if config.init_from:
    return train.load_initial_variables(config, model, config.train.image_size)
  raise errors.ConfigError(
      f"config.stages={tuple(config.stages)} has no 'train' stage and {trained} holds no "
      'checkpoint: add the train stage or set config.init_from to a checkpoint.')
