"""Folder datasets with mixed image formats, corrupt files, bad labels, caching."""

import io
import pathlib

import numpy as np
from PIL import Image
import pytest

from fixres_jax.data import pipeline
from fixres_jax.data import sources

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
  batches = list(pipeline.eval_batches(dataset, 'validation', 32, 8))
  images = np.concatenate([b['image'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert images.shape[1:] == (32, 32, 3) and mask.sum() == 6
  assert np.isfinite(images).all()
  assert sorted(np.concatenate([b['label'] for b in batches])[mask == 1]) == [0, 0, 1, 1, 2, 2]
  train = next(pipeline.train_batches(dataset, 'train', 32, 8, seed=0, shuffle_buffer=16))
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
    list(pipeline.eval_batches(dataset, 'validation', 32, 8))
  batches = list(pipeline.eval_batches(dataset, 'validation', 32, 8, skip_corrupt=True))
  assert sum(b['mask'].sum() for b in batches) == 5  # counted once each, the bad one skipped


def test_label_out_of_range_is_reported(tiny_dataset):
  class FewerClasses:  # the same examples, but a dataset that claims 3 classes
    name, num_classes = 'fewer', 3
    read, num_examples = tiny_dataset.read, tiny_dataset.num_examples
  with pytest.raises(ValueError, match=r'outside \[0, 3\)'):
    list(pipeline.eval_batches(FewerClasses(), 'validation', 32, 24))


def test_cached_reading_gives_the_same_batches(tiny_dataset):
  kwargs = dict(split='validation', image_size=32, global_batch=24)
  plain = list(pipeline.eval_batches(tiny_dataset, **kwargs))
  for _ in range(2):  # the second pass is served from memory
    cached = list(pipeline.eval_batches(tiny_dataset, cache=True, **kwargs))
    for a, b in zip(plain, cached):
      np.testing.assert_array_equal(a['image'], b['image'])


def test_image_shapes_of_a_folder_span_its_classes(tmp_path, tiny_config):
  root = make_folder(tmp_path / 'data')
  dataset = pipeline.load_dataset(folder_config(tiny_config, root))
  shapes = sources.read_image_shapes(dataset, 'train', max_images=6)
  every = {str(p): Image.open(p).size[::-1] for p in (root / 'train').glob('*/*')}
  assert shapes.shape == (6, 2) and shapes.dtype == np.int64
  # Each shape is one of the files' (PNG decoded, JPEG from its header), drawn from more than
  # the first class folder.
  assert all(tuple(s) in set(every.values()) for s in shapes)
  files = dataset.read('train', drop_remainder=False, shuffle_seed=0).take(6)
  classes = {str(ex['file_name'].numpy().decode()).split('/')[-2] for ex in files}
  assert len(classes) > 1
  all_shapes = sources.read_image_shapes(dataset, 'train', max_images=100)
  assert sorted(map(tuple, all_shapes)) == sorted(every.values())
