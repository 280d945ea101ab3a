"""requirements.lock pins, exactly, every package that README's and CI's install lines install."""

import pathlib
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

ROOT = pathlib.Path(__file__).parent.parent
TOP_LEVEL = ('requirements.txt', 'requirements-torch.txt')


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


@pytest.mark.parametrize('name', TOP_LEVEL)
def test_lock_pins_every_top_level_requirement_within_its_range(name):
  pins = read_lock()
  for requirement in read_top_level(name):
    key = canonicalize_name(requirement.name)
    assert key in pins, (f'{requirement} ({name}) is not in requirements.lock: refresh it with '
                         '`bash tools/lock.sh`.')
    assert requirement.specifier.contains(pins[key], prereleases=True), (
        f'requirements.lock pins {key}=={pins[key]}, outside {requirement} ({name}): refresh '
        'it with `bash tools/lock.sh`.')
  assert {'numpy', 'pillow'} <= set(pins)  # they write the embedded dataset's bytes


def test_install_commands_use_the_lock():
  commands = [line for path in ('README.md', '.ci/run')
              for line in (ROOT / path).read_text().splitlines()
              if re.search(r'pip install .*-r requirements', line)]
  assert len(commands) >= 3  # the demo, the tests (README) and CI
  for line in commands:
    assert '-c requirements.lock' in line, line
