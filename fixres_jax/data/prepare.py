"""A downscaled copy of a dataset: shorter side capped, JPEG re-encoded, read by the same pipeline.

  python -m fixres_jax.data.prepare --config=configs/r50_128.py --out=/ssd/imagenet_s160 \
      --short_side=160 --quality=90 [--workers=16]

then train from the copy by pointing the config at it:
  tfds datasets (imagenet2012, fixres_synthetic, any tfds name): --config.data.data_dir=OUT
  folder datasets (data.name='folder'):                          --config.data.folder=OUT

Why the copy has the source's own format. A tfds dataset is copied shard by shard into
OUT/NAME/CONFIG/VERSION with the same file names, the same records in the same order and the
source's dataset_info.json: `tfds.builder(data.name, data_dir=OUT)` finds it prepared, so the
split names, slices ('train[:90%]'), example counts, labels and the training order are those
of the source, and only config.data.data_dir changes. A folder dataset is copied file by file
into the same SPLIT/CLASS/NAME tree. The training transforms are the same; only the pixels
they read are fewer (RandomResizedCrop samples the same relative boxes, of a smaller image).

Which images change. Images whose shorter side exceeds --short_side are decoded (libjpeg's
DCT scaling does most of the reduction, as PIL's draft mode), resized with Lanczos to that
shorter side (the aspect ratio kept) and saved as JPEG at --quality. Smaller JPEGs are kept
byte for byte (re-encoding would only lose detail); smaller images of other formats are
re-encoded as JPEG. Undecodable images are copied unchanged, so counts stay equal and
config.data.skip_corrupt treats them as it treats the source's. EXIF orientation is ignored,
as the pipeline ignores it.

Resumable and parallel. The copy is written into OUT's sibling `OUT.incomplete` (tfds: the
version folder's sibling) and renamed into place when every file is written, so a finished
copy exists only once it is complete, and the command refuses to write over it. Each shard
(tfds) or image (folder) is written to a temporary name and renamed: an interrupted run,
started again with the same flags, keeps what was finished and continues. Images are
decoded, resized and encoded by --workers threads (Pillow releases the GIL while it does so).
"""

import concurrent.futures
import io
import json
import os
import time
from typing import Callable, Iterable, Iterator

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from PIL import Image
import tensorflow as tf

from fixres_jax import errors
from fixres_jax.data import sources

COPY_RECORD = 'fixres_copy.json'  # the flags of the copy, checked when a run resumes
INCOMPLETE = '.incomplete'
RECORD_PATTERN = '.tfrecord-'


def downscale_image(data: bytes, short_side: int, quality: int) -> bytes:
  """`data` with its shorter side capped at `short_side`, as JPEG; small JPEGs unchanged.

  Returns the input bytes when they are a JPEG no larger than the cap, or cannot be decoded.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      shorter = min(width, height)
      if shorter <= short_side and image.format == 'JPEG':
        return data
      if shorter > short_side:
        scale = short_side / shorter
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image.draft(None, size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= size
        image = image.convert('L' if image.mode == 'L' else 'RGB').resize(size, Image.LANCZOS)
      else:
        image = image.convert('L' if image.mode == 'L' else 'RGB')
      out = io.BytesIO()
      image.save(out, 'JPEG', quality=quality)
      return out.getvalue()
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    logging.warning('Copying an undecodable image unchanged (%s).', e)
    return data


def map_in_threads(fn: Callable, items: Iterable, workers: int) -> Iterator:
  """fn over items by `workers` threads, results in input order, a bounded window in flight."""
  window = 8 * workers
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = []
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.pop(0).result()
    for future in pending:
      yield future.result()


def start_copy(out: str, settings: dict) -> str:
  """The folder to write into (OUT.incomplete), checked against a finished or other copy.

  Raises:
    FileExistsError: OUT exists (a finished copy is never overwritten), or an interrupted
      copy in OUT.incomplete was made with other settings.
  """
  if tf.io.gfile.exists(out):
    raise FileExistsError(
        f'{out} already exists: a finished copy is never overwritten. Remove it first, or '
        'choose another --out.')
  work = out.rstrip('/') + INCOMPLETE
  record = os.path.join(work, COPY_RECORD)
  if tf.io.gfile.exists(record):
    with tf.io.gfile.GFile(record) as f:
      previous = json.load(f)
    if previous != settings:
      raise FileExistsError(
          f'{work} holds an interrupted copy made with {previous}, not {settings}: rerun '
          'with those settings to finish it, or remove the folder.')
    logging.info('Resuming the interrupted copy in %s.', work)
  tf.io.gfile.makedirs(work)
  with tf.io.gfile.GFile(record, 'w') as f:
    json.dump(settings, f, indent=2)
  return work


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """write(temporary path), then a rename: `path` exists only complete."""
  temporary = path + '.tmp'
  write(temporary)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def copy_tfds(source: sources.TfdsSource, out_root: str, short_side: int, quality: int,
              workers: int) -> str:
  """Copies every shard of a prepared tfds dataset under out_root; returns the copy's folder."""
  src_dir = source.builder.data_dir
  relative = os.path.relpath(src_dir, source.builder.data_dir_root)
  out = os.path.join(out_root, relative)
  settings = {'source': src_dir, 'short_side': short_side, 'quality': quality}
  work = start_copy(out, settings)
  image_key = source.image_key
  names = sorted(tf.io.gfile.listdir(src_dir))
  shards = [n for n in names if RECORD_PATTERN in n and not n.endswith('.tmp')]
  if not shards:
    raise ValueError(f'{src_dir} holds no {RECORD_PATTERN} shards: only tfds datasets '
                     "stored as TFRecord can be copied (file_format='tfrecord').")

  def convert(record: bytes) -> bytes:
    example = tf.train.Example.FromString(record)
    image = example.features.feature[image_key].bytes_list.value
    image[0] = downscale_image(image[0], short_side, quality)
    return example.SerializeToString()

  for i, shard in enumerate(shards):
    target = os.path.join(work, shard)
    if tf.io.gfile.exists(target):
      continue  # finished by an interrupted run

    def write(path, shard=shard):
      records = tf.data.TFRecordDataset(os.path.join(src_dir, shard)).as_numpy_iterator()
      with tf.io.TFRecordWriter(path) as writer:
        for record in map_in_threads(convert, records, workers):
          writer.write(record)

    start = time.perf_counter()
    write_atomically(target, write)
    logging.info('Shard %d/%d %s written in %.1f s.', i + 1, len(shards), shard,
                 time.perf_counter() - start)
  for name in names:  # dataset_info.json, features.json, label files: the copy is prepared
    if name not in shards and not tf.io.gfile.isdir(os.path.join(src_dir, name)):
      tf.io.gfile.copy(os.path.join(src_dir, name), os.path.join(work, name), overwrite=True)
  tf.io.gfile.rename(work, out)
  return out


def copy_folder(source: sources.FolderSource, out: str, short_side: int, quality: int,
                workers: int) -> str:
  """Copies every split folder of a folder dataset into out/SPLIT/CLASS/; returns out."""
  settings = {'source': source.root, 'short_side': short_side, 'quality': quality}
  work = start_copy(out, settings)
  tasks = []
  for split in sorted(tf.io.gfile.listdir(source.root)):
    split = split.rstrip('/')
    if not tf.io.gfile.isdir(os.path.join(source.root, split)):
      continue
    for path in source.files(split)[0]:
      relative = os.path.relpath(path, source.root)
      stem, extension = os.path.splitext(relative)
      if extension.lower() not in ('.jpg', '.jpeg'):
        relative = stem + '.jpg'  # re-encoded as JPEG
      tasks.append((path, os.path.join(work, relative)))
  todo = [task for task in tasks if not tf.io.gfile.exists(task[1])]
  logging.info('%d images to copy (%d done before).', len(todo), len(tasks) - len(todo))

  def copy_one(task):
    src, dst = task
    with tf.io.gfile.GFile(src, 'rb') as f:
      data = downscale_image(f.read(), short_side, quality)
    tf.io.gfile.makedirs(os.path.dirname(dst))
    write_atomically(dst, lambda path: _write_bytes(path, data))

  for _ in map_in_threads(copy_one, todo, workers):
    pass
  tf.io.gfile.rename(work, out)
  return out


def _write_bytes(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def prepare_copy(config, out: str, short_side: int, quality: int = 90, workers: int = 0
                 ) -> str:
  """Writes the downscaled copy of config.data's dataset; returns the folder written.

  Args:
    out: tfds: a tfds data dir (the copy lands in OUT/NAME/CONFIG/VERSION); folder: the
      copy's root.
    short_side: the cap on the shorter side, in pixels.
    quality: JPEG quality of the re-encoded images.
    workers: threads (0: one per CPU core).

  Raises:
    ValueError: bad settings. FileExistsError: the copy exists (see start_copy).
  """
  if short_side < 1 or not 1 <= quality <= 100:
    raise ValueError(f'--short_side={short_side} must be positive and --quality={quality} '
                     'in [1, 100].')
  workers = workers or os.cpu_count()
  source = sources.load_source(config)
  if isinstance(source, sources.FolderSource):
    if os.path.abspath(out) == os.path.abspath(source.root):
      raise FileExistsError(f'--out={out} is the source folder: choose another folder.')
    return copy_folder(source, out, short_side, quality, workers)
  return copy_tfds(source, out, short_side, quality, workers)


def main(argv):
  del argv
  flags_ = flags.FLAGS
  start = time.perf_counter()
  try:
    out = prepare_copy(flags_.config, flags_.out, flags_.short_side, flags_.quality,
                       flags_.workers)
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  field = 'data.folder' if flags_.config.data.name == sources.FOLDER_NAME else 'data.data_dir'
  print(f'Wrote {out} in {time.perf_counter() - start:.0f} s. Read it with '
        f'--config.{field}={flags_.out}', flush=True)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'The dataset to copy: its config.data.')
  flags.DEFINE_string('out', None, 'tfds: a data dir for the copy; folder: the copy root.')
  flags.DEFINE_integer('short_side', None, 'Cap on the shorter side, in pixels.')
  flags.DEFINE_integer('quality', 90, 'JPEG quality of re-encoded images.')
  flags.DEFINE_integer('workers', 0, 'Threads decoding and encoding (0: one per CPU core).')
  flags.mark_flags_as_required(['config', 'out', 'short_side'])
  errors.run_tool(main)
