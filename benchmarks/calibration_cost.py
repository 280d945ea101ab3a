"""What the calibrated loss costs the evaluation step; prints JSON.

COMMAND
  python -m benchmarks.calibration_cost --batch=32 --iters=10 \
      --out=docs/benchmarks/calibration_cost_cpu.json

Every evaluation sums, next to the plain loss, the NLL at each of evaluate.TEMPERATURES (one
log-softmax of [batch, classes] per temperature), so that `calibrated_loss` exists in every
metrics record. This times evaluate.eval_step as it is against the same step compiled with a
single temperature, side by side in one process, for one model, batch and K_test, with
synthetic in-memory batches; the steps alternate in a new random order every round
(benchmarks/steps.py's method), and the ratio is given as steps.ratio gives it. The default
is the case where the grid costs the most next to the network: ResNet-50 at 1,000 classes.
No TensorFlow.
"""

import contextlib

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import output
from benchmarks import steps
from fixres_jax import evaluate
from fixres_jax import parallel
from fixres_jax import train

# --model, --batch, --dtype, --num_classes, --warmup, --iters and --out are steps.py's.
flags.DEFINE_integer('resolution', 128, 'K_test of the evaluated batch.')
FLAGS = flags.FLAGS


@contextlib.contextmanager
def temperature_grid(values):
  """evaluate.TEMPERATURES replaced while a step is traced (the grid is read at trace time)."""
  saved = evaluate.TEMPERATURES
  evaluate.TEMPERATURES = np.asarray(values)
  try:
    yield
  finally:
    evaluate.TEMPERATURES = saved


def create_eval_steps(model, batch_size: int, resolution: int, num_classes: int) -> dict:
  """{'grid': the step as it is, 'one_temperature': the same with the grid at T = 1}."""
  mesh = jax.make_mesh((1,), (parallel.DATA_AXIS,), devices=jax.devices()[:1])
  variables = parallel.replicate(train.init_variables(model, resolution, seed=0), mesh)
  batch = parallel.make_global_batch(
      steps.create_batch(batch_size, resolution, num_classes), mesh)
  compiled = {}
  for name, grid in (('grid', evaluate.TEMPERATURES), ('one_temperature', [1.0])):
    with temperature_grid(grid):  # a new jit each time: nothing traced is shared
      compiled[name] = steps.Step(f'eval_{name}', resolution, batch_size,
                                  steps.jit_single_eval_step(model), steps.Carry(variables),
                                  batch, donates=False)
  return compiled


def benchmark() -> dict:
  model = steps.create_model(FLAGS.model, FLAGS.num_classes, FLAGS.dtype)
  timed = create_eval_steps(model, FLAGS.batch, FLAGS.resolution, FLAGS.num_classes)
  for step in timed.values():
    for _ in range(FLAGS.warmup):
      step.run()
  steps.time_rounds(list(timed.values()), FLAGS.iters)
  records = {name: step.record(None) for name, step in timed.items()}
  return {
      'kind': 'calibration_cost', 'machine': steps.describe_machine(),
      'config': {'model': FLAGS.model, 'batch': FLAGS.batch, 'dtype': FLAGS.dtype,
                 'resolution': FLAGS.resolution, 'num_classes': FLAGS.num_classes,
                 'temperatures': len(evaluate.TEMPERATURES), 'warmup': FLAGS.warmup,
                 'iters': FLAGS.iters},
      'records': records,
      'grid_over_one_temperature': steps.ratio(records['grid'], records['one_temperature']),
  }


def main(argv):
  del argv
  output.emit(benchmark(), FLAGS.out)


if __name__ == '__main__':
  app.run(main)
