"""The model, step, checkpoint and analysis code never imports TensorFlow (only data/ does;
the exporter reaches TensorFlow and jax2tf only through data/serving.py, when it writes),
the library never imports the studies or the benchmarks, and importing it leaves TensorFlow's
devices alone."""

import ast
import pathlib
import subprocess
import sys

import pytest

TF_FREE = ('models', 'train', 'finetune', 'cached_finetune', 'checkpoint', 'analysis',
           'parallel', 'parametric', 'metrics', 'convert', 'stage', 'evaluate', 'losses',
           'augmentations', 'config', 'transform_record', 'export', 'export_torch',
           'latency')


@pytest.mark.slow  # a fresh interpreter: what an import pulls in shows only there
def test_imports_load_tensorflow_only_from_data_and_leave_its_devices_alone():
  """The TF-free modules import without TensorFlow; the pipeline imports it (the check can
  see it). Importing the pipeline and main then hides the GPUs from TensorFlow nowhere: that
  happens where the pipeline is first used, not on import (on a CPU-only machine no device
  changes: the recorded calls are what fails there). One interpreter runs both checks."""
  code = ('import sys\n'
          + ''.join(f'import fixres_jax.{name}\n' for name in TF_FREE)
          + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])\n"
          'import tensorflow as tf\n'
          'calls = []\n'
          'tf.config.set_visible_devices = tf.config.experimental.set_visible_devices = (\n'
          '    lambda *args, **kwargs: calls.append(args))\n'
          'before = tf.config.get_visible_devices()\n'
          'import fixres_jax.data.pipeline, fixres_jax.main\n'
          "print('tensorflow' in sys.modules)\n"
          'print(calls)\n'
          'print(tf.config.get_visible_devices() == before)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=True, timeout=300)
  without_data, with_data, calls, unchanged = result.stdout.strip().splitlines()[-4:]
  assert without_data == '[]', without_data
  assert with_data == 'True'  # the check itself can see TensorFlow
  assert calls == '[]', f'importing fixres_jax called tf.config.set_visible_devices{calls}'
  assert unchanged == 'True'


def imported_modules(path: pathlib.Path) -> set:
  """The top-level packages a source file imports, wherever the import stands."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module.split('.')[0])
  return names


def test_the_library_never_imports_the_studies_or_the_benchmarks():
  """`python -m fixres_jax.main` needs only fixres_jax/: the studies that write docs/ and the
  speed benchmarks use the library, never the other way round."""
  library = pathlib.Path(__file__).parent.parent / 'fixres_jax'
  found = {str(path.relative_to(library)): imported_modules(path) & {'studies', 'benchmarks'}
           for path in library.rglob('*.py')}
  assert not {path: names for path, names in found.items() if names}
