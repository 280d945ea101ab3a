"""Downscaled dataset copies: capped images, same labels and order, resumable, never overwritten."""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from fixres_jax.data import pipeline
from fixres_jax.data import prepare
from fixres_jax.data import synthetic
from test_sources import folder_config, make_folder
from transforms import eval_at, train_at

CAP = 64  # the embedded images' shorter sides are 200-320 px


def read_examples(dataset, split):
  """(shorter side, label, file name) of every example of `split`, in the source's order."""
  out = []
  for ex in dataset.read(split, drop_remainder=False).as_numpy_iterator():
    with Image.open(io.BytesIO(ex['image'])) as image:
      out.append((min(image.size), int(ex['label']), ex['file_name']))
  return out


def copy_config(config, out):
  copy = config.copy_and_resolve_references()
  copy.data.data_dir = str(out)
  return copy


def test_tfds_copy_is_capped_with_the_same_examples_and_reads(tmp_path, tiny_config,
                                                              tiny_dataset):
  written = prepare.prepare_copy(tiny_config, str(tmp_path / 'copy'), CAP, quality=85,
                                 workers=2)
  assert written.startswith(str(tmp_path / 'copy'))
  copy = pipeline.load_dataset(copy_config(tiny_config, tmp_path / 'copy'))
  assert copy.builder.data_dir == written  # read from the copy, not regenerated
  for split in ('train', 'validation'):
    original, copied = read_examples(tiny_dataset, split), read_examples(copy, split)
    assert len(copied) == len(original) == tiny_dataset.num_examples(split)
    assert [c[1:] for c in copied] == [o[1:] for o in original]  # labels, names, order
    assert all(c[0] == CAP for c in copied) and all(o[0] > CAP for o in original)
  # The same transforms read it, at training and test resolutions.
  batch = next(pipeline.train_batches(copy, 'train[:90%]', 32, 0, train_at(32)))
  assert batch['image'].shape == (32, 32, 32, 3) and np.isfinite(batch['image']).all()
  batches = list(pipeline.eval_batches(copy, 'validation', 32, eval_at(40)))
  assert sum(b['mask'].sum() for b in batches) == copy.num_examples('validation')


def test_small_jpegs_are_kept_and_other_formats_become_jpeg():
  def encode(size, fmt, mode='RGB'):
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, fmt)
    return out.getvalue()

  small = encode((50, 40), 'JPEG')
  assert prepare.downscale_image(small, 64, 90) == small
  png = prepare.downscale_image(encode((50, 40), 'PNG', 'RGBA'), 64, 90)
  assert tf.io.is_jpeg(png).numpy()
  with Image.open(io.BytesIO(prepare.downscale_image(encode((300, 200), 'PNG'), 64, 90))) as im:
    assert (im.format, im.size) == ('JPEG', (96, 64))
  assert prepare.downscale_image(b'not an image', 64, 90) == b'not an image'


class Interrupted(Exception):
  pass


def interrupt_after(monkeypatch, calls):
  """Makes downscale_image fail at its `calls`-th call, as a kill would stop the copy."""
  original, count = prepare.downscale_image, [0]

  def failing(*args):
    count[0] += 1
    if count[0] == calls:
      raise Interrupted
    return original(*args)

  monkeypatch.setattr(prepare, 'downscale_image', failing)


def test_interrupted_tfds_copy_resumes_keeping_finished_shards(tmp_path, tiny_config,
                                                               tiny_dataset, monkeypatch):
  out = str(tmp_path / 'copy')
  num_train = tiny_dataset.num_examples('train')
  interrupt_after(monkeypatch, num_train + 10)  # the train shard is done, validation is not
  with pytest.raises(Interrupted):
    prepare.prepare_copy(tiny_config, out, CAP, workers=2)
  monkeypatch.undo()
  version = str(synthetic.FixresSynthetic.VERSION)
  work = os.path.join(out, 'fixres_synthetic', 'tiny', version + prepare.INCOMPLETE)
  shard = os.path.join(work, 'fixres_synthetic-train.tfrecord-00000-of-00001')
  finished = os.stat(shard).st_mtime_ns
  assert not os.path.exists(os.path.join(out, 'fixres_synthetic', 'tiny', version))
  with pytest.raises(FileExistsError, match='interrupted copy made with'):  # resume with other flags
    prepare.prepare_copy(tiny_config, out, CAP + 1, workers=2)
  written = prepare.prepare_copy(tiny_config, out, CAP, workers=2)
  assert os.stat(os.path.join(written, os.path.basename(shard))).st_mtime_ns == finished
  copy = pipeline.load_dataset(copy_config(tiny_config, out))
  for split in ('train', 'validation'):
    copied = read_examples(copy, split)
    assert [c[1:] for c in copied] == [o[1:] for o in read_examples(tiny_dataset, split)]
    assert all(c[0] == CAP for c in copied)


def test_finished_copy_is_never_overwritten(tmp_path, tiny_config):
  out = str(tmp_path / 'copy')
  written = prepare.prepare_copy(tiny_config, out, CAP, workers=1)
  before = {name: os.stat(os.path.join(written, name)).st_mtime_ns
            for name in os.listdir(written)}
  with pytest.raises(FileExistsError, match='never overwritten'):
    prepare.prepare_copy(tiny_config, out, CAP // 2, workers=1)
  assert before == {name: os.stat(os.path.join(written, name)).st_mtime_ns
                    for name in os.listdir(written)}


def test_folder_copy_is_capped_resumable_and_reads_with_the_same_labels(
    tmp_path, tiny_config, monkeypatch):
  source = folder_config(tiny_config, make_folder(tmp_path / 'data', per_class=6))
  original = pipeline.load_dataset(source)
  out = tmp_path / 'copy'
  interrupt_after(monkeypatch, 7)
  with pytest.raises(Interrupted):
    prepare.prepare_copy(source, str(out), 32, workers=1)
  monkeypatch.undo()
  done = sorted((tmp_path / 'copy.incomplete').rglob('*.jpg'))
  assert 0 < len(done) < original.num_examples('train')
  mtimes = {p.relative_to(tmp_path / 'copy.incomplete'): p.stat().st_mtime_ns for p in done}
  prepare.prepare_copy(source, str(out), 32, workers=2)
  # The images finished before the interruption were not redone.
  assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
  copied = folder_config(tiny_config.copy_and_resolve_references(), out)
  copy = pipeline.load_dataset(copied)
  assert copy.classes == original.classes
  for split in ('train', 'validation'):
    paths, labels = copy.files(split)
    assert labels == original.files(split)[1]
    assert [os.path.splitext(os.path.relpath(p, out))[0] for p in paths] == [
        os.path.splitext(os.path.relpath(p, original.root))[0] for p in original.files(split)[0]]
    for path in paths:
      with Image.open(path) as image:
        assert image.format == 'JPEG' and min(image.size) <= 32
  batch = next(pipeline.train_batches(copy, 'train', 8, 0, train_at(32)))
  assert batch['image'].shape == (8, 32, 32, 3)


@pytest.mark.slow
def test_command_writes_then_refuses_without_a_traceback(tmp_path, synthetic_data_dir):
  command = [sys.executable, '-m', 'fixres_jax.data.prepare', '--config=tests/tiny_config.py',
             f'--config.data.data_dir={synthetic_data_dir}', f'--out={tmp_path / "copy"}',
             f'--short_side={CAP}', '--workers=2']
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  first = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
  assert first.returncode == 0, first.stderr[-2000:]
  assert f'--config.data.data_dir={tmp_path / "copy"}' in first.stdout
  again = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
  assert again.returncode != 0
  assert 'never overwritten' in again.stderr and 'Traceback' not in again.stderr
