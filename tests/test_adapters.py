"""The adapter bank: each adapter equals a separate cached fine-tuning at its K; kills keep the
finished adapters; selecting K at load time; its size."""

import json
import pathlib
import types

from flax import traverse_util
import numpy as np
import pytest

from fixres_jax import adapters
from fixres_jax import cached_finetune
from fixres_jax import checkpoint
from fixres_jax import config as config_lib
from fixres_jax import errors
from fixres_jax import export
from fixres_jax import models
from fixres_jax import parallel
from fixres_jax import recipe
from fixres_jax import rerun
from fixres_jax import train
from fixres_jax import transform_record
from fixres_jax.data import pipeline
import tiny_config

K_TEST, BANK = 40, (32,)  # the stage's K_test, and the bank's other K


def cached_config(data_dir, test_res=K_TEST):
  config = tiny_config.get_config()
  config.data.data_dir = data_dir
  config.finetune.mode = 'cached'
  config.finetune.batch_size = 24
  config.finetune.test_res = test_res
  config.finetune.adapter_resolutions = BANK
  return config


def finetune_stage(config, workdir, dataset, trained) -> dict:
  """The finetune stage as recipe.run_stages runs it: fine-tuned variables and their record."""
  finetuned = cached_finetune.finetune_cached(config, str(workdir),
                                              recipe.finetune_data(config, dataset),
                                              parallel.create_mesh(), trained)
  transform_record.write(workdir, transform_record.describe(
      config, 'finetune', config.finetune.test_res, 'config.finetune.test_res'))
  return finetuned


def flatten(tree) -> dict:
  return traverse_util.flatten_dict(checkpoint.to_host(tree), sep='/')


# Three cached fine-tunings of the tiny network (tens of seconds): the slow tier.
@pytest.fixture(scope='module')
def bank(synthetic_data_dir, tmp_path_factory):
  """A run's finetune stage at K_TEST with its bank, and a separate fine-tuning at each K of
  the bank in a workdir of its own, all from the same random 'trained' variables."""
  config = cached_config(synthetic_data_dir)
  dataset = pipeline.load_dataset(config)
  model = train.create_model(config, dataset.num_classes)
  trained = train.init_variables(model, config.train.image_size, config.seed)
  workdir = tmp_path_factory.mktemp('bank')
  (workdir / 'config.json').write_text(config.to_json_best_effort())  # what export reads
  finetuned = finetune_stage(config, workdir, dataset, trained)
  made = adapters.build(config, workdir, lambda c: recipe.finetune_data(c, dataset),
                        parallel.create_mesh(), trained, finetuned,
                        transform_record.read(workdir, 'finetune'))
  separate = {}
  for k in BANK:
    config_k = cached_config(synthetic_data_dir, test_res=k)
    separate[k] = cached_finetune.finetune_cached(
        config_k, str(tmp_path_factory.mktemp(f'separate_{k}')),
        recipe.finetune_data(config_k, dataset), parallel.create_mesh(), trained)
  return types.SimpleNamespace(config=config, model=model, trained=trained, workdir=workdir,
                               finetuned=finetuned, made=made, separate=separate)


@pytest.mark.slow
def test_each_adapter_equals_a_separate_cached_finetuning(bank):
  assert bank.made == [K_TEST, *BANK] and adapters.resolutions(bank.workdir) == sorted(bank.made)
  for k, separate in {K_TEST: bank.finetuned, **bank.separate}.items():
    loaded = flatten(adapters.load_adapter(bank.workdir, k))
    expected = flatten(separate)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_allclose(loaded[key], value, rtol=1e-6, atol=1e-7, err_msg=f'{k} {key}')
  # The adapters differ from one another in exactly the last BN's statistics and the head.
  a, b = (flatten(adapters.load_adapter(bank.workdir, k)) for k in (K_TEST, BANK[0]))
  bn = '/'.join(bank.model.last_bn_path)
  assert {k for k in a if not np.array_equal(a[k], b[k])} == {
      f'params/{bank.model.HEAD}/kernel', f'params/{bank.model.HEAD}/bias',
      f'batch_stats/{bn}/mean', f'batch_stats/{bn}/var'}


@pytest.mark.slow
def test_a_candidate_of_the_adapted_choice_is_the_cached_finetuning_at_its_k(
    bank, synthetic_data_dir, tmp_path):
  """finetune.auto_model='adapted' scores at each K what the cached mode makes there."""
  config = cached_config(synthetic_data_dir, test_res='auto')
  dataset = pipeline.load_dataset(config)
  candidate = flatten(adapters.fit_candidate(
      config, tmp_path, lambda c: recipe.finetune_data(c, dataset), parallel.create_mesh(),
      bank.trained, BANK[0], config.data.crop_pct))
  expected = flatten(bank.separate[BANK[0]])
  assert candidate.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_allclose(candidate[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
  assert config.finetune.test_res == 'auto'  # the caller's config is left as it was


@pytest.mark.slow
def test_each_adapter_records_its_transform_and_export_selects_it(bank):
  for k in (K_TEST, *BANK):
    run = export.load_run(bank.workdir, test_res=k)
    assert run.record['image_size'] == k
    assert run.record == adapters.read_record(bank.workdir, k)
    for key, value in flatten(adapters.load_adapter(bank.workdir, k)).items():
      np.testing.assert_array_equal(flatten(run.variables)[key], value)
  own = transform_record.read(bank.workdir, 'finetune')
  assert adapters.read_record(bank.workdir, K_TEST) == own
  assert transform_record.differences(adapters.read_record(bank.workdir, BANK[0]), own) == {}
  with pytest.raises(errors.NotFoundError, match=r'holds no adapter at K_test=56: it holds '
                     rf'\[{BANK[0]}, {K_TEST}\]'):
    export.load_run(bank.workdir, test_res=56)


class Interrupted(Exception):
  pass


def test_a_killed_bank_keeps_its_finished_adapters(tmp_path, tiny_config, monkeypatch):
  """The cheap part of resuming: fine-tuning stands in for a fake that dies at one K."""
  model = train.create_model(tiny_config, 10)
  trained = train.init_variables(model, 32, 0)
  tiny_config.finetune.mode = 'cached'
  tiny_config.finetune.adapter_resolutions = (32, 48, 56)
  record = transform_record.describe(tiny_config, 'finetune', 40, 'x')
  calls, kill_at = [], [48]

  def fake_fit(config, workdir, data, mesh, variables, on_batch=None):
    k = config.finetune.test_res
    calls.append(k)
    if k in kill_at:
      kill_at.remove(k)
      raise Interrupted()
    head = variables['params'][model.HEAD]
    return {**variables, 'params': {**variables['params'],
                                    model.HEAD: {'kernel': head['kernel'] + k,
                                                 'bias': head['bias'] + k}}}

  monkeypatch.setattr(cached_finetune, 'fit_adapter', fake_fit)

  def build():
    return adapters.build(tiny_config, tmp_path, lambda c: None, None, trained, trained, record)

  with pytest.raises(Interrupted):
    build()
  assert calls == [32, 48] and adapters.resolutions(tmp_path) == [32, 40]
  assert build() == [48, 56] and calls == [32, 48, 48, 56]  # 32 and 40 are kept, not redone
  assert build() == [] and adapters.resolutions(tmp_path) == [32, 40, 48, 56]
  for k in (32, 56):
    head = adapters.load(tmp_path, k)['params'][model.HEAD]
    np.testing.assert_array_equal(head['bias'], trained['params'][model.HEAD]['bias'] + k)
  # The bank's list may grow without redoing the finetune stage; a redo moves the bank.
  assert rerun.field_stage('finetune.adapter_resolutions') is None
  assert 'checkpoints/adapters' in rerun.STAGE_FILES['finetune']


def test_an_adapter_of_another_network_is_refused(tiny_config):
  model = train.create_model(tiny_config, 10)
  trained = train.init_variables(model, 32, 0)
  adapter = adapters.extract(model, trained)
  np.testing.assert_array_equal(
      flatten(adapters.attach(trained, adapter))[f'params/{model.HEAD}/kernel'],
      trained['params'][model.HEAD]['kernel'])
  wide = {**adapter, 'params': {model.HEAD: {'kernel': np.zeros((3, 10)),
                                             'bias': np.zeros(10)}}}
  with pytest.raises(errors.CheckpointError, match=f'params/{model.HEAD}/kernel'):
    adapters.attach(trained, wide)


def test_export_refuses_an_adapter_of_the_train_stage(tmp_path):
  with pytest.raises(errors.ConfigError, match='--test_res=112 selects an adapter of the '
                     "finetune stage's bank: leave --stage=train out"):
    export.load_run(tmp_path, stage='train', test_res=112)


def test_resnet50_adapter_size_and_the_readme_line():
  model = models.create_model('resnet50', 1000)
  # The last BN's mean and variance over 2,048 channels, a 2,048 x 1,000 classifier and bias.
  assert adapters.size_bytes(model) == 4 * (2 * 2048 + 2048 * 1000 + 1000)
  readme = (pathlib.Path(__file__).parent.parent / 'README.md').read_text()
  assert adapters.describe_size('resnet50', 1000) in readme


@pytest.mark.parametrize('field, value, message', [
    ('mode', 'sgd', "built by the cached mode: set config.finetune.mode='cached'"),
    ('adapter_resolutions', (32, 48, 32), 'names a K_test twice'),
    ('adapter_resolutions', (0,), 'positive integers up to 4096 px')])
def test_config_rejects_a_bank_it_cannot_build(field, value, message):
  config = config_lib.get_base_config()
  config.finetune.mode = 'cached'
  config.finetune.adapter_resolutions = (160,)
  config.finetune[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(config, device_count=8)


@pytest.mark.slow
def test_main_builds_the_bank_and_sweeps_each_adapter_at_its_k(tmp_path, bank):
  config = bank.config.copy_and_resolve_references()
  config.init_from = str(checkpoint.save_variables(tmp_path / 'trained', bank.trained).parent)
  config.stages = ('finetune', 'sweep')
  config.sweep.resolutions = (32, 40, 48)
  config.sweep.latency_batch_size = 0
  workdir = tmp_path / 'run'
  recipe.run(config, str(workdir))
  records = json.loads((workdir / 'sweep.json').read_text())
  scored = {r['test_res']: r for r in records if r['model'] == 'adapter'}
  assert sorted(scored) == [32, 40]  # 48 has no adapter
  finetuned_40, = [r for r in records if (r['model'], r['test_res']) == ('finetuned', 40)]
  assert scored[40]['top1'] == finetuned_40['top1'] and scored[40]['loss'] == pytest.approx(
      finetuned_40['loss'], rel=1e-6)
  assert json.loads((workdir / 'sweep_meta.json').read_text())['adapters'] == [32, 40]
  for key, value in flatten(adapters.load(bank.workdir, 32)).items():
    np.testing.assert_allclose(flatten(adapters.load(workdir, 32))[key], value, rtol=1e-6)
