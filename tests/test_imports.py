"""The model, step, checkpoint and analysis code never imports TensorFlow (only data/ does)."""

import subprocess
import sys

TF_FREE = ('models', 'train', 'finetune', 'cached_finetune', 'checkpoint', 'analysis',
           'parallel', 'parametric', 'metrics', 'convert', 'stage', 'evaluate', 'losses',
           'augmentations', 'config')


def test_only_the_data_package_imports_tensorflow():
  code = ('import sys\n'
          + ''.join(f'import fixres_jax.{name}\n' for name in TF_FREE)
          + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])\n"
          + 'import fixres_jax.data.pipeline\n'
          + "print('tensorflow' in sys.modules)\n")
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=True, timeout=300)
  without_data, with_data = result.stdout.strip().splitlines()[-2:]
  assert without_data == '[]', without_data
  assert with_data == 'True'  # the check itself can see TensorFlow
