"""The studies reuse a finished demo training only when they would train exactly as it did."""

import json

from etils import epath

from studies import reproduce


def write_dataset(data_dir, train_bytes):
  """A stand-in tfds dataset: a dataset_info.json, the same in every copy (prepare keeps the
  original's), and a record file of train_bytes."""
  version = data_dir / 'fixres_synthetic' / 'default' / '3.0.0'
  version.mkdir(parents=True)
  (version / 'dataset_info.json').write_text(json.dumps({'splits': [
      {'name': 'train', 'shardLengths': ['100'], 'numBytes': '1000'}]}))
  (version / 'fixres_synthetic-train.tfrecord-00000-of-00001').write_bytes(b'x' * train_bytes)
  return str(data_dir)


def make_demo(root, plan, seed):
  """A stand-in demo workdir: the demo's config for `seed`, a checkpoint dir, metrics."""
  workdir = root / f'seed_{seed}'
  (workdir / 'checkpoints' / 'train' / '7').mkdir(parents=True)
  config = reproduce.train_config(plan, 64, seed)
  config.stages = ('train', 'finetune', 'sweep')  # the demo's whole command
  config.sweep.parametric = True
  (workdir / 'config.json').write_text(config.to_json_best_effort())
  records = [{'stage': 'train', 'step': 5, 'step_time_s': 0.5},
             {'stage': 'train', 'step': 10, 'step_time_s': 0.7},
             {'stage': 'finetune', 'step': 5, 'step_time_s': 9.0}]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  return workdir


def test_train_once_copies_the_demo_training_only_when_it_trains_the_same(tmp_path,
                                                                         monkeypatch):
  root = epath.Path(tmp_path)
  plan = reproduce.Plan(train_res=(48, 64), seeds=(0,), num_epochs=8,
                        data_dir=write_dataset(root / 'data', 1000),
                        demo_root=str(root / 'demo'))
  demo = make_demo(root / 'demo', plan, seed=0)
  trained = []
  monkeypatch.setattr(reproduce, 'run_once', lambda config, workdir: trained.append(workdir))

  same = root / 'runs' / 'k64_s0' / 'train'
  reproduce.train_once(plan, reproduce.train_config(plan, 64, 0), same)
  assert not trained
  assert (same / 'checkpoints' / 'train' / '7').is_dir()
  done = json.loads((same / 'reproduce_train.json').read_text())
  assert done['copied_from'] == str(demo)
  assert done['seconds'] == 0.6 * 10  # median train step x steps; the finetune line dropped

  for config, workdir in ((reproduce.train_config(plan, 48, 0), 'k48_s0'),  # K_train
                          (reproduce.train_config(plan, 64, 1), 'k64_s1')):  # no demo seed
    reproduce.train_once(plan, config, root / 'runs' / workdir / 'train')
  other = reproduce.train_config(plan, 64, 0)
  other.data.color_jitter = 0.3  # one training option
  reproduce.train_once(plan, other, root / 'runs' / 'jitter')
  copy = reproduce.train_config(plan, 64, 0)
  copy.data.data_dir = write_dataset(root / 'copy', 600)  # the same name, smaller images
  reproduce.train_once(plan, copy, root / 'runs' / 'copy')
  assert [w.parent.name for w in trained[:2]] + [w.name for w in trained[2:]] == [
      'k48_s0', 'k64_s1', 'jitter', 'copy']

  # The same dataset generated into another data dir is the same training.
  moved = reproduce.train_config(plan, 64, 0)
  moved.data.data_dir = write_dataset(root / 'elsewhere', 1000)
  reproduce.train_once(plan, moved, root / 'runs' / 'moved')
  assert len(trained) == 4 and (root / 'runs' / 'moved' / 'reproduce_train.json').exists()
