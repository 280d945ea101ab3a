"""The embedded dataset, fixres_synthetic; importing this package registers it with tfds."""

from fixres_jax.data.synthetic.builder import FixresSynthetic
from fixres_jax.data.synthetic.builder import FixresSyntheticConfig
from fixres_jax.data.synthetic.builder import prepare
from fixres_jax.data.synthetic.builder import prepare_builder
from fixres_jax.data.synthetic.examples import generate_example
from fixres_jax.data.synthetic.render import CLASS_NAMES
from fixres_jax.data.synthetic.render import NUM_CLASSES
