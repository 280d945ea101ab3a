"""XLA:CPU's thunks in a compiled program's HLO text: counted by kind, and classified.

benchmarks/steps.py (--hlo_summary) counts each step's thunks by kind; the CPU study
(benchmarks/torch_cpu.py) classifies a train step's thunks into the categories below to split
its profile by operation.
"""

import collections
import re

# The study's categories (PyTorch's operators are sorted into the same ones).
FORWARD, INPUT_GRAD, KERNEL_GRAD = ('convolution, forward', 'convolution, input gradient',
                                    'convolution, kernel gradient')
COPIES, DENSE, OTHER = ('transposes and copies', 'dense layer',
                        'BatchNorm, ReLU, pooling, loss, optimizer')
GRAD_COPIES = 'transposes feeding gradient convolutions'


def parse_entry(hlo_text: str) -> dict:
  """{name: (opcode, shape, called computation's text, metadata op_name, operand names)} of
  the entry computation: the thunks XLA:CPU runs."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r'^(?:ENTRY )?%?(\S+) \(.*?\{$\n(.*?)^\}', hlo_text, re.M | re.S)}
  entry = re.search(r'^ENTRY %?(\S+) ', hlo_text, re.M).group(1)
  instructions = {}
  for line in bodies[entry].splitlines():
    match = re.match(r'\s*(?:ROOT )?%?(\S+) = (\(.*?\)|\S+) ([\w-]+)\(', line)
    if match:
      called = re.search(r'calls=%?([\w.-]+)', line)
      op_name = re.search(r'op_name="([^"]*)"', line)
      operands = line[match.end():line.find(')', match.end())]
      instructions[match.group(1)] = (
          match.group(3), match.group(2), bodies.get(called.group(1), '') if called else '',
          op_name.group(1) if op_name else '', re.findall(r'%([\w.-]+)', operands))
  return instructions


def dims(shape: str) -> tuple:
  """(3, 3, 64, 64) from 'f32[3,3,64,64]{3,2,1,0}'."""
  match = re.search(r'\[([\d,]*)\]', shape)
  return tuple(int(d) for d in match.group(1).split(',') if d) if match else ()


def classify_thunks(hlo_text: str) -> dict:
  """{thunk name: category} for a compiled train step.

  Forward convolutions carry jvp(...) in their op_name, gradients transpose(jvp(...)) or no
  metadata at all; a gradient convolution whose result has a kernel's dimensions (in any
  order) is a kernel gradient, the others are input gradients.
  """
  instructions = parse_entry(hlo_text)
  kernels = {tuple(sorted(dims(shape))) for opcode, shape, *_ in instructions.values()
             if opcode == 'parameter' and len(dims(shape)) == 4}
  categories = {}
  for name, (opcode, shape, body, op_name, _) in instructions.items():
    convolution = re.search(r'= (\S+) convolution\(', body)
    if opcode == 'convolution' or convolution:
      result = dims(shape if opcode == 'convolution' else convolution.group(1))
      if op_name and 'transpose(' not in op_name:
        categories[name] = FORWARD
      else:
        categories[name] = KERNEL_GRAD if tuple(sorted(result)) in kernels else INPUT_GRAD
    elif opcode in ('copy', 'transpose') or name.startswith(('transpose', 'copy')):
      categories[name] = COPIES
    elif opcode == 'dot' or ' dot(' in body:
      categories[name] = DENSE
    elif opcode != 'parameter':
      categories[name] = OTHER
  # Which transposes only feed gradient convolutions (layouts the gradients need)?
  consumers = collections.defaultdict(set)
  for name, info in instructions.items():
    for operand in info[4]:
      consumers[operand].add(categories.get(name))
  for name, category in categories.items():
    if category == COPIES and consumers[name] and consumers[name] <= {INPUT_GRAD, KERNEL_GRAD}:
      categories[name] = GRAD_COPIES
  return categories


def count_thunks(hlo_text: str) -> dict:
  """Top-level instructions of a compiled program by kind (name without its number)."""
  kinds = collections.Counter(re.sub(r'\.\d+$', '', name) for name, info in
                              parse_entry(hlo_text).items() if info[0] != 'parameter')
  return dict(kinds.most_common(8))
