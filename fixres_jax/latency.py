"""Latency at each test resolution: the cost side of choosing K_test.

A higher K_test buys accuracy with about (K_test / K_train)^2 the FLOPs; what a deployment pays
is time, and which K is worth it depends on the device. time_forward measures it where the run
is: the jitted inference forward pass (the one export.py exports) on one device at a stated
batch size, on random images, compiled and warmed up first, then the median of REPEATS calls.

frontier() joins the sweep's accuracies to those timings: per model and K_test, top-1 and
milliseconds per image, and whether the point is on the model's Pareto front (no other K_test
of that model is at least as fast and as accurate, and better in one). within_budget() keeps
the K_test candidates under a latency budget (finetune.auto_max_ms_per_image).

Outputs of the sweep (WORKDIR/): frontier.json ({'device', 'stack', 'batch_size', 'points'})
and frontier.png (top-1 against ms per image, one curve per model, each point labelled K).
"""

import os
import platform
import time
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

WARMUP_CALLS = 2  # the first call compiles; the second settles caches and thread pools
REPEATS = 5


def time_forward(model, variables: dict, image_size: int, batch_size: int,
                 dtype: str = 'float32', repeats: int = REPEATS) -> dict:
  """The warm latency of the inference forward pass at image_size, on one device.

  Args:
    model: the flax module; variables: its {'params', 'batch_stats'} (any placement).
    batch_size: images per call.
    dtype: the images' dtype, as the input pipeline delivers them (config.data.dtype).

  Returns:
    {'test_res', 'batch_size', 'ms_per_image', 'images_per_second', 'ms_per_batch',
     'repeats'}: the median call.
  """
  device = jax.local_devices()[0]
  # Through the host: arrays placed on the run's mesh keep its sharding in their type.
  variables = jax.device_put(jax.device_get(variables), device)
  images = jax.device_put(jax.random.normal(
      jax.random.key(0), (batch_size, image_size, image_size, 3)).astype(dtype), device)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  for _ in range(WARMUP_CALLS):
    forward(variables, images).block_until_ready()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(variables, images).block_until_ready()
    seconds.append(time.perf_counter() - start)
  median = float(np.median(seconds))
  return {'test_res': int(image_size), 'batch_size': batch_size,
          'ms_per_image': 1000 * median / batch_size, 'images_per_second': batch_size / median,
          'ms_per_batch': 1000 * median, 'repeats': repeats}


def describe_stack() -> dict:
  """The device and software the timings hold for; on a CPU its name, its cores and how busy
  it was (other processes on the same cores slow every call)."""
  device = jax.local_devices()[0]
  described = {'device': f'{device.platform}: {device.device_kind}',
               'stack': f'jax {jax.__version__}, jaxlib {jax.lib.__version__}'}
  if device.platform == 'cpu':
    described['device'] = f'cpu: {cpu_model()}, {os.cpu_count()} cores'
    described['load_average_1min'] = os.getloadavg()[0]
  return described


def cpu_model() -> str:
  """The processor's name from /proc/cpuinfo (Linux), else what platform knows."""
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  except OSError:
    names = []
  return names[0] if names else platform.processor() or 'unknown processor'


def frontier(records: List[dict], timings: Dict[int, dict]) -> List[dict]:
  """The sweep's records with their K_test's latency, and each model's Pareto front marked.

  Args:
    records: sweep.json's ({'model', 'test_res', 'top1', ...}).
    timings: {K_test: time_forward's result}; every model at a K_test costs the same forward
      pass (the parametric map after pooling is negligible).

  Returns:
    [{'model', 'test_res', 'top1', 'ms_per_image', 'images_per_second', 'pareto'}].
  """
  points = [{'model': r['model'], 'test_res': r['test_res'], 'top1': r['top1'],
             'ms_per_image': timings[r['test_res']]['ms_per_image'],
             'images_per_second': timings[r['test_res']]['images_per_second']}
            for r in records if r['test_res'] in timings]
  for point in points:
    rivals = [p for p in points if p['model'] == point['model'] and p is not point]
    point['pareto'] = not any(
        p['ms_per_image'] <= point['ms_per_image'] and p['top1'] >= point['top1']
        and (p['ms_per_image'] < point['ms_per_image'] or p['top1'] > point['top1'])
        for p in rivals)
  return points


def within_budget(records: List[dict], max_ms_per_image: float) -> List[dict]:
  """The records whose 'ms_per_image' is at most the budget (all of them when it is 0)."""
  if not max_ms_per_image:
    return list(records)
  return [r for r in records if r['ms_per_image'] <= max_ms_per_image]


def plot_frontier(points: List[dict], batch_size: int, device: str):
  """Top-1 against milliseconds per image, one curve per model, each point labelled K_test."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(6.4, 4.2), dpi=110)
  ax = fig.add_subplot()
  for name in dict.fromkeys(p['model'] for p in points):
    mine = sorted((p for p in points if p['model'] == name), key=lambda p: p['test_res'])
    ax.plot([p['ms_per_image'] for p in mine], [100 * p['top1'] for p in mine], marker='o',
            markersize=4, label=name)
    for p in mine:
      ax.annotate(str(p['test_res']), (p['ms_per_image'], 100 * p['top1']), fontsize=7,
                  xytext=(3, 3), textcoords='offset points')
  ax.set_xlabel(f'ms per image (batch {batch_size}, {device})')
  ax.set_ylabel('top-1 (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  return fig
