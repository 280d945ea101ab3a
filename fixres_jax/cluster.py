"""Joining a multi-process run: explicit flags, or jax's own cluster auto-detection.

jax.distributed.initialize() without arguments finds SLURM, Cloud TPU VMs (GCE metadata or
GKE), Open MPI and Kubernetes jobs by itself. Here it is called whenever one of those
environments is present and reports more than one process; explicit values (flags or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) win over detection; a single
process on a single host initialises nothing.
"""

import os
from typing import Optional

from absl import logging
import jax


def detect_cluster() -> Optional[type]:
  """The first of jax's cluster environments present here (None on a plain host).

  Uses the list and order that jax.distributed.initialize() itself walks; opt-in methods
  (mpi4py) are left out as jax leaves them out.
  """
  # jax has no public detection call; this is the registry initialize() consults.
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  return next((env for env in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
               if not env.opt_in_only_method and env.is_env_present()), None)


def explicit_settings(coordinator_address: Optional[str], num_processes: Optional[int],
                      process_id: Optional[int]) -> dict:
  """Flag values, else the JAX_* environment variables; unset ones are left out."""
  settings = {
      'coordinator_address': coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS'),
      'num_processes': num_processes or _int_env('JAX_NUM_PROCESSES'),
      'process_id': process_id if process_id is not None else _int_env('JAX_PROCESS_ID'),
  }
  return {k: v for k, v in settings.items() if v is not None}


def _int_env(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'{name}={value!r} is not an integer: set it to a number or unset it.'
                     ) from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins the multi-process run this process belongs to, if any.

  Args:
    coordinator_address: host:port of process 0 (overrides detection).
    num_processes, process_id: override detection; with an explicit coordinator and no
      detected cluster both are required.
  """
  settings = explicit_settings(coordinator_address, num_processes, process_id)
  env = detect_cluster()
  if not settings and (env is None or env.get_process_count() <= 1):
    return  # one process: nothing to join
  if env is None and len(settings) < 3:
    missing = sorted({'coordinator_address', 'num_processes', 'process_id'} - set(settings))
    raise ValueError(
        f'A multi-process run needs --{" and --".join(missing)} here (no SLURM, Cloud TPU, '
        'Open MPI or Kubernetes environment was detected to supply them).')
  # CPU processes exchange collectives through gloo (GPUs and TPUs ignore this setting).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  logging.info('Joining a multi-process run via %s.',
               'explicit settings' if settings else env.__name__)
  jax.distributed.initialize(**settings)
