"""Losses on logits and integer labels."""

import jax
import optax


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """One-hot targets, smoothed: off = smoothing / C, on = 1 - smoothing + off (timm's and
  optax's definition)."""
  targets = jax.nn.one_hot(labels, num_classes)
  return optax.smooth_labels(targets, smoothing) if smoothing else targets


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  """Softmax cross-entropy per example, optionally against smoothed one-hot targets."""
  return optax.softmax_cross_entropy(
      logits, smooth_one_hot(labels, logits.shape[-1], label_smoothing))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example against soft (e.g. mixed) targets."""
  return optax.softmax_cross_entropy(logits, targets)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array, threshold: float = 0.0
                         ) -> jax.Array:
  """timm's BinaryCrossEntropy per example: sigmoid cross-entropy averaged over classes
  (its mean over the batch is timm's mean over every logit); with threshold > 0, targets
  above it become 1 and the others 0 (timm's target_threshold)."""
  if threshold:
    targets = (targets > threshold).astype(targets.dtype)
  return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
