"""Input-pipeline throughput: fixres_jax transforms against a plain decode-everything baseline.

COMMAND
  python -m benchmarks.input_pipeline [--data_dir=DIR] [--num_images=200] [--seconds=2] \
      [--out=docs/benchmarks/input_cpu.json]

Measures images/s through tf.data (parallel map, AUTOTUNE, batched) for train@128, train@160,
train@224, finetune@288, test@224 and test@288, each side by side with a baseline that decodes the whole
JPEG and then crops and resizes with tf.image (the same sampler, the same antialiased bilinear
filter, so only the decoding strategy differs). Rounds alternate baseline and fast runs so
that load from other processes hits both alike; medians over rounds are reported, as
images per wall-clock second and per CPU second of this process (the steadier figure when
other processes share the cores). Prints JSON:
per transform, both rates and their ratio. Without --data_dir it first writes photo-like
JPEGs (quality 90) in an ImageNet-like mix of sizes (IMAGENET_LIKE_MIX: median 500x375, a tail
of large photos) into a temporary folder. Encoded bytes are held in memory, so file reading
is not measured.

Downscaled copies: train@128 (fast path) also runs on the same images passed through
fixres_jax.data.prepare.downscale_image at each --copy_short_sides, in the same rounds as the
originals. RandAugment: train@160 with RANDAUGMENT (the A3 recipe's), against train@160
without it, in the same rounds: the ratio is what RandAugment costs the pipeline. Decode costs: the time to decode the whole image at DCT scale 1, 1/2, 1/4 and 1/8
(single-threaded): no transform that reads the pixels of a crop can cost less than its
entropy decoding, which even the 1/8-scale decode pays for every row above the crop's bottom.

Measured on the 2-core CPU development machine: see the README (ratios over the baseline;
targets >= 1.3x for train@128 and >= 1.35x for test@224).
"""

import io
import math
import os
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow as tf

from benchmarks import output
from fixres_jax.data import preprocess
from studies import common


RANDAUGMENT = 'rand-m6-mstd0.5-inc1'  # ResNet strikes back A3's, at its K_train


def define_flags() -> None:
  """The command's flags, defined only when it runs (tests import this module beside others)."""
  flags.DEFINE_string('data_dir', None, 'Folder of JPEGs (searched recursively); generated if unset.')
  flags.DEFINE_integer('num_images', 200, 'Images to generate when --data_dir is unset.')
  flags.DEFINE_string('image_size', '', 'WIDTHxHEIGHT of every generated image; "" = '
                      'IMAGENET_LIKE_MIX.')
  flags.DEFINE_list('copy_short_sides', ['160', '256'], 'Shorter-side caps of the downscaled '
                    'copies measured at train@128.')
  flags.DEFINE_integer('copy_quality', 90, 'JPEG quality of the downscaled copies.')
  flags.DEFINE_string('out', '', 'Also write the JSON here (docs/benchmarks/input_cpu.json).')
  flags.DEFINE_float('seconds', 2.0, 'Seconds timed per run.')
  flags.DEFINE_integer('rounds', 3, 'Alternating baseline/fast rounds per transform.')
  flags.DEFINE_integer('batch_size', 32, 'Batch size of the tf.data pipeline.')


FLAGS = flags.FLAGS

CROP_PCT = 0.875
# (fraction, width, height) of the generated images: ImageNet's training images have a median
# near 500x375 (most are 500 px on the long side, landscape or portrait) and a tail of large
# photos (average near 470x390). Median 500x375; mean 0.24 Mpixel.
IMAGENET_LIKE_MIX = ((0.38, 500, 375), (0.22, 375, 500), (0.17, 500, 333), (0.15, 400, 300),
                     (0.05, 800, 600), (0.02, 1280, 960), (0.01, 2048, 1536))


def image_sizes(num_images, mix=IMAGENET_LIKE_MIX):
  """(width, height) of each image: the mix's sizes in proportion, largest first."""
  counts = [max(1, round(fraction * num_images)) for fraction, _, _ in mix]
  return [(w, h) for count, (_, w, h) in zip(counts, mix) for _ in range(count)]


def write_photo_like_jpegs(folder, num_images, width, height, seed=0):
  """Writes JPEGs with a photo's statistics: smooth shading, edges, fine texture.

  Calibrated on decoding cost: their full, 1/4-scale and central-crop decode times relate
  as those of real photos resized to 500x375 and saved at quality 90 (the 1/4 scale and a
  central 330x330 crop save about as much decoding time as on such photos).
  """
  rng = np.random.default_rng(seed)
  sizes = image_sizes(num_images) if width is None else [(width, height)] * num_images
  for i, (width, height) in enumerate(sizes):
    # Smooth colour field: low-resolution noise upsampled (sky, walls, out-of-focus areas).
    low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
    # Sharp-edged shapes (objects) and per-pixel texture (grass, fabric, sensor noise).
    shapes = Image.new('RGB', (width, height))
    mask = Image.new('L', (width, height))
    draw_shape, draw_mask = ImageDraw.Draw(shapes), ImageDraw.Draw(mask)
    for _ in range(12):
      x0, y0 = rng.integers(0, width), rng.integers(0, height)
      box = [x0, y0, x0 + rng.integers(10, width // 2), y0 + rng.integers(10, height // 2)]
      color = tuple(int(c) for c in rng.integers(0, 256, 3))
      draw_shape.ellipse(box, fill=color)
      draw_mask.ellipse(box, fill=255)
    image.paste(shapes, mask=mask)
    pixels = np.asarray(image, np.float32) + rng.normal(0, 10, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image.save(pathlib.Path(folder) / f'{i:05d}.jpg', quality=90)


def read_jpegs(folder):
  paths = sorted(p for p in pathlib.Path(folder).rglob('*')
                 if p.suffix.lower() in ('.jpg', '.jpeg'))
  if not paths:
    raise FileNotFoundError(f'No .jpg/.jpeg files under {folder}: pass a folder of JPEGs.')
  return [p.read_bytes() for p in paths]


def baseline_train(image_bytes, seed, size):
  """Full decode, then torchvision's crop and an antialiased bilinear resize."""
  crop_seed, flip_seed = preprocess.split_seed(seed, 2)
  image = tf.io.decode_jpeg(image_bytes, channels=3)
  height, width = tf.unstack(tf.shape(image)[:2])
  y, x, h, w = preprocess.sample_crop_torchvision(crop_seed, height, width)
  image = tf.image.resize(image[y:y + h, x:x + w], [size, size], antialias=True)
  return preprocess.normalize_image(preprocess.flip_image(image, flip_seed))


def baseline_test(image_bytes, size, flip_seed=None):
  """Full decode, resize the shorter side to floor(size / crop_pct), central crop."""
  image = tf.io.decode_jpeg(image_bytes, channels=3)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  resized = tf.cast(tf.floor(shape * math.floor(size / CROP_PCT) / tf.reduce_min(shape)),
                    tf.int32)
  image = tf.image.resize(image, resized, antialias=True)
  image = tf.image.resize_with_crop_or_pad(image, size, size)
  if flip_seed is not None:
    image = preprocess.flip_image(image, flip_seed)
  return preprocess.normalize_image(image)


def transforms():
  """name -> (baseline, fast), each (image_bytes, seed) -> image."""
  return {
      'train@128': (lambda b, s: baseline_train(b, s, 128),
                    lambda b, s: preprocess.preprocess_train(b, s, 128)),
      'train@160': (lambda b, s: baseline_train(b, s, 160),
                    lambda b, s: preprocess.preprocess_train(b, s, 160)),
      'train@224': (lambda b, s: baseline_train(b, s, 224),
                    lambda b, s: preprocess.preprocess_train(b, s, 224)),
      'finetune@288': (lambda b, s: baseline_test(b, 288, flip_seed=s),
                       lambda b, s: preprocess.preprocess_finetune(b, s, 288)),
      'test@224': (lambda b, s: baseline_test(b, 224),
                   lambda b, s: preprocess.preprocess_test(b, 224)),
      'test@288': (lambda b, s: baseline_test(b, 288),
                   lambda b, s: preprocess.preprocess_test(b, 288)),
  }


def make_dataset(images, transform):
  """An endless parallel tf.data map of `transform` over the encoded images."""
  def load(index):
    return transform(tf.gather(images, index % tf.size(images, tf.int64)),
                     tf.stack([index, tf.constant(0, tf.int64)]))

  ds = tf.data.Dataset.range(2**62).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                        deterministic=False)
  return ds.batch(FLAGS.batch_size).prefetch(2)


def measure(dataset, seconds, warmup_seconds=0.5):
  """Images per wall-clock second and per CPU second, from a fresh iterator.

  CPU time (this process, all threads) is the steadier figure on a shared machine: other
  processes' load slows the wall clock, not the work done per image.
  """
  iterator = iter(dataset)
  start = time.perf_counter()
  while time.perf_counter() - start < warmup_seconds:  # Lets AUTOTUNE settle.
    next(iterator)
  start, cpu_start, count = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - start < seconds:
    count += next(iterator).shape[0]
  return count / (time.perf_counter() - start), count / (time.process_time() - cpu_start)


def decode_costs(images):
  """Whole-image decode at each DCT scale: images per CPU second, one image at a time."""
  costs = {}
  for ratio in preprocess.DCT_RATIOS:
    decode = lambda b, s, r=ratio: tf.cast(tf.shape(tf.io.decode_jpeg(b, channels=3, ratio=r)),
                                           tf.float32)
    costs[f'1/{ratio}'] = round(measure(make_dataset(images, decode), FLAGS.seconds)[1], 1)
  return costs


def dct_ratio_shares(shapes, sizes=(128, 160, 224), samples=4000) -> dict:
  """Per train@K: the share of RandomResizedCrops of `shapes` decoded at each DCT scale."""
  shapes = tf.constant([[h, w] for w, h in shapes], tf.int32)
  shares = {}
  for size in sizes:
    def ratio(i, size=size):
      h, w = tf.unstack(shapes[i % tf.shape(shapes, tf.int64)[0]])
      box = preprocess.sample_crop_torchvision(tf.stack([i, tf.constant(1, tf.int64)]), h, w)
      return preprocess.select_dct_ratio(box[2], box[3], size)
    index = np.array(list(tf.data.Dataset.range(samples).map(ratio).as_numpy_iterator()))
    shares[f'train@{size}'] = {f'1/{r}': round(float(np.mean(index == i)), 3)
                               for i, r in enumerate(preprocess.DCT_RATIOS)}
  return shares


def describe_machine() -> dict:
  return {'cpu_model': common.read_cpu_model(), 'cpu_count': os.cpu_count(),
          'cpu_affinity': len(os.sched_getaffinity(0)), 'tensorflow': tf.__version__,
          'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}


def summarize(pairs) -> dict:
  """Medians over rounds of (baseline, fast) (wall, CPU) rates, and their ratios."""
  (base_wall, base_cpu), (fast_wall, fast_cpu) = np.median(pairs, axis=0)
  return {
      'baseline_img_per_s': round(base_wall, 1), 'fast_img_per_s': round(fast_wall, 1),
      'ratio': round(fast_wall / base_wall, 3),
      'baseline_img_per_cpu_s': round(base_cpu, 1), 'fast_img_per_cpu_s': round(fast_cpu, 1),
      'cpu_ratio': round(fast_cpu / base_cpu, 3),
      'round_ratios': [round(f[0] / b[0], 2) for b, f in pairs],
      'round_cpu_ratios': [round(f[1] / b[1], 2) for b, f in pairs]}


def main(argv):
  del argv
  from fixres_jax.data import prepare  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  with tempfile.TemporaryDirectory() as tmp:
    folder = FLAGS.data_dir
    if folder is None:
      folder = tmp
      width, height = ((int(v) for v in FLAGS.image_size.split('x')) if FLAGS.image_size
                       else (None, None))
      write_photo_like_jpegs(folder, FLAGS.num_images, width, height)
    encoded = read_jpegs(folder)
  images = tf.constant(encoded)
  datasets = {name: [make_dataset(images, fn) for fn in pair]
              for name, pair in transforms().items()}
  # train@128 on downscaled copies: "baseline" is the fast path on the originals.
  fast_128 = transforms()['train@128'][1]
  copies = {}
  for cap in (int(c) for c in FLAGS.copy_short_sides):
    copy = [prepare.downscale_image(e, cap, FLAGS.copy_quality) for e in encoded]
    copies[cap] = round(np.mean([len(c) for c in copy]) / 1024, 1)
    datasets[f'train@128 copy s{cap}'] = [datasets['train@128'][1],
                                         make_dataset(tf.constant(copy), fast_128)]
  # What RandAugment adds to the train transform: "baseline" is the train@160 fast path.
  datasets[f'train@160 + RandAugment {RANDAUGMENT}'] = [
      datasets['train@160'][1],
      make_dataset(images, lambda b, s: preprocess.preprocess_train(b, s, 160,
                                                                    randaugment=RANDAUGMENT))]
  load_before = os.getloadavg()[0]
  runs = {name: [] for name in datasets}
  for _ in range(FLAGS.rounds):
    for name, pair in datasets.items():
      runs[name].append([measure(ds, FLAGS.seconds) for ds in pair])
  results = {name: summarize(pairs) for name, pairs in runs.items()}
  shapes = [Image.open(io.BytesIO(e)).size for e in encoded]
  report = {
      'kind': 'input_pipeline', 'machine': describe_machine(),
      'images': len(encoded), 'mean_jpeg_kib': round(np.mean([len(e) for e in encoded]) / 1024, 1),
      'median_size': [int(np.median([w for w, _ in shapes])), int(np.median([h for _, h in shapes]))],
      'mean_megapixels': round(float(np.mean([w * h for w, h in shapes])) / 1e6, 3),
      'mix': None if FLAGS.data_dir or FLAGS.image_size else [list(m) for m in IMAGENET_LIKE_MIX],
      'batch_size': FLAGS.batch_size, 'seconds_per_run': FLAGS.seconds, 'rounds': FLAGS.rounds,
      'copies': {'quality': FLAGS.copy_quality, 'mean_jpeg_kib': copies},
      'decode_img_per_cpu_s': decode_costs(images),
      'train_crops_by_dct_scale': dct_ratio_shares(shapes),
      'load_average_before_after': [round(load_before, 2), round(os.getloadavg()[0], 2)],
      'targets': {'train@128': 1.3, 'test@224': 1.35}, 'results': results}
  output.emit(report, FLAGS.out)


if __name__ == '__main__':
  define_flags()
  app.run(main)
