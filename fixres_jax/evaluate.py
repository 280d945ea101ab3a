"""Evaluation, one path for every stage and tool: the training stage's validation, the
test-resolution sweep, the 'auto' K_test selection and the parametric fits.

One jitted step (eval_step, over several models at once: jit_eval_step) computes masked sums
over a global batch: top-1/top-5, loss (the NLL), the NLL at every temperature of a fixed grid
(the calibrated loss: its least value), calibration bins (ECE) and statistics of
the pooled features (after the final ReLU and global average pooling): exact sums for their
mean and standard deviation and a histogram of the nonzero values on fixed log-spaced bins
(HISTOGRAM_EDGES), from which come quantiles and the parametric fits.
Sums, not means, so that padded examples (mask 0) count for nothing and partial results add
up exactly. Features never leave the device. A Scoring says how labels score (evalsets.py's
label rules: one label, ImageNet-ReaL's label sets, a class subset as ImageNet-A/R's).
"""

import dataclasses
import functools
from typing import Dict, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from fixres_jax import evalsets
from fixres_jax import losses
from fixres_jax import parallel
from fixres_jax import parametric
from fixres_jax import preemption
from fixres_jax import tta as tta_lib

# Pooled features are >= 0; exact zeros are counted apart. 32 bins per decade over 1e-4..1e3
# (a 7.5% relative resolution for quantiles), plus a bin below and one above.
HISTOGRAM_EDGES = np.geomspace(1e-4, 1e3, 7 * 32 + 1)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# The logits divided by each, the NLL summed: its least value over the grid is the loss at
# the best single temperature (temperature scaling, Guo et al. 2017), which ranks networks by
# what they know rather than by how confident they are (Ashukha et al. 2020). Steps of 9 %:
# the NLL is flat around its least value, so the grid's minimum is within a fraction of a
# percent of it.
TEMPERATURES = np.geomspace(0.25, 4.0, 33)


@dataclasses.dataclass(frozen=True)
class Scoring:
  """How an evaluation set's labels score (hashable: a static argument of the jitted step).

  Attributes:
    rule: one of evalsets.LABEL_RULES. 'single': batch['label'] is int [B]; 'real':
      batch['label'] is a multi-hot float [B, classes] (images without labels have mask 0);
      'subset': batch['label'] is int [B], a class of `classes`.
    classes: 'subset': the class indices the logits are restricted to.
  """
  rule: str = 'single'
  classes: Tuple[int, ...] = ()


SINGLE = Scoring()


def image_nll(logits: jax.Array, labels: jax.Array, mask: jax.Array,
              scoring: Scoring) -> jax.Array:
  """Each image's negative log-likelihood of its label ([B]); under 'real', of its label
  set (an image without labels, mask 0, gives 0)."""
  if scoring.rule == 'real':
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    in_set = jnp.where(labels > 0, log_probs, -jnp.inf)
    return -jnp.where(mask > 0, jax.nn.logsumexp(in_set, axis=-1), 0.0)
  return losses.cross_entropy(logits, labels)


def metric_sums(logits: jax.Array, batch: dict, scoring: Scoring = SINGLE) -> dict:
  """Masked sums of correct top-1/top-5, loss (the NLL), calibration bins and the count.

  The calibration bins are ECE's: evalsets.ECE_BINS equal-width bins of the confidence (the
  top softmax probability), bin b holding (b / n, (b + 1) / n]; per bin the number of images,
  their summed confidence and their correct top-1 predictions.
  """
  mask, labels = batch['mask'], batch['label']
  if scoring.rule == 'subset':  # scored among the set's classes only, as timm's valid_labels
    classes = jnp.asarray(scoring.classes, jnp.int32)
    logits = logits[:, classes]
    # A label's position among the classes; -1 (never a prediction) for one outside them.
    matches = labels[:, None] == classes[None, :]
    labels = jnp.where(jnp.any(matches, -1), jnp.argmax(matches, axis=-1), -1)
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  predicted = jnp.argmax(logits, -1)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  if scoring.rule == 'real':  # correct when a prediction is any of the image's labels
    hits = jnp.take_along_axis(labels, top5, axis=-1) > 0
    correct1, correct5 = hits[:, 0], jnp.any(hits, axis=-1)
  else:
    correct1 = predicted == labels
    correct5 = jnp.any(top5 == labels[:, None], axis=-1)
  nll = lambda t: jnp.sum(image_nll(logits / t, labels, mask, scoring) * mask)
  confidence = jnp.exp(jnp.max(log_probs, axis=-1))
  bins = jnp.clip(jnp.ceil(confidence * evalsets.ECE_BINS).astype(jnp.int32) - 1, 0,
                  evalsets.ECE_BINS - 1)
  in_bin = jax.nn.one_hot(bins, evalsets.ECE_BINS) * mask[:, None]
  return {
      'correct1': jnp.sum(correct1 * mask),
      'correct5': jnp.sum(correct5 * mask),
      'loss': nll(1.0),
      'loss_by_temperature': jnp.stack([nll(float(t)) for t in TEMPERATURES]),
      'count': jnp.sum(mask),
      'bin_count': jnp.sum(in_bin, axis=0),
      # Sums over the batch, not matmuls: the batch axis is sharded.
      'bin_confidence': jnp.sum(confidence[:, None] * in_bin, axis=0),
      'bin_correct': jnp.sum(correct1[:, None] * in_bin, axis=0),
  }


def expected_calibration_error(bin_count, bin_confidence, bin_correct) -> float:
  """ECE: the count-weighted mean over bins of |accuracy - mean confidence|."""
  count = np.asarray(bin_count, np.float64)
  gap = np.abs(np.asarray(bin_correct, np.float64) - np.asarray(bin_confidence, np.float64))
  return float(gap.sum() / max(count.sum(), 1.0))


def feature_sums(features: jax.Array, mask: jax.Array) -> dict:
  """Masked sums of the pooled features: the fraction of exact zeros per image, count, sum,
  sum of squares, histogram of nonzeros.

  The histogram has np.searchsorted's bins over [0, HISTOGRAM_EDGES..., inf): bin i holds
  edges[i-1] < f <= edges[i]. It is computed as differences of the counts above each edge
  (a fused compare-and-sum, no scatter, so it shards like the rest of the step).
  """
  counts = jnp.broadcast_to(mask[:, None], features.shape).astype(jnp.int32)
  edges = jnp.asarray(HISTOGRAM_EDGES, features.dtype)
  above = jnp.concatenate([
      jnp.sum(counts * (features > 0))[None],
      jnp.sum(counts[..., None] * (features[..., None] > edges), axis=(0, 1))])
  histogram = above - jnp.concatenate([above[1:], jnp.zeros(1, above.dtype)])
  weights = counts.astype(features.dtype)
  return {'zero_fraction': jnp.sum(jnp.mean(features == 0, axis=-1) * mask),
          'feature_count': jnp.sum(counts), 'feature_sum': jnp.sum(features * weights),
          'feature_sq_sum': jnp.sum(features**2 * weights), 'histogram': histogram}


def eval_step(model, variables: dict, batch: dict, adaptation=None,
              scoring: Scoring = SINGLE, tta: tta_lib.TestTimeAugment = tta_lib.PLAIN) -> dict:
  """Metric and feature sums over a global batch, in inference mode.

  Args:
    model: the flax module (see models/__init__.py for what it provides).
    variables: {'params', 'batch_stats'}.
    batch: {'image', 'label', 'mask'}; with test-time augmentation, 'image' holds the views
      its pipeline makes (tta.view_groups).
    adaptation: (a, b) of parametric.adapt_features, or None. One forward pass serves the
      model and its parametric adaptation: the head is applied to the pooled features and
      to their adapted version.
    scoring: how the labels score (Scoring).
    tta: test-time augmentation (tta.py, resolved by tta.for_model): the logits are the
      average over its views; the feature sums are those of its first view.

  Returns:
    {'plain': sums}, plus {'adapted': sums} with an adaptation.
  """
  out = tta_lib.forward(model, variables, batch['image'], tta, adaptation)
  result = {'plain': {**metric_sums(out['logits'], batch, scoring),
                      **feature_sums(out['features'], batch['mask'])}}
  if adaptation is not None:
    result['adapted'] = {**metric_sums(out['adapted_logits'], batch, scoring),
                         **feature_sums(out['adapted_features'], batch['mask'])}
  return result


@functools.cache
def jit_eval_step(model, scoring: Scoring = SINGLE,
                  tta: tta_lib.TestTimeAugment = tta_lib.PLAIN):
  """eval_step over several models at once, with the model, scoring and test-time augmentation
  bound, jitted (traced once per resolution, batch shape and set of differing variables).

  Its arguments are split_variables's: (the variables every model shares, each model's own
  variables and adaptation, batch) -> each model's sums, in order. A model that differs
  from another only in a few variables (FixRes fine-tuning changes the last BatchNorm's
  statistics and the classifier) shares the rest of its forward pass: XLA computes the
  identical operations on identical inputs once.

  One jitted function per (model, scoring, tta) in the process: the training stage's
  evaluation, the 'auto' choice and the parametric fits share their traces and compilations.
  """
  bound = {}  # the default's call is eval_step(model, variables, batch, adaptation)
  if scoring != SINGLE:
    bound['scoring'] = scoring
  if tta != tta_lib.PLAIN:
    bound['tta'] = tta

  def eval_steps(shared: dict, own: tuple, batch: dict) -> tuple:
    return tuple(eval_step(model, traverse_util.unflatten_dict({**shared, **variables}),
                           batch, adaptation, **bound)
                 for variables, adaptation in own)

  return jax.jit(eval_steps)


def split_variables(entries: Dict[str, tuple]) -> Tuple[dict, tuple]:
  """(variables shared by every model, ((its own variables, adaptation) per model, in order)).

  Variables are flat ({path: array}); a leaf is shared when every model has it, the same
  array or an equal one.
  """
  flats = [traverse_util.flatten_dict(variables) for variables, _ in entries.values()]
  first = flats[0]
  shared = {path: leaf for path, leaf in first.items()
            if all(path in flat and same_leaf(flat[path], leaf) for flat in flats[1:])}
  own = tuple(({path: leaf for path, leaf in flat.items() if path not in shared}, adaptation)
              for flat, (_, adaptation) in zip(flats, entries.values()))
  return shared, own


def same_leaf(a, b) -> bool:
  """Whether two variables hold the same values (replicated arrays: compared on one device)."""
  if a is b:
    return True
  if np.shape(a) != np.shape(b) or a.dtype != b.dtype:
    return False
  return np.array_equal(local_value(a), local_value(b))


def local_value(leaf) -> np.ndarray:
  return np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)


def evaluate(step_fn, entries: Dict[str, tuple], batches, mesh) -> Dict[str, dict]:
  """One pass over `batches`, each batch through every model (one call of step_fn).

  Args:
    step_fn: jit_eval_step(model).
    entries: {name: (variables on the mesh, adaptation or None)}; models of one architecture.
    batches: per-process batches (pipeline.config_eval_batches).

  Returns:
    {name: summed outputs of eval_step ({'plain'[, 'adapted']}), as NumPy}.

  Raises:
    preemption.Stopped: a stop was requested before the pass (a pass is never cut short:
      its results are what the caller keeps).
  """
  preemption.check_stop('an evaluation pass')
  shared, own = split_variables(entries)
  totals = None
  for batch in parallel.prefetch_to_devices(batches, mesh):
    sums = step_fn(shared, own, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {name: jax.device_get(t) for name, t in zip(entries, totals or ())}


def evaluate_model(step_fn, variables: dict, batches, mesh, histogram: bool = False) -> dict:
  """The metrics (summarize's first record) of one model over `batches`; with `histogram`,
  also the pooled features' histogram (feature_sums), under 'histogram'."""
  # The identity adaptation: the program of the parametric fits and of the training stage's
  # evaluation, compiled once for all three.
  totals = evaluate(step_fn, {'model': (variables, parametric.IDENTITY)}, batches,
                    mesh)['model']['plain']
  metrics = summarize(totals)[0]
  return {**metrics, 'histogram': totals['histogram']} if histogram else metrics


def summarize(totals: dict) -> tuple:
  """(metrics record, feature statistics record) from one model's summed eval_step outputs."""
  count = float(totals['count'])
  metrics = {'top1': float(totals['correct1']) / count,
             'top5': float(totals['correct5']) / count,
             'loss': float(totals['loss']) / count,
             'zero_fraction': float(totals['zero_fraction']) / count,
             'num_images': int(round(count)),
             'nll': float(totals['loss']) / count,  # 'loss' under the name calibration uses
             **calibrated_loss(totals['loss_by_temperature'], count),
             'ece': expected_calibration_error(totals['bin_count'], totals['bin_confidence'],
                                               totals['bin_correct'])}
  n = float(totals['feature_count'])
  counts = np.asarray(totals['histogram'], np.int64)
  zeros = n - counts.sum()
  mean = float(totals['feature_sum']) / n
  values = parametric.histogram_quantiles(HISTOGRAM_EDGES, counts, QUANTILES, zeros=zeros)
  feature_stats = {
      'num_images': metrics['num_images'], 'num_values': n, 'zero_fraction': zeros / n,
      'mean': mean,
      'std': float(np.sqrt(max(float(totals['feature_sq_sum']) / n - mean**2, 0.0))),
      'quantiles': {f'q{round(100 * q):02d}': float(v) for q, v in zip(QUANTILES, values)},
      'counts': counts.tolist()}
  return metrics, feature_stats


def calibrated_loss(loss_by_temperature, count: float) -> dict:
  """{'calibrated_loss': the least mean NLL over TEMPERATURES, 'temperature': where}."""
  losses_ = np.asarray(loss_by_temperature, np.float64) / count
  best = int(np.argmin(losses_))
  return {'calibrated_loss': float(losses_[best]), 'temperature': float(TEMPERATURES[best])}


def fit_pooled_features(step_fn, variables: dict, batches, mesh) -> parametric.GevFit:
  """The Fréchet (GEV, shape 0.3) fit of the nonzero pooled features over `batches`.

  The identity adaptation makes this evaluate_model's program.
  """
  totals = evaluate(step_fn, {'fit': (variables, parametric.IDENTITY)}, batches, mesh)
  return fit_histogram(totals['fit']['plain']['histogram'])


def fit_histogram(histogram: np.ndarray) -> parametric.GevFit:
  """The Fréchet (GEV, shape 0.3) fit of the nonzero pooled features' histogram (feature_sums,
  over HISTOGRAM_EDGES)."""
  return parametric.fit_gev(HISTOGRAM_EDGES, histogram)
