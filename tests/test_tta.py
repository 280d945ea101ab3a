"""Test-time augmentation against its references on converted weights: torchvision's FiveCrop
and TenCrop, a flipped input, and multi-scale averaging through torch on the same pixels;
timm's TestTimePoolHead on a converted timm ResNet."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import timm.layers
import timm.models.resnet
import torch
import torchvision
from torchvision import transforms

from fixres_jax import convert
from fixres_jax import models
from fixres_jax import tta
from fixres_jax.data import views

NUM_CLASSES = 10
K_TEST = 64
# The resize of the test transform at K_TEST is the identity on this image (its shorter side
# is floor(64 / 0.875) = 73), so torchvision and the pipeline crop the very same pixels; the
# horizontal margin 91 - 64 is odd, so TenCrop's mirrored centre is a window of its own.
IMAGE_SHAPE = (73, 91)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope='module')
def networks():
  """A timm ResNet (one basic block per stage) with random BN statistics, and its Flax copy."""
  torch.manual_seed(0)
  torch_model = timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [1, 1, 1, 1],
                                          num_classes=NUM_CLASSES)
  with torch.no_grad():
    for module in torch_model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.momentum = 1.0  # running statistics := those of one batch
    torch_model.train()
    torch_model(torch.randn(4, 3, K_TEST, K_TEST))
  torch_model.eval()
  model = models.create_model('resnet', NUM_CLASSES, stage_sizes=(1, 1, 1, 1), block='basic',
                              num_filters=64)
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return torch_model, model, convert.convert_state_dict(state_dict, model)


def make_png(shape) -> bytes:
  """A smooth random RGB image, PNG-encoded (lossless: both sides decode the same pixels)."""
  rng = np.random.default_rng(0)
  coarse = rng.uniform(0, 255, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3))
  image = Image.fromarray(coarse.astype(np.uint8)).resize(shape[::-1], Image.BILINEAR)
  noisy = np.clip(np.asarray(image, np.float64) + rng.normal(0, 12, image.size[::-1] + (3,)),
                  0, 255)
  out = io.BytesIO()
  Image.fromarray(noisy.astype(np.uint8)).save(out, format='PNG')
  return out.getvalue()


@pytest.fixture(scope='module')
def png_bytes():
  return make_png(IMAGE_SHAPE)


def torch_logits(torch_model, tensors) -> np.ndarray:
  """The mean of the torch model's logits over a list of [3, H, W] views."""
  with torch.no_grad():
    return torch_model(torch.stack(tensors)).mean(0).numpy()


def flax_logits(model, variables, images, spec) -> np.ndarray:
  """tta.forward's averaged logits for one image's views (batch of 1)."""
  batch = jax.tree.map(lambda x: jnp.asarray(x)[None], images)
  forward = jax.jit(lambda v, x: tta.forward(model, v, x, spec)['logits'])
  return np.asarray(forward(variables, batch))[0]


def torchvision_views(png: bytes, name: str, size: int = K_TEST) -> list:
  """The references' views: torchvision's Resize + CenterCrop, FiveCrop or TenCrop on PIL."""
  image = transforms.Resize(int(size / 0.875))(Image.open(io.BytesIO(png)).convert('RGB'))
  to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
  if name == 'flip':
    view = to_tensor(transforms.CenterCrop(size)(image))
    return [view, view.flip(-1)]  # the mirror of the input tensor
  crops = {'five_crop': transforms.FiveCrop, 'ten_crop': transforms.TenCrop}[name](size)(image)
  return [to_tensor(crop) for crop in crops]


@pytest.mark.parametrize('name', ['flip', 'five_crop', 'ten_crop'])
def test_views_equal_torchvision_on_the_same_pixels(networks, png_bytes, name):
  torch_model, model, variables = networks
  spec = tta.parse(name)
  images = views.preprocess_views(tf.constant(png_bytes), spec.sizes(K_TEST), spec.crops)
  expected = torch_logits(torch_model, torchvision_views(png_bytes, name))
  logits = flax_logits(model, variables, images.numpy(), spec)
  assert spec.forward_passes == {'flip': 2, 'five_crop': 5, 'ten_crop': 10}[name]
  assert np.max(np.abs(logits)) > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.slow  # ResNet-50 at 224 px, ten times
def test_ten_crop_of_a_converted_resnet50_equals_torchvision():
  torch.manual_seed(0)
  torch_model = torchvision.models.resnet50(num_classes=NUM_CLASSES)
  with torch.no_grad():
    for module in torch_model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.momentum = 1.0
    torch_model.train()
    torch_model(torch.randn(4, 3, 224, 224))
  torch_model.eval()
  model = models.create_model('resnet50', NUM_CLASSES)
  variables = convert.convert_state_dict(
      {k: v.numpy() for k, v in torch_model.state_dict().items()}, model)
  png = make_png((256, 291))  # the resize to 256 is the identity; the margin 67 is odd
  spec = tta.parse('ten_crop')
  images = views.preprocess_views(tf.constant(png), spec.sizes(224), spec.crops)
  expected = torch_logits(torch_model, torchvision_views(png, 'ten_crop', 224))
  np.testing.assert_allclose(flax_logits(model, variables, images.numpy(), spec), expected,
                             atol=1e-4)


def test_multiscale_averages_the_logits_of_every_scale(networks, png_bytes):
  torch_model, model, variables = networks
  spec = tta.parse('multiscale:0.75,1')
  images = views.preprocess_views(tf.constant(png_bytes), spec.sizes(K_TEST), spec.crops)
  assert [v.shape[0] for v in images] == [48, 64]
  per_scale = [torch_logits(torch_model, [torch.from_numpy(v.numpy().transpose(2, 0, 1))])
               for v in images]
  logits = flax_logits(model, variables, tuple(v.numpy() for v in images), spec)
  np.testing.assert_allclose(logits, np.mean(per_scale, axis=0), atol=1e-4)
  assert spec.forward_passes == 2
  assert spec.relative_flops(K_TEST) == pytest.approx(0.75**2 + 1)


def test_test_time_pool_equals_timms_head(networks):
  torch_model, model, variables = networks
  spec = tta.for_model(tta.parse('test_time_pool'), model, train_res=K_TEST)
  assert spec.pool_window == (2, 2)  # timm's pool_size: K_train / 32
  images = torch.randn(2, 3, 2 * K_TEST, 2 * K_TEST, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = timm.layers.TestTimePoolHead(torch_model, original_pool=2)(images).numpy()
  forward = jax.jit(lambda v, x: tta.forward(model, v, x, spec)['logits'])
  logits = np.asarray(forward(variables, images.numpy().transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(logits, expected, atol=1e-4)
  # At K_train the window covers the whole map: the plain network.
  small = images[:, :, :K_TEST, :K_TEST].numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(forward(variables, small)),
                             np.asarray(jax.jit(model.apply)(variables, small)), atol=1e-5)


@pytest.mark.parametrize('name, passes', [
    ('none', 1), ('flip', 2), ('five_crop', 5), ('ten_crop', 10), ('five_crop+flip', 10),
    ('multiscale:0.8,1,1.2', 3), ('multiscale:0.8,1.2+flip', 4), ('test_time_pool', 1),
    ('test_time_pool+ten_crop', 10)])
def test_forward_passes_are_counted(name, passes):
  assert tta.parse(name).forward_passes == passes


@pytest.mark.parametrize('name, message', [
    ('tencrop', "'tencrop' is not a test-time augmentation"),
    ('', "use 'none' or parts of"),
    ('flip+flip', "names 'flip' twice"),
    ('ten_crop+flip', 'already holds the mirror images'),
    ('five_crop+ten_crop', 'name one'),
    ('multiscale:', 'needs positive factors'),
    ('multiscale:0,1', 'needs positive factors'),
    ('multiscale:1,1', 'repeats a factor'),
])
def test_a_bad_name_says_what_is_allowed(name, message):
  with pytest.raises(ValueError, match=message):
    tta.parse(name)


@pytest.mark.slow  # a sweep: the analytic K_test*, the pipeline at two scales
def test_the_sweep_scores_the_average_of_its_views(tiny_config, tiny_dataset):
  """Two scales and their mirrors through the sweep (views, padding, masks, the jitted step)
  score the NLL of the average of the four views' logits, the network applied to each."""
  from fixres_jax import analysis  # pylint: disable=g-import-not-at-top
  from fixres_jax import losses  # pylint: disable=g-import-not-at-top
  from fixres_jax import parallel  # pylint: disable=g-import-not-at-top
  from fixres_jax import train  # pylint: disable=g-import-not-at-top
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.sweep.resolutions = (32,)
  config.sweep.parametric = False
  config.sweep.latency_batch_size = 0
  config.sweep.tta = 'multiscale:1,1.25+flip'
  model = train.create_model(config, tiny_dataset.num_classes)
  variables = train.init_variables(model, config.train.image_size, seed=0)
  mesh = parallel.create_mesh()
  (record,) = analysis.sweep(config, tiny_dataset, mesh, {'trained': variables}, model).records
  assert (record['tta'], record['forward_passes']) == ('multiscale:1,1.25+flip', 4)
  assert record['relative_flops'] == pytest.approx(2 * (1 + 1.25**2))

  apply = jax.jit(lambda x: model.apply(variables, x))
  total, count = 0.0, 0.0
  scales = [pipeline.config_eval_batches(config, tiny_dataset, config.data.eval_split, k)
            for k in (32, 40)]
  for small, large in zip(*scales):
    logits = np.mean([apply(x) for b in (small, large) for x in (b['image'],
                                                                 b['image'][:, :, ::-1])], 0)
    total += float(np.sum(losses.cross_entropy(logits, small['label']) * small['mask']))
    count += float(np.sum(small['mask']))
  assert record['num_images'] == count
  assert record['loss'] == pytest.approx(total / count, rel=1e-5)


def test_test_time_pool_asks_for_the_feature_map_of_a_network_without_one():
  from test_model_contract import ToyConvNet  # pylint: disable=g-import-not-at-top
  with pytest.raises(models.ContractError, match="does not sow its final feature map"):
    tta.for_model(tta.parse('test_time_pool'), ToyConvNet(), train_res=32)


def test_the_run_output_says_which_augmentation_its_scores_average():
  from fixres_jax import analysis  # pylint: disable=g-import-not-at-top
  spec = tta.parse('ten_crop')
  records = [{'model': 'trained', 'test_res': 64, **tta.describe(spec, 64)}]
  assert "'ten_crop' (10 forward passes per image" in analysis.tta_sentence(records)
  assert analysis.tta_sentence([{**records[0], **tta.describe(tta.PLAIN, 64)}]) == ''
