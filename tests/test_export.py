"""python -m fixres_jax.export: a SavedModel taking image bytes and a jax.export artifact taking
uint8 pixels, loaded by a process without fixres_jax or flax, give the run's predictions."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from fixres_jax.data import preprocess
from fixres_jax import errors
from fixres_jax import export

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a serving process runs: TensorFlow and jax only. Prints the fixres_jax and flax modules
# it ended up with (none, if the artifacts stand alone).
LOAD_IN_A_FRESH_PROCESS = r'''
import json, os, sys
import numpy as np
import tensorflow as tf
from jax import export
out, data = sys.argv[1], sys.argv[2]
names = sorted(f for f in os.listdir(data) if f.endswith('.img'))
images = [open(os.path.join(data, f), 'rb').read() for f in names]
pixels = np.load(os.path.join(data, 'pixels.npy'))
model = tf.saved_model.load(os.path.join(out, 'saved_model'))
serve, serve_pixels = model.signatures['serving_default'], model.signatures['pixels']
# Two batch sizes each: the batch dimension is symbolic.
logits = np.concatenate([serve(images=tf.constant(images[:7]))['logits'].numpy(),
                         serve(images=tf.constant(images[7:]))['logits'].numpy()])
saved_model_pixels = serve_pixels(pixels=tf.constant(pixels))['logits'].numpy()
with open(os.path.join(out, 'model.jax_export'), 'rb') as f:
  exported = export.deserialize(bytearray(f.read()))
jax_pixels = np.concatenate([np.asarray(exported.call(pixels[:5])),
                             np.asarray(exported.call(pixels[5:]))])
np.savez(os.path.join(data, 'served.npz'), logits=logits, jax_pixels=jax_pixels,
         saved_model_pixels=saved_model_pixels)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('fixres_jax', 'flax'))))
'''


def run_cli(*args, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'fixres_jax.export', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, 'PYTHONPATH': REPO_ROOT})


def test_normalized_pixels_are_the_test_pipeline_s():
  record = {'mean_rgb': list(preprocess.MEAN_RGB), 'std_rgb': list(preprocess.STDDEV_RGB),
            'dtype': 'float32'}
  pixels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 4, 3))
  expected = preprocess.normalize_image(tf.constant(pixels, tf.float32)).numpy()
  got = np.asarray(jax.jit(lambda p: export.normalize_pixels(p, record))(pixels))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('case', ['not a run', 'no checkpoint', 'out not writable'])
def test_bad_input_ends_with_its_message_and_exit_2(tmp_path, capsys, case):
  workdir, out = tmp_path / 'run', tmp_path / 'out'
  workdir.mkdir()
  if case != 'not a run':
    (workdir / 'config.json').write_text('{}')
  if case == 'out not writable':
    (tmp_path / 'a_file').write_text('')
    out = tmp_path / 'a_file' / 'out'
  with pytest.raises(SystemExit) as exit_info:
    export.export_or_exit(workdir, out)
  assert exit_info.value.code == errors.EXIT_CODE
  message = capsys.readouterr().err
  assert message.startswith('Error: ') and 'Traceback' not in message
  expected = {'not a run': 'config.json does not exist', 'no checkpoint': 'No checkpoint',
              'out not writable': 'Cannot write to --out='}[case]
  assert expected in message


@pytest.fixture(scope='module')
def exported(tmp_path_factory, synthetic_data_dir):
  """A tiny run (train and finetune), exported through the command line."""
  import tiny_config  # pylint: disable=g-import-not-at-top
  from fixres_jax import recipe  # pylint: disable=g-import-not-at-top
  config = tiny_config.get_config()
  config.data.data_dir = synthetic_data_dir
  config.train.num_epochs = 1
  config.stages = ('train', 'finetune')
  root = tmp_path_factory.mktemp('export')
  workdir, out = root / 'run', root / 'out'
  recipe.run(config, str(workdir))
  result = run_cli(f'--workdir={workdir}', f'--out={out}', '--torch')
  assert result.returncode == 0, result.stderr[-3000:]
  return config, workdir, out


@pytest.mark.slow
def test_finished_stages_recorded_their_test_transform(exported):
  config, workdir, out = exported
  for stage, size in [('train', 32), ('finetune', 40)]:
    record = json.loads((workdir / 'checkpoints' / stage / 'test_transform.json').read_text())
    assert (record['stage'], record['image_size']) == (stage, size)
    assert (record['crop_pct'], record['decode']) == (config.data.crop_pct, config.data.decode)
  assert json.loads((out / 'test_transform.json').read_text())['stage'] == 'finetune'
  torch_config = json.loads((out / 'torch' / 'config.json').read_text())
  assert torch_config['pretrained_cfg']['input_size'] == [3, 40, 40]
  assert (out / 'torch' / 'model.safetensors').exists()


@pytest.mark.slow
def test_a_fresh_process_reproduces_the_predictions(exported, tmp_path):
  from fixres_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, workdir, out = exported
  run = export.load_run(workdir)
  size = run.record['image_size']
  dataset = pipeline.load_dataset(config)
  split = config.data.eval_split
  examples = list(dataset.read(split, 0, 1, False).as_numpy_iterator())
  for i, example in enumerate(examples):
    (tmp_path / f'{i:05d}.img').write_bytes(example['image'])
  labels = np.array([example['label'] for example in examples])
  # The sweep's pixels and logits: the evaluation pipeline at K, the network in inference mode.
  apply = jax.jit(export.images_fn(run.model))
  images, logits = [], []
  for batch in pipeline.config_eval_batches(config, dataset, split, size):
    keep = batch['mask'] > 0
    images.append(batch['image'][keep])
    logits.append(np.asarray(apply(run.variables, batch['image']))[keep])
  images, logits = np.concatenate(images), np.concatenate(logits)
  assert len(logits) == len(examples)
  # uint8 pixels at K: the pipeline's, before normalisation, rounded.
  std, mean = np.array(preprocess.STDDEV_RGB), np.array(preprocess.MEAN_RGB)
  pixels = np.clip(np.round(images * std + mean), 0, 255).astype(np.uint8)
  np.save(tmp_path / 'pixels.npy', pixels)
  normalized = preprocess.normalize_image(tf.constant(pixels, tf.float32)).numpy()
  pixel_logits = np.asarray(apply(run.variables, normalized))

  result = subprocess.run([sys.executable, '-c', LOAD_IN_A_FRESH_PROCESS, str(out),
                           str(tmp_path)], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items()
                                            if k != 'PYTHONPATH'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == []  # neither fixres_jax nor flax
  served = np.load(tmp_path / 'served.npz')
  agree = np.mean(served['logits'].argmax(-1) == logits.argmax(-1))
  top1 = [np.mean(l.argmax(-1) == labels) for l in (logits, served['logits'])]
  diffs = {name: float(np.abs(served[name] - reference).max()) for name, reference in
           [('logits', logits), ('saved_model_pixels', pixel_logits),
            ('jax_pixels', pixel_logits)]}
  print(f'{len(labels)} images: same prediction on {100 * agree:.2f}%, top-1 {top1}, '
        f'max |logit diff| {diffs} (max |logit| {np.abs(logits).max():.2f})')
  assert agree >= 0.999
  assert abs(top1[0] - top1[1]) <= 0.001
  assert max(diffs.values()) <= 1e-4
  assert np.abs(logits).max() > 0.1  # not a degenerate all-zero comparison


@pytest.mark.slow
@pytest.mark.parametrize('case', ['no checkpoint', 'no --out'])
def test_the_command_line_answers_a_mistake_with_its_message(tmp_path, case):
  args = [f'--workdir={tmp_path}'] + ([f'--out={tmp_path / "out"}'] if case != 'no --out' else [])
  result = run_cli(*args)
  assert result.returncode == errors.EXIT_CODE
  assert result.stderr.strip().splitlines()[-1].startswith('Error: ')
  assert 'Traceback' not in result.stderr
