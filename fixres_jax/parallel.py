"""Data parallelism with jax.jit over a Mesh: batch sharded on 'data', state replicated.

BatchNorm under SPMD jit computes its statistics over the global batch (synchronised BN)
with no axis_name. The same code runs on 1 device, 8 fake CPU devices and many hosts.
"""

from typing import Any, Iterator

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split across devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree on every device (identical on every process)."""
  return jax.device_put(tree, replicated(mesh))


def check_batch_size(global_batch: int, name: str = 'batch_size') -> int:
  """Returns the per-process batch; the global batch must split evenly over devices."""
  if global_batch % jax.device_count():
    raise ValueError(
        f'config.{name}={global_batch} is not divisible by the {jax.device_count()} devices: '
        f'use a multiple of {jax.device_count()}.')
  return global_batch // jax.process_count()


def make_global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles the global batch from each process's part (without copying across hosts)."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def prefetch_to_devices(batches: Iterator[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
  """Yields global device batches, keeping `size` transfers in flight ahead of the step."""
  queue = []
  for batch in batches:
    queue.append(make_global_batch(batch, mesh))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue
