"""Losses on logits and integer labels."""

import jax
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  """Softmax cross-entropy per example, optionally against smoothed one-hot targets."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  targets = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
  return optax.softmax_cross_entropy(logits, targets)
