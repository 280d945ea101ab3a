"""pyproject.toml builds a wheel of the library alone (its modules and data files, none of the
tests, studies, benchmarks or configs), and the installed wheel works from another directory."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).parent.parent


def not_sources(directory: str, names: list) -> set:
  """What a build does not read: git, caches, and what .gitignore ignores at the root."""
  ignored = {n for n in names if n in ('.git', '__pycache__', '.pytest_cache', '.benchmarks')
             or n.endswith(('.pyc', '.egg-info'))}
  if pathlib.Path(directory) == REPO:
    ignored |= {n for n in names if n in ('build', 'dist', 'tmp') or n.startswith('workdir')}
  return ignored


def package_files() -> set:
  """Every file of fixres_jax/ in the checkout, as a wheel names it."""
  return {str(p.relative_to(REPO)) for p in (REPO / 'fixres_jax').rglob('*')
          if p.is_file() and '__pycache__' not in p.parts and p.suffix != '.pyc'}


@pytest.mark.slow
def test_wheel_holds_the_package_and_its_data_only(tmp_path):
  source = tmp_path / 'source'  # a copy: building writes build/ and *.egg-info next to it
  shutil.copytree(REPO, source, ignore=not_sources)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                  '--wheel-dir', str(tmp_path / 'dist'), str(source)],
                 check=True, capture_output=True, timeout=600)
  (wheel,) = (tmp_path / 'dist').glob('fixres_jax-*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  outside = sorted(n for n in names
                   if not (n.startswith('fixres_jax/') or n.split('/')[0].endswith('.dist-info')))
  assert not outside, f'the wheel holds files outside the package: {outside[:10]}'
  missing = package_files() - names
  assert not missing, f'the wheel misses {sorted(missing)}'
  assert 'fixres_jax/install.txt' in names

  # Installed alone, away from the checkout: the library finds its data in the package.
  site = tmp_path / 'site'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
                  '--target', str(site), str(wheel)], check=True, capture_output=True,
                 timeout=300)
  code = ('import fixres_jax.main\n'
          'from fixres_jax import devices\n'
          'print(fixres_jax.__file__)\n'
          "print(devices.install_line('gpu'))\n")
  result = subprocess.run([sys.executable, '-P', '-c', code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  location, gpu_line = result.stdout.strip().splitlines()[-2:]
  assert location == str(site / 'fixres_jax' / '__init__.py')
  assert '"jax[cuda12]==' in gpu_line
