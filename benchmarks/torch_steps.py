"""PyTorch's side of the step benchmark: torchvision's same network and SGD train step.

`create_steps` gives benchmarks/steps.py (--torch) torchvision's network running the same SGD
train step (momentum 0.9, weight decay 1e-4, cross-entropy) and inference, in NCHW
('contiguous') and NHWC ('channels_last') memory formats, so that both frameworks are timed
in the same process and the same rounds. PyTorch is imported only when a step is made.
"""

import statistics
import time

MEMORY_FORMATS = ('contiguous', 'channels_last')


def create_torch_model(name: str, num_classes: int):
  import torchvision  # pylint: disable=g-import-not-at-top
  if name == 'tiny':  # the same network as benchmarks/steps.py's 'tiny'
    from torchvision.models import resnet  # pylint: disable=g-import-not-at-top
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
  return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


class TorchStep:
  """One torchvision step (train: SGD update; eval: inference) on a fixed random batch."""

  def __init__(self, kind, model, batch_size, resolution, num_classes, memory_format, dtype):
    import torch  # pylint: disable=g-import-not-at-top
    self.kind, self.resolution, self.batch_size = kind, resolution, batch_size
    self.memory_format, self.times, self.cpu_times = memory_format, [], []
    torch.manual_seed(0)
    self.image = torch.randn(batch_size, 3, resolution, resolution)
    self.label = torch.randint(0, num_classes, (batch_size,))
    if memory_format == 'channels_last':
      model = model.to(memory_format=torch.channels_last)
      self.image = self.image.contiguous(memory_format=torch.channels_last)
    self.model = model
    self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                     weight_decay=1e-4)
    # bfloat16 the way PyTorch users get it on CPU: autocast, float32 parameters.
    self.autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
    self.torch = torch

  def run(self) -> float:
    torch = self.torch
    start = time.perf_counter()
    if self.kind == 'train':
      self.model.train()
      self.optimizer.zero_grad(set_to_none=True)
      with self.autocast:
        loss = torch.nn.functional.cross_entropy(self.model(self.image), self.label)
      loss.backward()
      self.optimizer.step()
    else:
      self.model.eval()
      with torch.inference_mode(), self.autocast:
        self.model(self.image).float().sum().item()
    return time.perf_counter() - start

  def record(self, peak_tflops) -> dict:
    del peak_tflops  # FLOPs are XLA's count; see the Flax record of the same step
    step_s = statistics.median(self.times) if self.times else None
    return {'framework': 'torch', 'step': self.kind, 'resolution': self.resolution,
            'batch': self.batch_size, 'memory_format': self.memory_format, 'step_s': step_s,
            'fastest_s': min(self.times) if self.times else None, 'times_s': self.times,
            'cpu_times_s': self.cpu_times,
            'images_per_s': self.batch_size / step_s if step_s else None}


def create_steps(model_name: str, batch_size: int, resolutions, num_classes: int,
                 dtype: str = 'float32', threads: int = 0, memory_formats=MEMORY_FORMATS):
  """Train and eval steps at each resolution in both memory formats, and what ran them.

  Raises:
    ImportError: when PyTorch or torchvision is not installed.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  unknown = set(memory_formats) - set(MEMORY_FORMATS)
  if unknown:
    raise ValueError(f'Unknown memory formats {sorted(unknown)}: use {MEMORY_FORMATS}.')
  steps = []
  for memory_format in memory_formats:
    model = create_torch_model(model_name, num_classes)
    for kind in ('train', 'eval'):
      steps += [TorchStep(kind, model, batch_size, r, num_classes, memory_format, dtype)
                for r in resolutions]
  info = {'torch': torch.__version__, 'torchvision': torchvision.__version__,
          'threads': torch.get_num_threads(), 'mkldnn': torch.backends.mkldnn.is_available(),
          'resolutions': list(resolutions), 'memory_formats': list(memory_formats),
          'step': 'SGD(momentum 0.9, weight decay 1e-4) on cross-entropy; eval: inference_mode'}
  return steps, info
