"""Mixup and CutMix on the device, with timm's semantics (timm.data.Mixup, mode 'batch').

Per global batch: with probability `prob` the batch is mixed, else left as it is; when both
alphas are on, CutMix is chosen with probability `switch_prob`, else Mixup. Mixup blends each
image with the image at the mirrored batch position (x[::-1]) with lambda ~ Beta(mixup_alpha,
mixup_alpha); CutMix pastes a box of the mirrored image, lambda ~ Beta(cutmix_alpha,
cutmix_alpha) giving the box's sides (sqrt(1 - lambda) of the image's, centred uniformly,
clipped to the image), and lambda is then corrected to the area actually kept. The targets are
lambda y + (1 - lambda) y[::-1], with y the label-smoothed one-hot labels.

Randomness comes from a key folded with the step, so a resumed run mixes its batches exactly
as the uninterrupted one did. The batch is the global one (jit over the mesh), so the mix is
the same on any number of devices.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fixres_jax import losses


@dataclasses.dataclass(frozen=True)
class MixConfig:
  """timm's Mixup arguments (mixup_alpha, cutmix_alpha, prob, switch_prob); the targets'
  label smoothing is the objective's."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5

  @property
  def enabled(self) -> bool:
    return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def sample_params(key: jax.Array, cfg: MixConfig):
  """(lambda, use_cutmix) for one batch, as timm's Mixup._params_per_batch draws them."""
  apply_key, switch_key, beta_key = jax.random.split(key, 3)
  apply = jax.random.uniform(apply_key) < cfg.prob
  if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < cfg.switch_prob
  else:
    use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
  # Beta(alpha, alpha) of the chosen method (an unused alpha of 0 is replaced, never drawn).
  alpha = jnp.where(use_cutmix, cfg.cutmix_alpha or 1.0, cfg.mixup_alpha or 1.0)
  lam = jax.random.beta(beta_key, alpha, alpha)
  return jnp.where(apply, lam, 1.0), use_cutmix & apply


def cutmix_box(key: jax.Array, height: int, width: int, lam: jax.Array):
  """timm's rand_bbox: (top, bottom, left, right), the box's sides sqrt(1 - lam) of the
  image's (truncated to integers), its centre uniform over the image, clipped to it."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = (height * ratio).astype(jnp.int32)
  cut_w = (width * ratio).astype(jnp.int32)
  cy_key, cx_key = jax.random.split(key)
  cy = jax.random.randint(cy_key, (), 0, height)
  cx = jax.random.randint(cx_key, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def mix_images(key: jax.Array, images: jax.Array, cfg: MixConfig):
  """Mixed images [B, H, W, C] of one global batch, and the lambda of their targets."""
  params_key, box_key = jax.random.split(key)
  lam, use_cutmix = sample_params(params_key, cfg)
  _, height, width, _ = images.shape
  top, bottom, left, right = cutmix_box(box_key, height, width, lam)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  flipped = images[::-1]
  cut = jnp.where(in_box[None, :, :, None], flipped, images)
  blended = images * lam.astype(images.dtype) + flipped * (1.0 - lam).astype(images.dtype)
  mixed = jnp.where(use_cutmix, cut, blended)
  # CutMix's lambda is the fraction of the image it kept (timm's correct_lam).
  kept = 1.0 - (bottom - top) * (right - left) / (height * width)
  return mixed, jnp.where(use_cutmix, kept, lam)


def mix_targets(labels: jax.Array, num_classes: int, lam: jax.Array, smoothing: float
                ) -> jax.Array:
  """lam y + (1 - lam) y[::-1], y the smoothed one-hot labels (timm's mixup_target)."""
  targets = losses.smooth_one_hot(labels, num_classes, smoothing)
  return lam * targets + (1.0 - lam) * targets[::-1]
