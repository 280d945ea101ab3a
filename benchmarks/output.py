"""What the benchmarks share: their JSON, printed and optionally written."""

import json


def emit(result: dict, out: str = '') -> None:
  """Prints `result` as JSON and, when `out` is set, writes it there too."""
  text = json.dumps(result, indent=2)
  print(text)
  if out:
    with open(out, 'w') as f:
      f.write(text + '\n')
