"""XLA flags that make the tests' compilations cheap, for this process and the ones it starts.

Tests compile many small programs and run each a few times, so XLA:CPU's code generation is
most of a test's time (a jitted random initialiser took seconds to optimise and milliseconds
to run). Without LLVM optimisation and with XLA:CPU's older fusion code generator, the HLO, and
so what is computed, is the same, and compiling is 5-10 times faster (tests/conftest.py puts
them in XLA_FLAGS; a test that builds a subprocess's XLA_FLAGS itself adds them).
"""

XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
