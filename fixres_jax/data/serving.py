"""The test transform and the network in one TensorFlow SavedModel, for serving.

The graph preprocesses each image with preprocess.preprocess_test itself, at the stage's
recorded test transform (fixres_jax/transform_record.py), so a served model sees the pixels
its accuracy was measured on; no second copy of the transform exists to drift. The network is
the JAX function converted by jax2tf with native serialization (its StableHLO inside an
XlaCallModule op, lowered for every platform asked for), its variables tf.Variables beside it.

Signatures of the SavedModel:
  serving_default  images: tf.string [batch], encoded JPEG (or PNG, GIF, BMP) bytes
                   -> {'logits': float32 [batch, num_classes]}
  pixels           pixels: uint8 [batch, K, K, 3], RGB already at the test transform
                   -> {'logits': float32 [batch, num_classes]}
Any batch size: the batch dimension is symbolic in the converted function.

This is the only place that imports jax2tf: it imports TensorFlow, which only fixres_jax/data
may do.
"""

from typing import Callable, Sequence

import tensorflow as tf

from fixres_jax.data import pipeline
from fixres_jax.data import preprocess


def preprocess_kwargs(record: dict) -> dict:
  """preprocess_test's arguments for a transform record (transform_record.describe)."""
  return dict(size=record['image_size'], crop_pct=record['crop_pct'],
              dtype=tf.dtypes.as_dtype(record['dtype']), decode=record['decode'],
              resize=record['resize'], interpolation=record['interpolation'],
              crop_mode=record['crop_mode'], resize_size=record['resize_size'],
              margin=record['crop_margin'])


def preprocess_batch(image_bytes: tf.Tensor, record: dict) -> tf.Tensor:
  """[batch] encoded images -> the network's inputs [batch, K, K, 3], as the sweep feeds them."""
  kwargs = preprocess_kwargs(record)
  size = record['image_size']
  return tf.map_fn(lambda b: preprocess.preprocess_test(b, **kwargs), image_bytes,
                   fn_output_signature=tf.TensorSpec([size, size, 3], kwargs['dtype']))


def write_saved_model(directory: str, images_fn: Callable, pixels_fn: Callable,
                      variables: dict, record: dict, platforms: Sequence[str]) -> None:
  """Writes the SavedModel (see the module docstring).

  Args:
    directory: the SavedModel's directory.
    images_fn: (variables, normalised images [b, K, K, 3] of the record's dtype) -> logits.
    pixels_fn: (variables, uint8 pixels [b, K, K, 3]) -> logits.
    variables: {'params', 'batch_stats'} as NumPy arrays.
    record: the stage's test transform.
    platforms: what the network is lowered for, e.g. ('cpu', 'cuda', 'tpu').
  """
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top  (imports TF)
  pipeline.hide_gpus_from_tensorflow()  # the preprocessing runs on the CPU, as in tf.data
  size = record['image_size']

  def convert(fn):
    return jax2tf.convert(fn, polymorphic_shapes=[None, f'(b, {size}, {size}, 3)'],
                          with_gradient=False, native_serialization_platforms=tuple(platforms))

  module = tf.Module()
  module.weights = tf.nest.map_structure(lambda x: tf.Variable(x, trainable=False),
                                           variables)
  images_tf, pixels_tf = convert(images_fn), convert(pixels_fn)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='images')],
               autograph=False)
  def serve_images(images):
    return {'logits': images_tf(module.weights, preprocess_batch(images, record))}

  @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name='pixels')],
               autograph=False)
  def serve_pixels(pixels):
    return {'logits': pixels_tf(module.weights, pixels)}

  module.serve_images, module.serve_pixels = serve_images, serve_pixels
  tf.saved_model.save(module, directory,
                      signatures={'serving_default': serve_images, 'pixels': serve_pixels})
