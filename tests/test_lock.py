"""requirements.lock pins, exactly, every package that README's and CI's install lines install,
and pyproject.toml declares what the requirement files name."""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

ROOT = pathlib.Path(__file__).parent.parent
TOP_LEVEL = ('requirements.txt', 'requirements-torch.txt', 'requirements-test.txt')
# pyproject.toml's list that each requirement file must equal, entry for entry.
PYPROJECT_LISTS = {'requirements.txt': 'dependencies', 'requirements-torch.txt': 'torch',
                   'requirements-test.txt': 'test'}


def read_lock() -> dict:
  """{canonical name: version} of requirements.lock; every entry must be an exact pin."""
  pins = {}
  for line in (ROOT / 'requirements.lock').read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      requirement = Requirement(line)
      (spec,) = requirement.specifier
      assert spec.operator == '==', f'requirements.lock: {line!r} is not an exact pin'
      pins[canonicalize_name(requirement.name)] = spec.version
  return pins


def read_top_level(name: str) -> list:
  lines = (ROOT / name).read_text().splitlines()
  return [Requirement(l.split('#')[0]) for l in lines if l.split('#')[0].strip()]


def read_pyproject() -> dict:
  """{list name: [Requirement]}: 'dependencies' and every optional-dependencies extra."""
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  lists = dict(project['optional-dependencies'], dependencies=project['dependencies'])
  return {key: [Requirement(r) for r in requirements] for key, requirements in lists.items()}


def is_self(requirement: Requirement) -> bool:
  """fixres_jax[EXTRA] inside an extra: another of the project's own extras."""
  return canonicalize_name(requirement.name) == 'fixres-jax'


def identity(requirement: Requirement) -> tuple:
  return (canonicalize_name(requirement.name), tuple(sorted(requirement.extras)),
          str(requirement.specifier), str(requirement.marker))


def check_pinned(requirements: list, where: str) -> None:
  pins = read_lock()
  for requirement in requirements:
    key = canonicalize_name(requirement.name)
    assert key in pins, (f'{requirement} ({where}) is not in requirements.lock: refresh it with '
                         '`bash tools/lock.sh`.')
    assert requirement.specifier.contains(pins[key], prereleases=True), (
        f'requirements.lock pins {key}=={pins[key]}, outside {requirement} ({where}): refresh '
        'it with `bash tools/lock.sh`.')


@pytest.mark.parametrize('name', TOP_LEVEL)
def test_lock_pins_every_top_level_requirement_within_its_range(name):
  check_pinned(read_top_level(name), name)
  assert {'numpy', 'pillow'} <= set(read_lock())  # they write the embedded dataset's bytes


@pytest.mark.parametrize('name', TOP_LEVEL)
def test_pyproject_declares_what_the_requirement_file_names(name):
  key = PYPROJECT_LISTS[name]
  declared = [r for r in read_pyproject()[key] if not is_self(r)]
  assert sorted(map(identity, declared)) == sorted(map(identity, read_top_level(name))), (
      f'pyproject.toml\'s {key!r} and {name} differ: edit both alike.')


def test_lock_pins_every_pyproject_requirement_within_its_range():
  """The accelerator extras too: jax[cuda12] and jax[tpu] at the locked jax."""
  lists = read_pyproject()
  for key, requirements in lists.items():
    check_pinned([r for r in requirements if not is_self(r)], f'pyproject.toml {key!r}')
    for requirement in filter(is_self, requirements):
      assert requirement.extras <= set(lists) - {'dependencies'}, (key, str(requirement))
  assert {'cuda12', 'tpu'} <= set(lists)


def test_ci_installs_every_requirement_file():
  (line,) = [l for l in (ROOT / '.ci' / 'run').read_text().splitlines()
             if l.startswith('pip install')]
  for name in TOP_LEVEL:
    assert f'-r {name}' in line, name


def test_install_commands_use_the_lock():
  commands = [line for path in ('README.md', '.ci/run')
              for line in (ROOT / path).read_text().splitlines()
              if re.search(r'pip install .*-r requirements', line)]
  assert len(commands) >= 3  # the demo, the tests (README) and CI
  for line in commands:
    assert '-c requirements.lock' in line, line
