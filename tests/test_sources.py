"""Folder datasets with mixed image formats, corrupt files, bad labels, caching."""

import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from fixres_jax.data import pipeline
from fixres_jax.data import sources
from studies import common
from transforms import eval_at, train_at

REPO = pathlib.Path(__file__).parent.parent

FORMATS = [('rgb.jpg', 'RGB', 'JPEG'), ('gray.jpg', 'L', 'JPEG'), ('cmyk.jpg', 'CMYK', 'JPEG'),
           ('image.png', 'RGB', 'PNG'), ('alpha.png', 'RGBA', 'PNG')]


def write_image(path: pathlib.Path, mode: str, fmt: str, seed: int):
  rng = np.random.default_rng(seed)
  height, width = rng.integers(40, 90, size=2)
  pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format=fmt)


def make_folder(root: pathlib.Path, classes=('cat', 'dog', 'fish'), per_class=5):
  for split, count in (('train', per_class), ('validation', 2)):
    for c, name in enumerate(classes):
      for i in range(count):
        filename, mode, fmt = FORMATS[i % len(FORMATS)]
        write_image(root / split / name / f'{i}_{filename}', mode, fmt, seed=100 * c + i)
  return root


def folder_config(tiny_config, root):
  tiny_config.data.name = 'folder'
  tiny_config.data.folder = str(root)
  tiny_config.train.batch_size = 8
  tiny_config.sweep.batch_size = 8
  return tiny_config


def test_folder_dataset_reads_mixed_formats_as_rgb(tmp_path, tiny_config):
  config = folder_config(tiny_config, make_folder(tmp_path / 'data'))
  dataset = pipeline.load_dataset(config)
  assert dataset.num_classes == 3 and dataset.num_examples('train') == 15
  batches = list(pipeline.eval_batches(dataset, 'validation', 8, eval_at(32)))
  images = np.concatenate([b['image'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert images.shape[1:] == (32, 32, 3) and mask.sum() == 6
  assert np.isfinite(images).all()
  assert sorted(np.concatenate([b['label'] for b in batches])[mask == 1]) == [0, 0, 1, 1, 2, 2]
  train = next(pipeline.train_batches(dataset, 'train', 8, 0, train_at(32),
                                    read=pipeline.ReadOptions(shuffle_buffer=16)))
  assert train['image'].shape == (8, 32, 32, 3)


def test_folder_slices_for_held_out_parts(tmp_path, tiny_config):
  dataset = pipeline.load_dataset(folder_config(tiny_config, make_folder(tmp_path / 'data')))
  head, tail = dataset.files('train[:80%]')[0], dataset.files('train[80%:]')[0]
  assert len(head) == 12 and len(tail) == 3 and not set(head) & set(tail)


def test_missing_folder_and_empty_class_say_what_is_wrong(tmp_path, tiny_config):
  with pytest.raises(FileNotFoundError, match='one folder per split'):
    pipeline.load_dataset(folder_config(tiny_config, tmp_path / 'nothing'))
  root = make_folder(tmp_path / 'data')
  (root / 'train' / 'empty').mkdir()
  with pytest.raises(ValueError, match='empty holds no images'):
    pipeline.load_dataset(folder_config(tiny_config, root))


def test_unknown_class_in_validation_is_a_label_error(tmp_path, tiny_config):
  root = make_folder(tmp_path / 'data')
  write_image(root / 'validation' / 'zebra' / 'z.jpg', 'RGB', 'JPEG', seed=1)
  with pytest.raises(ValueError, match='zebra is not a class'):
    pipeline.load_dataset(folder_config(tiny_config, root))


def test_corrupt_image_is_named_or_skipped(tmp_path, tiny_config):
  root = make_folder(tmp_path / 'data')
  good = (root / 'validation' / 'dog' / '0_rgb.jpg').read_bytes()
  truncated = root / 'validation' / 'dog' / '0_rgb.jpg'
  truncated.write_bytes(good[:len(good) // 3])
  config = folder_config(tiny_config, root)
  dataset = pipeline.load_dataset(config)
  with pytest.raises(ValueError, match=r'dog/0_rgb\.jpg.*skip_corrupt=True'):
    list(pipeline.eval_batches(dataset, 'validation', 8, eval_at(32)))
  batches = list(pipeline.eval_batches(dataset, 'validation', 8, eval_at(32), skip_corrupt=True))
  assert sum(b['mask'].sum() for b in batches) == 5  # counted once each, the bad one skipped


def test_label_out_of_range_is_reported(tiny_dataset):
  class FewerClasses:  # the same examples, but a dataset that claims 3 classes
    name, num_classes = 'fewer', 3
    read, num_examples = tiny_dataset.read, tiny_dataset.num_examples
  with pytest.raises(ValueError, match=r'outside \[0, 3\)'):
    list(pipeline.eval_batches(FewerClasses(), 'validation', 24, eval_at(32)))


def test_cached_reading_gives_the_same_batches(tiny_dataset):
  kwargs = dict(split='validation', global_batch=24, transform=eval_at(32))
  plain = list(pipeline.eval_batches(tiny_dataset, **kwargs))
  for _ in range(2):  # the second pass is served from memory
    cached = list(pipeline.eval_batches(tiny_dataset, cache=True, **kwargs))
    for a, b in zip(plain, cached):
      np.testing.assert_array_equal(a['image'], b['image'])


def test_image_shapes_of_a_folder_read_its_slice_in_stratified_order(tmp_path, tiny_config):
  root = make_folder(tmp_path / 'data')
  dataset = pipeline.load_dataset(folder_config(tiny_config, root))
  shapes = sources.read_image_shapes(dataset, 'train', max_images=6)
  every = {str(p): Image.open(p).size[::-1] for p in (root / 'train').glob('*/*')}
  assert shapes.shape == (6, 2) and shapes.dtype == np.int64
  # The first six of the stratified order (PNG decoded, JPEG from its header): every class.
  first = dataset.files('train')[0][:6]
  assert [tuple(s) for s in shapes] == [every[f] for f in first]
  assert {f.split('/')[-2] for f in first} == {'cat', 'dog', 'fish'}
  tail = sources.read_image_shapes(dataset, 'train[80%:]', max_images=100)
  assert [tuple(s) for s in tail] == [every[f] for f in dataset.files('train[80%:]')[0]]


UNBALANCED = {'ant': 20, 'bee': 24, 'cat': 45, 'dog': 30, 'eel': 21, 'fox': 60, 'gnu': 27}


def make_unbalanced_folder(root: pathlib.Path, images: bool = False) -> pathlib.Path:
  """7 classes of 20-60 training images (empty files unless `images`), 3 validation each."""
  for split, sizes in (('train', UNBALANCED), ('validation', dict.fromkeys(UNBALANCED, 3))):
    for c, (name, count) in enumerate(sizes.items()):
      for i in range(count):
        path = root / split / name / f'{i:03d}.jpg'
        if images:
          write_image(path, 'RGB', 'JPEG', seed=1000 * c + i)
        else:
          path.parent.mkdir(parents=True, exist_ok=True)
          path.touch()
  return root


def class_counts(files) -> dict:
  counts = dict.fromkeys(UNBALANCED, 0)
  for f in files:
    counts[f.split('/')[-2]] += 1
  return counts


@pytest.mark.parametrize('cut', [10, 50, 90])
def test_folder_slices_are_stratified_disjoint_and_complete(tmp_path, cut):
  source = sources.FolderSource(str(make_unbalanced_folder(tmp_path)), 'train')
  whole = source.files('train')[0]
  head, tail = source.files(f'train[:{cut}%]')[0], source.files(f'train[{cut}%:]')[0]
  assert not set(head) & set(tail) and sorted(head + tail) == sorted(whole)
  for part, fraction in ((head, cut / 100), (tail, 1 - cut / 100)):
    for name, count in class_counts(part).items():
      assert abs(count - fraction * UNBALANCED[name]) < 1.5, (name, count, fraction)
  labels = source.files('train')[1]
  assert [source.classes[l] for l in labels] == [f.split('/')[-2] for f in whole]


def test_any_slice_of_the_stratified_order_holds_classes_in_proportion():
  labels = np.repeat(np.arange(7), list(UNBALANCED.values()))
  order = sources.stratified_order(labels)
  assert sorted(order) == list(range(len(labels)))
  sizes = np.bincount(labels)
  for start in range(0, len(labels), 3):
    for stop in range(start + 1, len(labels) + 1, 4):
      counts = np.bincount(labels[order[start:stop]], minlength=7)
      assert np.abs(counts - (stop - start) * sizes / len(labels)).max() < 2


def test_folder_slices_are_stable_across_runs_and_process_counts(tmp_path):
  root = str(make_unbalanced_folder(tmp_path))
  first = sources.FolderSource(root, 'train').files('train[90%:]')
  assert sources.FolderSource(root, 'train').files('train[90%:]') == first
  source = sources.FolderSource(root, 'train')
  for num_shards in (1, 2, 4):
    read = [ex['file_name'].decode() for shard in range(num_shards)
            for ex in source.read('train[90%:]', shard, num_shards, drop_remainder=False
                                  ).as_numpy_iterator()]
    assert sorted(read) == sorted(first[0])


# 227 training images, 21 validation; percentages round to the nearest count, as in tfds.
@pytest.mark.parametrize('spec, size', [
    ('train', 227), ('train[:10]', 10), ('train[10:20]', 10), ('train[-10:]', 10),
    ('train[:33%]', 75), ('train[-10%:]', 23), ('train[:50.5%]', 115), ('train[:2%]', 5),
    ('train[:10]+validation', 31), ('train[10%:20%]+validation[:3]', 25), ('validation', 21)])
def test_folder_splits_take_tfds_grammar(tmp_path, spec, size):
  source = sources.FolderSource(str(make_unbalanced_folder(tmp_path)), 'train')
  files = source.files(spec)[0]
  assert len(files) == size == source.num_examples(spec)
  whole = source.files('train')[0]
  if spec == 'train[-10:]':
    assert files == whole[-10:]
  if spec == 'train[10:20]':
    assert files == whole[10:20] and not set(files) & set(source.files('train[:10]')[0])


@pytest.mark.parametrize('spec, message', [
    ('train[:1000]', 'incompatible with 227 examples'),
    ('train[-1000:]', 'incompatible with 227 examples'),
    ('train[:90%', 'Cannot read split'), ('test[:10%]', "Unknown split 'test'")])
def test_bad_folder_splits_are_named(tmp_path, spec, message):
  source = sources.FolderSource(str(make_unbalanced_folder(tmp_path)), 'train')
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    source.files(spec)
  assert spec in str(error.value) and "tfds's grammar" in str(error.value)


def test_transfer_recipe_trains_on_every_class_and_selects_on_every_class(tmp_path):
  config = common.load_config_file(REPO / 'configs' / 'transfer.py')
  config.data.folder = str(make_unbalanced_folder(tmp_path / 'data', images=True))
  dataset = pipeline.load_dataset(config)
  config.train.image_size, config.train.batch_size = 32, 8
  config.data.shuffle_buffer = 256
  steps = pipeline.stage_steps_per_epoch(config, dataset, 'train')
  batches = pipeline.stage_batches(config, dataset, 'train', start_step=0)
  trained = {int(l) for _, b in zip(range(steps), batches) for l in b['label']}
  assert trained == set(range(7))
  selected = np.concatenate([b['label'][b['mask'] == 1] for b in pipeline.config_eval_batches(
      config, dataset, config.finetune.auto_split, 32, global_batch=8)])
  assert set(selected) == set(range(7)) and len(selected) == 23
  assert pipeline.trained_on_selection(dataset, config) is None


def test_selection_on_trained_images_is_warned(tmp_path):
  config = common.load_config_file(REPO / 'configs' / 'transfer.py')
  config.data.folder = str(make_unbalanced_folder(tmp_path))
  config.data.train_split = 'train'
  dataset = sources.FolderSource(config.data.folder, 'train')
  warning = pipeline.trained_on_selection(dataset, config)
  assert warning.startswith('Not held out: K_test selection')
  assert "config.finetune.auto_split='train[90%:]') reads 23 of its 23 images" in warning
  assert 'the parametric fit' in warning and '\n' not in warning
  config.data.train_split = 'train[:95%]'
  assert 'reads 12 of its 23 images' in pipeline.trained_on_selection(dataset, config)
  config.finetune.test_res, config.sweep.parametric = 96, False  # nothing selected on train
  assert pipeline.trained_on_selection(dataset, config) is None
