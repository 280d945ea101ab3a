"""README's Layout names every module of the library, the studies and the benchmarks, and only
paths that exist; each study says how it runs."""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).parent.parent
FOLDERS = ('fixres_jax', 'studies', 'benchmarks')


def layout_paths() -> list:
  """The path that begins each line of the code block under README's '## Layout'."""
  readme = (REPO / 'README.md').read_text()
  section = readme.split('\n## Layout\n', 1)[1].split('\n## ', 1)[0]
  block = section.split('```', 2)[1]
  return [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]


def modules(folder: str) -> list:
  return sorted(p for p in (REPO / folder).rglob('*.py') if p.name != '__init__.py')


def test_readme_layout_names_every_module():
  named = set(layout_paths())
  missing = [str(p.relative_to(REPO)) for folder in FOLDERS for p in modules(folder)
             if str(p.relative_to(REPO)) not in named]
  assert not missing, f"README's Layout misses {missing}"


def test_readme_layout_names_only_paths_that_exist():
  paths = layout_paths()
  assert len(paths) == len(set(paths)), 'a path is named twice'
  gone = [path for path in paths if not (REPO / path).exists()]
  assert not gone, f"README's Layout names paths that do not exist: {gone}"


def test_each_study_begins_with_its_command_and_finds_the_repository_by_itself():
  for path in modules('studies') + modules('benchmarks'):
    source = path.read_text()
    assert 'sys.path' not in source, f'{path.name}: run it with python -m from the repository root'
    if path.parent.name != 'studies' or "__name__ == '__main__'" not in source:
      continue
    docstring = ast.get_docstring(ast.parse(source))
    command = re.search(r'^\s*(python -m \S+)', docstring, re.MULTILINE)
    assert command and command.group(1) == f'python -m studies.{path.stem}', path.name
