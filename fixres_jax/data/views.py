"""The input side of test-time augmentation (fixres_jax/tta.py): several views of an image.

Crops are torchvision's FiveCrop and TenCrop applied after the test transform's resize: the
four corner K x K windows of the resized image and its central one (the test view itself);
TenCrop adds the five crops of the mirrored resized image. Each crop is a frame of
preprocess.test_frame with its corner moved, so it is made exactly as the test view is (the
same decode, filter and crop mode, and on an axis where the resized image is narrower than K,
the test view's padding). Scales are the test transform at several K. Mirrors of whole views
('flip') are made on the device (tta.forward).

Views come centre first: [centre, top-left, top-right, bottom-left, bottom-right] and, for
ten crops, the same five of the mirrored image; the order of torchvision's list differs, not
its set, and an average does not depend on it.
"""

from typing import Callable, Sequence

import tensorflow as tf

from fixres_jax.data import preprocess

# (vertical, horizontal) placement of each crop, centre first.
PLACES = (('center', 'center'), ('top', 'left'), ('top', 'right'), ('bottom', 'left'),
          ('bottom', 'right'))
# Of the mirrored image's crops, which of PLACES each equals once mirrored back: its top-left
# crop is the original's top-right one flipped, and so on; its centre is the original's at the
# mirrored offset (a different window when the margin round((W - K) / 2) splits unevenly).
MIRRORED_PLACES = (None, 2, 1, 4, 3)


def corner_frame(sample_frame: Callable, size: int, vertical: str, horizontal: str,
                 mirrored: bool = False) -> Callable:
  """`sample_frame` (preprocess.test_geometry) with its window moved to a corner.

  Args:
    vertical, horizontal: 'top'/'bottom', 'left'/'right', or 'center' (the frame's own
      offset). On an axis where the resized image is narrower than `size`, the frame's own
      (padding) offset is kept.
    mirrored: the window of the mirrored resized image at that place, in the coordinates of
      the unmirrored one (flip the result to get the crop itself).
  """
  def place(side, own, where):
    if where == 'center':
      return own
    return tf.where(side >= size, 0.0 if where in ('top', 'left') else side - size, own)

  def frame(height, width):
    new_h, new_w, top, left = tf.unstack(sample_frame(height, width))
    top, left = place(new_h, top, vertical), place(new_w, left, horizontal)
    if mirrored:
      left = new_w - size - left
    return tf.stack([new_h, new_w, top, left])

  return frame


def crop_views(image_bytes, size: int, crops: int, crop_pct: float = 0.875,
               decode: str = 'exact', resize: str = 'shorter', interpolation: str = 'bilinear',
               crop_mode: str = 'center', resize_size: int = 0, margin: int = 32):
  """FiveCrop (crops=5) or TenCrop (10) of the test transform at K = size.

  Returns:
    float32 [crops, size, size, 3], RGB in [0, 255], centre first (module docstring).
  """
  if crops not in (5, 10):
    raise ValueError(f'crops={crops}: FiveCrop makes 5 views, TenCrop 10.')
  frame = preprocess.test_geometry(size, crop_pct, resize, crop_mode, resize_size, margin)

  def view(sample_frame):
    return preprocess.view_frame(image_bytes, sample_frame, size, crop_mode, resize, decode,
                                 interpolation)

  views = [view(corner_frame(frame, size, *where)) for where in PLACES]
  if crops == 10:
    mirrored_centre = view(corner_frame(frame, size, 'center', 'center', mirrored=True))
    views += [tf.image.flip_left_right(mirrored_centre if i is None else views[i])
              for i in MIRRORED_PLACES]
  return tf.stack(views)


def preprocess_views(image_bytes, sizes: Sequence[int], crops: int = 1, dtype=tf.float32,
                     **test_view):
  """The views of a test-time augmentation: for each K of `sizes`, the test view
  (preprocess.preprocess_test) or its `crops` crops (crop_views).

  Args:
    sizes: the K of each scale (tta.TestTimeAugment.sizes).
    crops: 1, 5 or 10.
    **test_view: preprocess_test's transform arguments (pipeline.test_view).

  Returns:
    `dtype`, ImageNet-normalised: per scale [K, K, 3] (crops=1) or [crops, K, K, 3]; a tuple
    over scales when there are several.
  """
  per_scale = []
  for size in sizes:
    if crops == 1:
      per_scale.append(preprocess.preprocess_test(image_bytes, size, dtype=dtype, **test_view))
    else:
      per_scale.append(preprocess.normalize_image(
          crop_views(image_bytes, size, crops, **test_view), dtype))
  return per_scale[0] if len(per_scale) == 1 else tuple(per_scale)
