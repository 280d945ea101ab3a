"""XLA flags that make the tests' compilations cheap, for this process and the ones it starts
(tests/conftest.py puts them in this process's XLA_FLAGS; a test that builds a subprocess's
XLA_FLAGS starts from these).

Tests compile many small programs and run each a few times, so XLA:CPU's code generation is
most of a test's time (a jitted random initialiser took seconds to optimise and milliseconds
to run). Without LLVM optimisation and with XLA:CPU's older fusion code generator, the HLO, and
so what is computed, is the same, and compiling is 5-10 times faster.
"""

XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def with_devices(count: int) -> str:
  """XLA_FLAGS for a process that sees `count` CPU devices."""
  return f'{XLA_FLAGS} --xla_force_host_platform_device_count={count}'
