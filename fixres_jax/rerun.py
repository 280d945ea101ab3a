"""A run in a workdir that already holds work: its config against the one that made the work.

Every run writes its config to WORKDIR/config.json. A later run in the same workdir compares
its own config with that file, field by field, before any data is read:

  * a change to a field that a saved stage was computed with (the train or finetune stage
    has checkpoints) is refused, naming the field, both values and the fixes: keep the saved
    value, choose a new workdir, or set config.redo to the stage, which moves the saved work
    of that stage and of every later one to WORKDIR/replaced/N/ and runs them again;
  * other changes (logging, checkpoint cadence, where the data lives, the sweep, which every
    run that has it makes anew) are allowed.

Each change, allowed or redone, is appended to WORKDIR/config_history.jsonl. A field the
saved config lacks (written by an older version) is recorded, not compared.

finetune.test_res='auto' is compared by the K_test it chose (WORKDIR/auto_test_res.json):
once fine-tuning has saved work, that choice is kept (analysis.select_test_res), so 'auto'
and the number it chose are the same value.
"""

import datetime
import json
from typing import Dict, List, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils

from fixres_jax import checkpoint
from fixres_jax import errors

CONFIG_NAME = 'config.json'
HISTORY_NAME = 'config_history.jsonl'
REPLACED_DIR = 'replaced'
AUTO_RECORD = 'auto_test_res.json'
SWEEP_FILES = ('sweep.json', 'sweep.csv', 'stats.json', 'sweep_meta.json', 'sweep.png',
               'features.png', 'frontier.json', 'frontier.png')
# The stages whose saved work a run reuses, in order: each is computed from the one before.
REDO_STAGES = ('train', 'finetune')
# What each stage's saved work is, relative to the workdir.
STAGE_FILES = {'train': ('checkpoints/train',),
               'finetune': ('checkpoints/finetune', 'checkpoints/adapters', AUTO_RECORD)}
# Fields that change nothing a saved stage holds: how it is logged, checkpointed, located or
# evaluated. The sweep is computed anew by every run that has it, and records its settings.
HARMLESS_FIELDS = frozenset({
    'stages', 'redo', 'allow_cpu_with_gpu', 'deterministic', 'data.data_dir', 'data.cache',
    'data.service', 'data.eval_split', 'train.log_every_steps', 'train.profile_steps',
    'train.eval_every_epochs', 'finetune.log_every_steps', 'finetune.profile_steps',
    'finetune.cache_dir', 'finetune.cache_in_memory_mb',
    # They choose finetune.test_res='auto', which is compared by the K_test it chose.
    'finetune.auto_split', 'finetune.auto_resolutions', 'finetune.auto_metric',
    'finetune.auto_crop_pcts', 'finetune.auto_model'})
HARMLESS_FIELDS |= {'finetune.adapter_resolutions'}  # the bank adds the adapters it lacks
HARMLESS_SECTIONS = ('sweep', 'checkpoint')
# Fields of config.data that only the test transform reads: fine-tuning's, not training's.
# Any other data, model or train field (or one added later) belongs to the train stage.
FINETUNE_DATA_FIELDS = frozenset({'data.crop_pct', 'data.decode', 'data.test_resize',
                                  'data.test_interpolation', 'data.test_crop_mode',
                                  'data.test_resize_size', 'data.test_crop_margin'})


def field_stage(name: str) -> Optional[str]:
  """The first stage whose saved work depends on config field `name` ('section.field'), or
  None when no saved work does."""
  if name in HARMLESS_FIELDS or name.split('.')[0] in HARMLESS_SECTIONS:
    return None
  if name in FINETUNE_DATA_FIELDS or name.startswith('finetune.'):
    return 'finetune'
  return 'train'


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'section.field': value} of a config as JSON gives it (tuples as lists)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_values(config) -> dict:
  """The config's fields, flattened, in the form config.json holds them."""
  return flatten(json.loads(config.to_json_best_effort()))


def saved_stages(workdir: epath.Path) -> List[str]:
  """The stages of REDO_STAGES whose checkpoints hold a step."""
  return [stage for stage in REDO_STAGES
          if checkpoint.has_steps(workdir / 'checkpoints' / stage)]


def auto_choice(workdir: epath.Path) -> Optional[int]:
  """The K_test finetune.test_res='auto' chose in this workdir, if it chose one."""
  path = workdir / AUTO_RECORD
  return json.loads(path.read_text())['test_res'] if path.exists() else None


def shown(value, chosen: Optional[int]) -> str:
  """A value as the message names it; 'auto' with the K_test it chose."""
  if value == 'auto' and chosen is not None:
    return f"'auto' (which chose {chosen})"
  return repr(tuple(value) if isinstance(value, list) else value)


def find_changes(saved: dict, values: dict) -> Dict[str, Tuple]:
  """{field: (saved, new)} of the fields the saved config has, with another value."""
  return {name: (saved[name], value) for name, value in values.items()
          if name in saved and saved[name] != value}


def invalidated_stages(name: str, saved_work: List[str]) -> List[str]:
  """The saved stages a change to `name` invalidates: its stage and every later one."""
  stage = field_stage(name)
  if stage is None:
    return []
  later = REDO_STAGES[REDO_STAGES.index(stage):]
  return [s for s in saved_work if s in later]


def same_test_res(old, new, chosen: Optional[int]) -> bool:
  """Whether two finetune.test_res values mean the same K_test ('auto' as what it chose)."""
  resolve = lambda v: chosen if v == 'auto' and chosen is not None else v
  return resolve(old) == resolve(new)


def check(config, workdir) -> None:
  """Compares `config` with the workdir's config.json; refuses, records, or redoes.

  Writes config.json (and the history line, and moves what config.redo redoes) on process 0.

  Raises:
    errors.ConfigError: a change that saved work was not made with, and config.redo does not
      cover it; nothing in the workdir is changed then.
  """
  workdir = epath.Path(workdir)
  values = config_values(config)
  path = workdir / CONFIG_NAME
  saved_work = saved_stages(workdir)
  if not path.exists():
    if saved_work:
      logging.warning('%s has saved %s work but no %s: the config it was made with cannot be '
                      'checked.', workdir, '/'.join(saved_work), CONFIG_NAME)
    changes, redone = {}, []
  else:
    changes, redone = plan(flatten(json.loads(path.read_text())), values, workdir,
                           saved_work, config.redo)
  sync('fixres_jax: config compared with the workdir')
  if jax.process_index() == 0:
    replaced = set_aside(workdir, redone, changes) if redone else None
    if changes:
      record(workdir, changes, redone, replaced)
    path.write_text(config.to_json_best_effort(indent=2))
  sync('fixres_jax: config recorded')


def plan(saved: dict, values: dict, workdir: epath.Path, saved_work: List[str],
         redo: str) -> Tuple[dict, List[str]]:
  """The changes from the saved config, and the stages to redo for them.

  Raises:
    errors.ConfigError: a change invalidates saved work that `redo` does not redo.
  """
  changes = find_changes(saved, values)
  added = set(values) - set(saved)
  if added:
    logging.info('%s was written before the fields %s existed: they are not compared.',
                 workdir / CONFIG_NAME, sorted(added))
  chosen = auto_choice(workdir) if 'finetune' in saved_work else None
  if 'finetune.test_res' in changes and same_test_res(*changes['finetune.test_res'], chosen):
    del changes['finetune.test_res']  # 'auto' and the K_test it chose are one value
  redo_from = REDO_STAGES.index(redo) if redo else len(REDO_STAGES)
  covered = REDO_STAGES[redo_from:]
  invalid = {name: invalidated_stages(name, saved_work) for name in changes}
  refused = {name: stages for name, stages in invalid.items()
             if stages and not set(stages) <= set(covered)}
  if refused:
    raise errors.ConfigError(refusal(workdir, changes, refused, chosen))
  invalidated = {s for stages in invalid.values() for s in stages}
  first = min((REDO_STAGES.index(s) for s in invalidated), default=None)
  redone = [s for s in REDO_STAGES[first:] if s in saved_work] if first is not None else []
  if redo and not redone:
    logging.info('config.redo=%r: no saved work was made with other values; nothing is redone.',
                 redo)
  return changes, redone


def refusal(workdir: epath.Path, changes: dict, refused: dict, chosen: Optional[int]) -> str:
  """The error: each refused field with both values and the work it would mislabel, and the
  fixes."""
  lines = []
  for name, stages in refused.items():
    old, new = changes[name]
    what = ' and '.join(f'{s} ({workdir / "checkpoints" / s})' for s in stages)
    lines.append(f'config.{name}={shown(new, chosen)}, but the saved {what} was made with '
                 f'{shown(old, chosen)}')
  stage = REDO_STAGES[min(REDO_STAGES.index(s[0]) for s in refused.values())]
  fix = (f'Keep the saved value, choose a new --workdir, or add --config.redo={stage} to run '
         f'the {stage} stage{" and the later ones" if stage != REDO_STAGES[-1] else ""} again '
         f'(the saved work moves to {workdir / REPLACED_DIR}/N, kept).')
  if len(lines) == 1:
    return f'{lines[0]}. {fix}'
  return (f'--workdir={workdir} holds work made with another config:\n  ' + '\n  '.join(lines)
          + f'\n{fix}')


def set_aside(workdir: epath.Path, stages: List[str], changes: dict) -> epath.Path:
  """Moves the stages' saved work, the sweep's outputs and the old config.json to
  WORKDIR/replaced/N (the next free N); returns that directory."""
  root = workdir / REPLACED_DIR
  root.mkdir(parents=True, exist_ok=True)
  number = 1 + max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
  target = root / str(number)
  target.mkdir()
  reason = '\n'.join(f'config.{n}: {old!r} -> {new!r}' for n, (old, new) in changes.items())
  (target / 'reason.txt').write_text(f'Redone: {", ".join(stages)}, for\n{reason}\n')
  moved = [f for stage in stages for f in STAGE_FILES[stage]] + list(SWEEP_FILES)
  for relative in moved + [CONFIG_NAME]:
    if (workdir / relative).exists():
      (target / relative).parent.mkdir(parents=True, exist_ok=True)
      (workdir / relative).rename(target / relative)
  logging.warning('config.redo: the saved %s work, made with other values, moved to %s.',
                  ', '.join(stages), target)
  return target


def record(workdir: epath.Path, changes: dict, redone: List[str],
           replaced: Optional[epath.Path]) -> None:
  """Appends the changes to WORKDIR/config_history.jsonl (rewritten whole: object storage
  cannot append)."""
  path = workdir / HISTORY_NAME
  entry = {'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
           'changes': {name: {'old': old, 'new': new} for name, (old, new) in changes.items()},
           'redone': redone}
  if replaced is not None:
    entry['replaced'] = str(replaced)
  before = path.read_text() if path.exists() else ''
  path.write_text(before + json.dumps(entry) + '\n')
  for name, (old, new) in changes.items():
    logging.info('config.%s changed from %r to %r (recorded in %s).', name, old, new, path)


def sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
