"""Exact against fast decoding: PSNR against torchvision's test transform on real photos, and
speed; the other resampling filters against PIL's; writes docs/DECODE.md and
docs/benchmarks/decode.json.

  python -m benchmarks.decode --out=docs

For every photo and K_test, the reference is what FixRes evaluated on: PIL decode, then
torchvision's Resize(int(K / 0.875)) + CenterCrop(K) (PIL's antialiased bilinear). Ours is
preprocess.preprocess_test with decode='exact' (full decode, then the antialiased resize)
and decode='fast' (only the window, at 1/2-1/8 DCT scale when the crop is that much larger
than K). Speed: images/s of each path in one tf.data pipeline, measured alternately in the
same process, so the ratio holds on a loaded machine even when the absolute numbers do not.
The filters: the same comparison for data.test_interpolation 'bicubic' and 'lanczos', the
reference being torchvision's Resize(interpolation=BICUBIC / LANCZOS) on the PIL image (PIL's
filters), as timm evaluates its weights.

The photos: matplotlib's sample grace_hopper.jpg (a real photo, 512 x 600) as shipped; its
transpose, re-encoded at quality 95 (a landscape photo); and a 2x upscale re-encoded at
quality 90 (a 1024 x 1200 photo, as large as many ImageNet images, where the fast path
decodes at 1/4 scale at small K).
"""

import io
import json
import time

from absl import app
from absl import flags
from etils import epath
import matplotlib.cbook
import numpy as np
from PIL import Image

from studies import common

RESOLUTIONS = (64, 96, 128, 160, 224, 288, 320, 384, 448)
FILTERS = ('bicubic', 'lanczos')  # beside bilinear, the main table's


def encode(image: Image.Image, quality: int) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', quality=quality)
  return buffer.getvalue()


def real_photos() -> dict:
  """{name: JPEG bytes} of real photographs shipped with installed packages."""
  path = matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
  original = epath.Path(path).read_bytes()
  image = Image.open(io.BytesIO(original)).convert('RGB')
  return {
      'grace_hopper (512x600, as shipped)': original,
      'grace_hopper transposed (600x512, q95)': encode(image.transpose(Image.TRANSPOSE), 95),
      'grace_hopper 2x (1024x1200, q90)': encode(
          image.resize((2 * image.width, 2 * image.height), Image.BICUBIC), 90),
  }


def torchvision_test_transform(data: bytes, size: int, crop_pct: float = 0.875,
                               interpolation: str = 'bilinear') -> np.ndarray:
  """PIL decode + torchvision Resize(int(size / crop_pct)) + CenterCrop(size), [0, 255]."""
  from torchvision import transforms  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(data)).convert('RGB')
  mode = transforms.InterpolationMode(interpolation)
  transform = transforms.Compose([transforms.Resize(int(size / crop_pct), interpolation=mode),
                                  transforms.CenterCrop(size)])
  return np.asarray(transform(image), np.float64)


def ours(data: bytes, size: int, decode: str, interpolation: str = 'bilinear') -> np.ndarray:
  from fixres_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  image = preprocess.preprocess_test(data, size, decode=decode, interpolation=interpolation)
  return denormalize(image.numpy())


def denormalize(image: np.ndarray) -> np.ndarray:
  """An ImageNet-normalised image back to [0, 255], float64."""
  from fixres_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  image = image.astype(np.float64)
  return image * np.array(preprocess.STDDEV_RGB) + np.array(preprocess.MEAN_RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """Peak signal-to-noise ratio in dB on the 0-255 scale (the images rounded as PIL's are)."""
  mse = np.mean((np.clip(np.round(a), 0, 255) - b) ** 2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def measure_psnr(photos: dict, resolutions=RESOLUTIONS) -> list:
  """[{photo, test_res, exact_db, fast_db, fast_max_error}] for every photo and K."""
  rows = []
  for name, data in photos.items():
    for size in resolutions:
      reference = torchvision_test_transform(data, size)
      fast = ours(data, size, 'fast')
      rows.append({'photo': name, 'test_res': size,
                   'exact_db': psnr(ours(data, size, 'exact'), reference),
                   'fast_db': psnr(fast, reference),
                   'fast_max_error': float(np.abs(np.round(fast) - reference).max())})
  return rows


def measure_filters(photos: dict, resolutions=RESOLUTIONS, filters=FILTERS) -> list:
  """[{photo, interpolation, test_res, exact_db, fast_db}]: each filter against PIL's."""
  rows = []
  for name, data in photos.items():
    for interpolation in filters:
      for size in resolutions:
        reference = torchvision_test_transform(data, size, interpolation=interpolation)
        rows.append({'photo': name, 'interpolation': interpolation, 'test_res': size,
                     **{f'{decode}_db': psnr(ours(data, size, decode, interpolation), reference)
                        for decode in ('exact', 'fast')}})
  return rows


def measure_speed(photos: dict, size: int, images: int = 300, rounds: int = 3) -> dict:
  """images/s of the test transform at `size`, exact and fast, alternated over rounds."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  stream = tf.data.Dataset.from_tensor_slices(list(photos.values())).repeat()

  def rate(decode):
    ds = stream.take(images).map(lambda b: preprocess.preprocess_test(b, size, decode=decode),
                                 num_parallel_calls=tf.data.AUTOTUNE).batch(50)
    start = time.perf_counter()
    for _ in ds:
      pass
    return images / (time.perf_counter() - start)

  rates = {'exact': [], 'fast': []}
  for _ in range(rounds):
    for decode in rates:
      rates[decode].append(rate(decode))
  best = {k: max(v) for k, v in rates.items()}
  return {'test_res': size, 'exact_images_per_s': best['exact'],
          'fast_images_per_s': best['fast'], 'fast_over_exact': best['fast'] / best['exact']}


def format_report(rows: list, speeds: list, filter_rows: list) -> str:
  lines = ['# Exact against fast decoding at test time', '',
           'Generated by `python -m benchmarks.decode` (do not edit). PSNR (dB) of the test '
           "transform against torchvision's Resize(int(K/0.875)) + CenterCrop(K) on the PIL "
           'decode of real photos (benchmarks/decode.py says which); higher is closer, '
           'identical rounding alone would give about 58 dB.', '',
           common.format_table(
               ['photo', 'K_test', 'exact (dB)', 'fast (dB)', 'fast: max error (0-255)'],
               [[r['photo'], r['test_res'], f"{r['exact_db']:.1f}", f"{r['fast_db']:.1f}",
                 f"{r['fast_max_error']:.0f}"] for r in rows])]
  lines += ['', f"Lowest exact: {min(r['exact_db'] for r in rows):.1f} dB; lowest fast: "
            f"{min(r['fast_db'] for r in rows):.1f} dB.", '',
            '## Other resampling filters', '',
            'config.data.test_interpolation against torchvision\'s Resize(interpolation=...) '
            '+ CenterCrop on the same PIL images (PIL\'s antialiased filters: bicubic is Keys\' '
            'cubic with a = -0.5, lanczos has 3 lobes), lowest PSNR (dB) over the photos above:',
            '',
            common.format_table(
                ['filter', 'K_test', 'exact (dB)', 'fast (dB)'],
                [[f, k, f"{min(r['exact_db'] for r in same):.1f}",
                  f"{min(r['fast_db'] for r in same):.1f}"]
                 for f in dict.fromkeys(r['interpolation'] for r in filter_rows)
                 for k in dict.fromkeys(r['test_res'] for r in filter_rows)
                 for same in [[r for r in filter_rows
                               if r['interpolation'] == f and r['test_res'] == k]]]),
            '', 'Lowest exact: ' + '; '.join(
                f"{f} {min(r['exact_db'] for r in filter_rows if r['interpolation'] == f):.1f} dB"
                for f in dict.fromkeys(r['interpolation'] for r in filter_rows)) + '.', '',
            'Speed of the test transform (images/s in one tf.data pipeline, best of 3 '
            'alternated rounds; a shared, loaded 2-core machine: the ratio is the number to '
            'read):', '',
            common.format_table(
                ['K_test', 'exact', 'fast', 'fast / exact'],
                [[s['test_res'], f"{s['exact_images_per_s']:.0f}", f"{s['fast_images_per_s']:.0f}",
                  f"{s['fast_over_exact']:.2f}x"] for s in speeds])]
  return '\n'.join(lines) + '\n'


README_MARKERS = common.readme_markers('decoding', 'benchmarks.decode')


def readme_block(result: dict) -> str:
  """README's decoding figures from decode.json: the lowest PSNR of each path and filter, the
  fast path's largest error and its speed over the exact path's."""
  rows, filters, speeds = result['psnr'], result['filters'], result['speed']
  resolutions = sorted({r['test_res'] for r in rows + filters})
  lowest = {f: min(r['exact_db'] for r in filters if r['interpolation'] == f)
            for f in dict.fromkeys(r['interpolation'] for r in filters)}
  ratios = [s['fast_over_exact'] for s in speeds]
  timed = sorted(s['test_res'] for s in speeds)
  return (
      'Measured by `python -m benchmarks.decode` on real photos '
      '([docs/DECODE.md](docs/DECODE.md)), against torchvision\'s Resize + CenterCrop on the '
      f'PIL image at every K_test in {resolutions[0]}-{resolutions[-1]}: the exact path is '
      f"{min(r['exact_db'] for r in rows):.1f} dB or closer with the bilinear filter ("
      + ', '.join(f'{f} {db:.1f}' for f, db in lowest.items())
      + "), the fast path as far as "
      f"{min(r['fast_db'] for r in rows):.1f} dB (errors up to "
      f"{max(r['fast_max_error'] for r in rows):.0f}/255 where it decodes at a reduced DCT "
      f'scale), at {min(ratios):.2f}x-{max(ratios):.2f}x the exact path\'s speed in that run '
      f'(K_test {timed[0]}-{timed[-1]}, on a shared machine, so the ratio is noisy; the input '
      'pipeline benchmark\'s fast/full decode ratios are under Performance).')


FLAGS = flags.FLAGS


def main(argv):
  del argv
  photos = real_photos()
  rows = measure_psnr(photos)
  filter_rows = measure_filters(photos)
  speeds = [measure_speed(photos, size) for size in (128, 224, 288)]
  out = epath.Path(FLAGS.out)
  (out / 'benchmarks').mkdir(parents=True, exist_ok=True)
  (out / 'benchmarks' / 'decode.json').write_text(
      json.dumps({'psnr': rows, 'filters': filter_rows, 'speed': speeds}, indent=2))
  (out / 'DECODE.md').write_text(format_report(rows, speeds, filter_rows))
  if FLAGS.readme:
    common.write_readme_block(FLAGS.readme, README_MARKERS, readme_block(
        {'psnr': rows, 'filters': filter_rows, 'speed': speeds}))


if __name__ == '__main__':
  # Defined only when run: tests import this module beside other commands' flags.
  flags.DEFINE_string('out', 'docs', 'Where DECODE.md and benchmarks/decode.json go.')
  flags.DEFINE_string('readme', 'README.md', "README whose decoding block is rewritten ('': "
                      'none).')
  app.run(main)
