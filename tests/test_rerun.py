"""A run in a workdir that holds work: refused, recorded or redone by the config it changes.

The fast tests stand in saved work by empty step directories (what checkpoint.has_steps
sees); the slow one re-runs the real main on a finished tiny workdir."""

import json

import pytest

from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import rerun


def make_workdir(tmp_path, config, stages=('train', 'finetune'), auto=None):
  """A workdir made with `config` whose `stages` have a saved step."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  rerun.check(config, workdir)  # the first run writes config.json
  for stage in stages:
    (workdir / 'checkpoints' / stage / '8').mkdir(parents=True)
  if auto is not None:
    (workdir / 'auto_test_res.json').write_text(json.dumps({'test_res': auto}))
  (workdir / 'sweep.json').write_text('[]')
  return workdir


def history(workdir) -> list:
  path = workdir / rerun.HISTORY_NAME
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def set_field(config, name: str, value) -> None:
  *sections, field = name.split('.')
  for section in sections:
    config = config[section]
  config[field] = value


def changed(name, value):
  config = config_lib.get_base_config()
  set_field(config, name, value)
  return config


@pytest.mark.parametrize('name, value, stage', [
    ('finetune.test_res', 320, 'finetune'),
    ('finetune.batch_size', 256, 'finetune'),
    ('finetune.num_epochs', 5, 'finetune'),
    ('data.crop_pct', 0.95, 'finetune'),
    ('model.num_filters', 16, 'train'),
    ('model.name', 'resnet18', 'train'),
    ('train.batch_size', 256, 'train'),
    ('train.num_epochs', 90, 'train'),
    ('train.schedule', 'cosine', 'train'),
    ('train.image_size', 128, 'train'),
    ('data.name', 'fixres_synthetic/default', 'train'),
    ('data.train_split', 'train[:90%]', 'train'),
    ('seed', 1, 'train'),
])
def test_a_change_saved_work_was_not_made_with_is_refused(tmp_path, name, value, stage):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  before = (workdir / 'config.json').read_text()
  old = config_lib.field_value(config_lib.get_base_config(), name)
  with pytest.raises(errors.ConfigError) as raised:
    rerun.check(changed(name, value), workdir)
  message = errors.message(raised.value)
  assert f'config.{name}={value!r}' in message and f'made with {old!r}' in message, message
  assert f'--config.redo={stage}' in message and 'new --workdir' in message, message
  assert str(workdir / 'checkpoints' / stage) in message
  # Nothing changed in the workdir.
  assert (workdir / 'config.json').read_text() == before
  assert not history(workdir) and not (workdir / rerun.REPLACED_DIR).exists()


def test_a_training_in_progress_refuses_its_batch_size(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config(), stages=('train',))
  with pytest.raises(errors.ConfigError, match=r'train.batch_size=256, but the saved train'):
    rerun.check(changed('train.batch_size', 256), workdir)
  rerun.check(changed('finetune.test_res', 320), workdir)  # fine-tuning has not started


@pytest.mark.parametrize('name, value', [
    ('train.log_every_steps', 7), ('finetune.log_every_steps', 7), ('checkpoint.every_steps', 3),
    ('checkpoint.max_to_keep', 5), ('sweep.resolutions', (128, 640)), ('sweep.batch_size', 64),
    ('sweep.parametric', False), ('data.data_dir', '/elsewhere'), ('data.eval_split', 'test'),
    ('stages', ('sweep',)), ('finetune.cache_dir', '/scratch'),
])
def test_a_harmless_change_is_allowed_and_recorded(tmp_path, name, value):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  config = changed(name, value)
  rerun.check(config, workdir)
  assert json.loads((workdir / 'config.json').read_text()) == json.loads(
      config.to_json_best_effort())
  [entry] = history(workdir)
  assert list(entry['changes']) == [name] and entry['redone'] == []
  assert entry['changes'][name]['new'] == json.loads(json.dumps(value))
  assert (workdir / 'checkpoints' / 'finetune' / '8').exists()


def test_the_same_config_records_nothing(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  rerun.check(config_lib.get_base_config(), workdir)
  assert not history(workdir)


def test_redo_sets_the_stage_aside_once_and_keeps_it(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config(), auto=288)
  config = changed('finetune.test_res', 320)
  config.redo = 'finetune'
  rerun.check(config, workdir)
  replaced = workdir / rerun.REPLACED_DIR / '1'
  assert (replaced / 'checkpoints' / 'finetune' / '8').exists()
  assert (replaced / 'auto_test_res.json').exists() and (replaced / 'sweep.json').exists()
  assert json.loads((replaced / 'config.json').read_text())['finetune']['test_res'] == 288
  assert 'finetune.test_res: 288 -> 320' in (replaced / 'reason.txt').read_text()
  assert not (workdir / 'checkpoints' / 'finetune').exists()
  assert not (workdir / 'sweep.json').exists()
  assert (workdir / 'checkpoints' / 'train' / '8').exists()  # training was not redone
  [entry] = history(workdir)
  assert entry['redone'] == ['finetune'] and entry['replaced'] == str(replaced)
  # The same command again (a requeued job) resumes: nothing more is set aside.
  (workdir / 'checkpoints' / 'finetune' / '4').mkdir(parents=True)
  rerun.check(config, workdir)
  assert (workdir / 'checkpoints' / 'finetune' / '4').exists()
  assert not (workdir / rerun.REPLACED_DIR / '2').exists()


def test_redo_train_also_redoes_finetune(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  config = changed('train.num_epochs', 90)
  with pytest.raises(errors.ConfigError, match='--config.redo=train'):
    config.redo = 'finetune'  # does not cover the training
    rerun.check(config, workdir)
  config.redo = 'train'
  rerun.check(config, workdir)
  replaced = workdir / rerun.REPLACED_DIR / '1' / 'checkpoints'
  assert sorted(p.name for p in replaced.iterdir()) == ['finetune', 'train']


def test_redo_without_a_change_redoes_nothing(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  config = config_lib.get_base_config()
  config.redo = 'train'
  rerun.check(config, workdir)
  assert (workdir / 'checkpoints' / 'train' / '8').exists()
  assert not (workdir / rerun.REPLACED_DIR).exists()


def test_auto_is_compared_by_the_k_test_it_chose(tmp_path):
  base = changed('finetune.test_res', 'auto')
  workdir = make_workdir(tmp_path, base, auto=224)
  rerun.check(changed('finetune.test_res', 224), workdir)  # what 'auto' chose: the same
  rerun.check(base, workdir)
  with pytest.raises(errors.ConfigError, match=r"test_res=320, but .* made with 'auto' "
                                               r'\(which chose 224\)'):
    rerun.check(changed('finetune.test_res', 320), workdir)
  # Another way to choose changes nothing once fine-tuning has saved work: the choice stays.
  config = changed('finetune.test_res', 'auto')
  config.finetune.auto_metric = 'loss'
  rerun.check(config, workdir)


def test_switching_to_auto_with_no_choice_is_refused(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  with pytest.raises(errors.ConfigError, match=r"test_res='auto', but .* made with 288"):
    rerun.check(changed('finetune.test_res', 'auto'), workdir)


def test_several_refused_changes_are_listed(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  config = changed('finetune.test_res', 320)
  config.model.num_filters = 16
  with pytest.raises(errors.ConfigError) as raised:
    rerun.check(config, workdir)
  message = errors.message(raised.value)
  assert 'config.finetune.test_res=320' in message and 'config.model.num_filters=16' in message
  assert '--config.redo=train' in message


def test_a_field_the_saved_config_lacks_is_not_compared(tmp_path):
  workdir = make_workdir(tmp_path, config_lib.get_base_config())
  saved = json.loads((workdir / 'config.json').read_text())
  del saved['data']['crop_pct']
  (workdir / 'config.json').write_text(json.dumps(saved))
  rerun.check(changed('data.crop_pct', 0.95), workdir)


@pytest.mark.parametrize('name', ['data.name', 'data.folder', 'data.color_jitter',
                                  'model.dtype', 'init_from', 'train.label_smoothing'])
def test_training_fields_belong_to_the_train_stage(name):
  assert rerun.field_stage(name) == 'train'


def test_every_stage_field_is_named_by_its_section_or_listed():
  for name in rerun.config_values(config_lib.get_base_config()):
    stage = rerun.field_stage(name)
    section = name.split('.')[0] if '.' in name else ''
    if name in rerun.HARMLESS_FIELDS or section in rerun.HARMLESS_SECTIONS:
      assert stage is None
    elif section == 'finetune' or name in rerun.FINETUNE_DATA_FIELDS:
      assert stage == 'finetune'
    else:
      assert stage == 'train', name


@pytest.mark.slow
def test_a_finished_workdir_refuses_another_k_test_and_redoes_it(tmp_path, tiny_config):
  from fixres_jax import recipe  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  tiny_config.sweep.parametric = False
  recipe.run(tiny_config, str(workdir))
  tiny_config.finetune.test_res = 48
  with pytest.raises(errors.ConfigError, match='test_res=48, but the saved finetune'):
    recipe.run(tiny_config, str(workdir))
  tiny_config.finetune.test_res = 40
  tiny_config.model.num_filters = 16
  with pytest.raises(errors.ConfigError, match='num_filters=16, but the saved train'):
    recipe.run(tiny_config, str(workdir))
  tiny_config.model.num_filters = 8
  tiny_config.sweep.resolutions = (48,)  # harmless: the sweep is made anew
  recipe.run(tiny_config, str(workdir))
  tiny_config.finetune.test_res, tiny_config.redo = 48, 'finetune'
  recipe.run(tiny_config, str(workdir))
  meta = json.loads((workdir / 'sweep_meta.json').read_text())
  assert meta['finetune_test_res']['test_res'] == 48
  assert (workdir / 'replaced' / '1' / 'checkpoints' / 'finetune').exists()
  assert [e['redone'] for e in history(workdir)] == [[], ['finetune']]
