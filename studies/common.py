"""What every study shares: the demo's config with overrides, JSON records, figures, and the
text of its reports (tables, percentages, the machine and the command that wrote them).

The speed benchmarks (benchmarks/) read the processor and write tables with these too, so each
helper has one copy in the repository.
"""

import ast
import importlib.metadata
import importlib.util
import json
import platform
import sys
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

from etils import epath

REPO = epath.Path(__file__).parent.parent


def load_config_file(path) -> Any:
  """get_config() of a config file."""
  spec = importlib.util.spec_from_file_location(epath.Path(path).stem, str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_overrides(config, overrides: Dict[str, Any]):
  """Sets dotted fields ('train.base_lr': 0.1) on an ml_collections config, in place."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = getattr(node, name)
    if not hasattr(node, leaf):
      raise KeyError(f'{key}: no such config field.')
    setattr(node, leaf, value)
  return config


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
  """['train.base_lr=0.1', ...] -> {'train.base_lr': 0.1}; values as Python literals."""
  overrides = {}
  for item in items:
    key, value = item.split('=', 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return overrides


def load_demo_config():
  """configs/demo.py's config, as README's demo command runs it."""
  return load_config_file(REPO / 'configs' / 'demo.py')


# How finetune.test_res='auto' scores each K_test on the held-out slice (finetune.auto_metric).
SELECTION_WORDS = {'top1': 'best top-1', 'loss': 'lowest cross-entropy',
                   'calibrated_loss': 'lowest cross-entropy at the best temperature'}


def selection_words(metric: str = '') -> str:
  """How K_test is chosen, in words: by `metric`, or by configs/demo.py's auto_metric."""
  metric = metric or load_demo_config().finetune.auto_metric
  return f"{SELECTION_WORDS[metric]} (finetune.auto_metric='{metric}')"


def demo_train_res() -> int:
  """configs/demo.py's K_train: the studies train at it unless they vary it."""
  return int(load_demo_config().train.image_size)


def demo_config(data_dir: str, seed: int, overrides: Dict[str, Any] = None):
  """configs/demo.py with the data dir, the seed and `overrides` set."""
  config = load_demo_config()
  config.data.data_dir = data_dir
  config.seed = seed
  return apply_overrides(config, overrides or {})


def read_json(path, default=None):
  """A run's JSON record, or `default` while the run that writes it has not finished."""
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else default


def save_figure(fig, path) -> None:
  """A matplotlib Figure as PNG, through epath so that OUT may be object storage."""
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', bbox_inches='tight')


# ---------------------------------------------------------------------------------------------
# Text of the reports


def format_table(header: Sequence, rows: Iterable[Sequence]) -> str:
  """A Markdown table, one row per line."""
  lines = ['| ' + ' | '.join(str(cell) for cell in header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
  return '\n'.join(lines)


def pct(s: Optional[dict]) -> str:
  """claims.stats() in percent: 'mean ± std', the mean alone from one seed (no spread), and
  'not run' for no values (or no stats at all)."""
  if not s or s['mean'] is None:
    return 'not run'
  if s['n'] < 2:
    return f"{100 * s['mean']:.2f}"
  return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def format_command(module: str) -> str:
  """The command line that is running, as `python -m MODULE ARGS`: a report quotes it so that
  a reader can run it again."""
  return ' '.join(['python -m', module, *sys.argv[1:]])


def read_cpu_model() -> str:
  """The processor's name: XLA compiles differently per CPU, so every measurement names it."""
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  except OSError:  # not Linux
    names = []
  return names[0] if names else platform.processor() or 'unknown'


def describe_machine(cores: int) -> str:
  """The processor, the cores and the library versions, in one line: the digits of a report
  vary with them."""
  names = ('jax', 'jaxlib', 'flax', 'tensorflow-cpu', 'tensorflow-datasets', 'numpy', 'pillow')
  found = ', '.join(f'{n} {importlib.metadata.version(n)}' for n in names)
  return f'{read_cpu_model()}, {cores} cores; Python {platform.python_version()}, {found}'



# ---------------------------------------------------------------------------------------------
# README's generated blocks


def readme_markers(name: str, module: str) -> Tuple[str, str]:
  """The comments around README's block NAME, which `python -m MODULE` writes: every
  measured number in README sits between such a pair (tests/test_readme_numbers.py)."""
  return f'<!-- {name}: generated by {module} -->', f'<!-- end of {name} -->'


def read_readme_block(text: str, markers: Tuple[str, str]) -> str:
  """The text between the markers (without the line breaks next to them).

  Raises:
    ValueError: README lacks one of the markers.
  """
  start, end = markers
  for marker in markers:
    if marker not in text:
      raise ValueError(f'README has no {marker!r}: put the block back between its markers.')
  return text[text.index(start) + len(start):text.index(end)].strip('\n')


def write_readme_block(path, markers: Tuple[str, str], block: str) -> None:
  """Replaces the text between README's markers by `block`."""
  path = epath.Path(path)
  text = path.read_text()
  read_readme_block(text, markers)  # both markers are there
  start, end = markers
  path.write_text(text[:text.index(start) + len(start)] + '\n' + block + '\n'
                  + text[text.index(end):])
