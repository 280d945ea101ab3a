"""The real main on a tiny config: train, finetune, sweep, resume."""

import json

import pytest

from fixres_jax import recipe


@pytest.mark.slow
def test_main_writes_sweep_and_resumes(tmp_path, tiny_config):
  workdir = tmp_path / 'run'
  tiny_config.train.profile_steps = 2
  recipe.run(tiny_config, str(workdir))
  records = json.loads((workdir / 'sweep.json').read_text())
  num_images = 100
  assert {(r['model'], r['test_res']) for r in records} == {
      (m, r) for m in ('trained', 'finetuned', 'parametric')
      for r in tiny_config.sweep.resolutions}
  for r in records:
    assert set(r) >= {'model', 'test_res', 'top1', 'top5', 'num_images'}
    assert 0.0 <= r['top1'] <= r['top5'] <= 1.0
    assert r['num_images'] == num_images
  assert json.loads((workdir / 'config.json').read_text())['train']['image_size'] == 32
  # sweep.png marks the K_test the fine-tuned model was made at.
  assert json.loads((workdir / 'sweep_meta.json').read_text())['finetune_test_res'] == {
      'test_res': 40, 'chosen': 'config.finetune.test_res', 'crop_pct': 0.875}
  assert (workdir / 'checkpoints' / 'train').exists()
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert {m['stage'] for m in metrics} >= {'train', 'finetune'}
  assert any('val_top1' in m for m in metrics)
  assert list((workdir / 'tensorboard' / 'train').glob('events.out.tfevents.*'))
  assert list((workdir / 'profile' / 'train').rglob('*.xplane.pb'))

  # Re-running resumes: every stage is finished, so nothing is retrained, even though the
  # config.json the first run wrote names a field an older version had (checkpoints do not
  # depend on the config's field names).
  saved = json.loads((workdir / 'config.json').read_text())
  saved['train']['batchsize'] = saved['train'].pop('batch_size')
  (workdir / 'config.json').write_text(json.dumps(saved))
  lines_before = len(metrics)
  recipe.run(tiny_config, str(workdir))
  metrics_after = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert len(metrics_after) == lines_before
  assert json.loads((workdir / 'sweep.json').read_text()) == records


@pytest.mark.slow
def test_main_runs_a_modern_recipe_and_hands_on_the_ema(tmp_path, tiny_config):
  """LAMB + BCE + Mixup/CutMix + RandAugment + stochastic depth + EMA + progressive resizing,
  then the cached FixRes fine-tuning and the sweep, through the real main."""
  cfg = tiny_config.train
  cfg.optimizer, cfg.base_lr, cfg.loss, cfg.bce_threshold = 'lamb', 0.02, 'bce', 0.2
  cfg.mixup_alpha, cfg.cutmix_alpha = 0.1, 1.0
  cfg.ema_decay = 0.9
  cfg.image_size_schedule = ((0, 24), (1, 32))  # 24 px for the first epoch, then K_train
  tiny_config.model.drop_path_rate = 0.1
  tiny_config.data.randaugment = 'rand-m6-mstd0.5-inc1'
  tiny_config.finetune.mode = 'cached'
  tiny_config.sweep.resolutions, tiny_config.sweep.parametric = (32,), False
  workdir = tmp_path / 'run'
  recipe.run(tiny_config, str(workdir))
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  final = [m for m in metrics if m['stage'] == 'train' and 'val_ema_top1' in m][-1]
  assert 'val_top1' in final and final['val_num_images'] == final['val_ema_num_images'] == 100
  records = json.loads((workdir / 'sweep.json').read_text())
  at_train_res = {r['model']: r['top1'] for r in records if r['test_res'] == 32}
  # The sweep's trained network is the EMA, evaluated as the train stage evaluated it.
  assert at_train_res['trained'] == pytest.approx(final['val_ema_top1'], abs=1e-6)
  assert 'finetuned' in at_train_res
  assert any(m['stage'] == 'finetune' for m in metrics)
