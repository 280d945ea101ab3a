"""What the run computes on: the platform line at start, and a stop when a GPU would sit idle.

`pip install -r requirements.txt` installs jaxlib for the CPU; on a GPU machine jax then trains
on the CPU without a word. `check_platform` stops such a run before anything is compiled and
prints the GPU install line (fixres_jax/install.txt), unless config.allow_cpu_with_gpu is set.
"""

import importlib.resources
import os
import re
import shutil
import subprocess

import jax

from fixres_jax import errors

INSTALL_LINES = importlib.resources.files('fixres_jax') / 'install.txt'
# Where an NVIDIA driver shows its GPUs (module-level so that tests can point them elsewhere).
NVIDIA_PROC = '/proc/driver/nvidia/gpus'
NVIDIA_DEVICE = '/dev/nvidia0'
# Flags XLA reads when it creates the backend: without this one, GPU reductions (e.g. in
# convolution gradients) may run in a different order on each run, and a resumed run differs.
DETERMINISTIC_XLA_FLAG = '--xla_gpu_deterministic_ops=true'
# The environment variable XLA:CPU sizes its thread pools by (the machine's cores otherwise).
CPU_THREADS_VARIABLE = 'PJRT_NPROC'


class PlatformError(errors.UserError, RuntimeError):
  """A jax platform that does not match the machine; the message says the fix."""


def install_line(target: str) -> str:
  """The install command for 'cpu', 'gpu' or 'tpu', as README and the launchers show it."""
  for line in INSTALL_LINES.read_text().splitlines():
    if line.startswith(f'{target}: '):
      return line[len(target) + 2:]
  raise KeyError(f'No {target!r} line in {INSTALL_LINES}.')


def describe() -> str:
  """'gpu: 8 x NVIDIA H100 80GB HBM3 (8 local / 8 global devices, process 0 of 1)'."""
  kinds = sorted({d.device_kind for d in jax.local_devices()})
  return (f'{jax.default_backend()}: {jax.local_device_count()} x {", ".join(kinds)} '
          f'({jax.local_device_count()} local / {jax.device_count()} global devices, '
          f'process {jax.process_index()} of {jax.process_count()})')


def visible_nvidia_gpus() -> list:
  """The NVIDIA GPUs the driver shows on this machine (names or paths); [] when none."""
  if os.path.isdir(NVIDIA_PROC) and os.listdir(NVIDIA_PROC):
    return sorted(os.listdir(NVIDIA_PROC))
  if os.path.exists(NVIDIA_DEVICE):
    return [NVIDIA_DEVICE]
  nvidia_smi = shutil.which('nvidia-smi')
  if nvidia_smi:
    try:
      listing = subprocess.run([nvidia_smi, '-L'], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      return []
    return [line for line in listing.stdout.splitlines() if line.startswith('GPU ')]
  return []


def means_cpu() -> bool:
  """Whether the user asked for the CPU in the environment (JAX_PLATFORMS=cpu)."""
  return os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu'


def check_platform(config) -> None:
  """Stops a run that would train on the CPU of a machine with an NVIDIA GPU."""
  if jax.default_backend() != 'cpu' or config.allow_cpu_with_gpu or means_cpu():
    return
  gpus = visible_nvidia_gpus()
  if gpus:
    raise PlatformError(
        f'An NVIDIA GPU is visible ({gpus[0]}) but jax runs on the CPU: the installed jaxlib '
        f'has no CUDA support. Install it with\n  {install_line("gpu")}\nor, to run on the '
        'CPU anyway, add --config.allow_cpu_with_gpu=True.')


def request_determinism(config) -> None:
  """Makes GPU kernels deterministic when config.deterministic; before jax's backend exists."""
  flags = os.environ.get('XLA_FLAGS', '')
  if config.deterministic and 'xla_gpu_deterministic_ops' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {DETERMINISTIC_XLA_FLAG}'.strip()


def forced_cpu_device_count() -> int:
  """How many CPU devices the environment asks jax for (JAX_NUM_CPU_DEVICES, or XLA_FLAGS's
  --xla_force_host_platform_device_count); 1 if it does not."""
  if os.environ.get('JAX_NUM_CPU_DEVICES', '').strip().isdigit():
    return int(os.environ['JAX_NUM_CPU_DEVICES'])
  counts = re.findall(r'--xla_force_host_platform_device_count=(\d+)',
                      os.environ.get('XLA_FLAGS', ''))
  return int(counts[-1]) if counts else 1


def provision_cpu_threads() -> None:
  """Gives XLA:CPU enough threads for several devices on one machine; before jax's backend exists.

  XLA:CPU launches each device's part of a program on a pool of max(cores, devices) threads,
  and a launch may block its thread until the device's earlier programs finish. With N > 1
  devices on a machine of few cores (tests, the demo's two-device check), N launches can hold
  every thread while the devices they wait for need one: an all-reduce then waits forever for
  its last participants, and XLA aborts the process after 40 s. N launching, N in the one
  collective XLA runs at a time and one thread for the work they wait on need 2N + 1 threads.
  A PJRT_NPROC the user set is kept.
  """
  count = forced_cpu_device_count()
  if count > 1 and CPU_THREADS_VARIABLE not in os.environ:
    os.environ[CPU_THREADS_VARIABLE] = str(max(os.cpu_count() or 1, 2 * count + 1))
