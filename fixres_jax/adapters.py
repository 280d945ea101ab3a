"""The adapter bank: one trained network FixRes-fine-tuned at several K_test, in one checkpoint.

FixRes fine-tuning changes two parts of the trained network, which the model contract names
(models/contract.py): the running statistics of the last BatchNorm (last_bn_path) and the
classifier (HEAD). That pair is an adapter: size_bytes gives its size from the model's shapes
(describe_size, for README). With config.finetune.adapter_resolutions the finetune stage
(finetune.mode='cached') also makes one at each of those K, from the same trained network with
the same seed, by the passes and head of cached_finetune.fit_adapter: each equals a separate
cached fine-tuning at that K. The frozen backbone is shared, so n adapters cost n x two
inference passes (the last BN's moments, the pooled features) and n heads trained on stored
features, not n fine-tuning stages.

WORKDIR/checkpoints/adapters/ (the bank) holds
  K/                      one orbax step per adapter, numbered by its K_test:
                          {'params': {HEAD: {'kernel', 'bias'}},
                           'batch_stats': {...last_bn_path...: {'mean', 'var'}}}
  test_transform_K.json   the test transform it was fine-tuned at (transform_record.py), K and
                          how it was chosen included
and the adapter of finetune.test_res itself (taken from the stage's result, no extra work).

Using it:
  variables = adapters.load_adapter(workdir, 112)  # the fine-tuned backbone + K=112's adapter
  python -m fixres_jax.export --workdir=RUN --out=DIR --test_res=112
The sweep scores each adapter at its own K_test (model 'adapter' in sweep.json).

Kills and re-runs: each adapter is saved when made (orbax renames a step into place when
complete), and the bank skips the K it holds; a kill inside one K resumes its passes as the
stage does (pass 1's saved moments, an on-disk feature cache) and trains its head again.
adapter_resolutions is not a field saved work depends on: adding a K and re-running the same
command makes that adapter only (a K taken off the list stays in the bank);
config.redo=finetune moves the bank away with the stage's checkpoints (rerun.py).
"""

import copy
import json
from typing import Callable, Dict, Iterable, List, Optional

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp

from fixres_jax import cached_finetune
from fixres_jax import checkpoint
from fixres_jax import errors
from fixres_jax import models
from fixres_jax import preemption
from fixres_jax import train
from fixres_jax import transform_record

BANK_DIR = 'adapters'  # under WORKDIR/checkpoints
CHOSEN = 'config.finetune.adapter_resolutions'  # the records' 'chosen' for the bank's own K


def bank_dir(workdir) -> epath.Path:
  return epath.Path(workdir) / 'checkpoints' / BANK_DIR


def record_path(workdir, test_res: int) -> epath.Path:
  return bank_dir(workdir) / f'test_transform_{int(test_res)}.json'


def extract(model, variables: dict) -> dict:
  """The adapter of `variables`: the last BN's statistics and the classifier, at their paths."""
  bn = tuple(model.last_bn_path)
  flat = {('params', model.HEAD): models.get_at(variables['params'], (model.HEAD,)),
          ('batch_stats', *bn): models.get_at(variables['batch_stats'], bn)}
  return traverse_util.unflatten_dict(flat)


def attach(backbone: dict, adapter: dict) -> dict:
  """`backbone`'s variables with the adapter's arrays in place of theirs.

  Raises:
    errors.CheckpointError: the adapter has an array the backbone lacks or shapes differently
      (a bank made for another network).
  """
  flat, update = traverse_util.flatten_dict(backbone), traverse_util.flatten_dict(adapter)
  wrong = [k for k, v in update.items() if k not in flat or flat[k].shape != v.shape]
  if wrong:
    raise errors.CheckpointError(
        f'The adapter does not fit the network: {["/".join(k) for k in wrong]} are missing '
        'from it or shaped differently. The bank belongs to another run: build it again with '
        'config.redo=finetune, or load it with the run that made it.')
  return traverse_util.unflatten_dict({**flat, **update})


def adapter_shapes(model, image_size: int = 224) -> dict:
  """The adapter's arrays as shapes and dtypes, from the model's (nothing is computed)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, image_size, image_size, 3))))
  return extract(model, shapes)


def size_bytes(model) -> int:
  """An adapter's bytes as the bank stores it."""
  return checkpoint.tree_bytes(adapter_shapes(model))


def describe_size(name: str = 'resnet50', num_classes: int = 1000) -> str:
  """README's line on the size of one adapter of the registered network `name`."""
  model = models.create_model(name, num_classes)
  count = sum(x.size for x in jax.tree.leaves(adapter_shapes(model)))
  nbytes = size_bytes(model)
  return (f'One adapter of {name} ({num_classes:,} classes) holds {count:,} numbers: '
          f'{nbytes / 1e6:.1f} MB in float32 ({checkpoint.format_bytes(nbytes)}).')


def resolutions(workdir) -> List[int]:
  """The K_test the bank holds, in increasing order (none when there is no bank)."""
  directory = bank_dir(workdir)
  if not checkpoint.has_steps(directory):
    return []
  with checkpoint.open_reader(directory) as reader:
    return sorted(int(k) for k in reader.all_steps())


def save(workdir, test_res: int, adapter: dict, record: dict) -> None:
  """Adds the adapter at test_res and its transform record to the bank (every process)."""
  if jax.process_index() == 0:  # first: a step in the bank always has its record
    path = record_path(workdir, test_res)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + '\n')
  with checkpoint.create_manager(bank_dir(workdir), max_to_keep=None,
                                 async_save=False) as manager:
    # force: the steps are K values, not saved in increasing order.
    checkpoint.save_state(manager, int(test_res), checkpoint.to_host(adapter), force=True)


def read_record(workdir, test_res: int) -> dict:
  return json.loads(record_path(workdir, test_res).read_text())


def load(workdir, test_res: int) -> dict:
  """The adapter at test_res, as host arrays.

  Raises:
    errors.NotFoundError: the bank holds no adapter at test_res (naming those it holds).
  """
  held = resolutions(workdir)
  if int(test_res) not in held:
    raise errors.NotFoundError(
        f'{bank_dir(workdir)} holds no adapter at K_test={test_res}'
        + (f': it holds {held}' if held else ': there is no adapter bank') + '. Add '
        f'{test_res} to config.finetune.adapter_resolutions and re-run the run\'s command '
        '(finished stages are skipped, the bank makes the missing adapters only).')
  with checkpoint.open_reader(bank_dir(workdir)) as reader:
    return checkpoint.to_host(checkpoint.read_step(reader, int(test_res)))


def load_adapter(workdir, test_res: int, backbone: Optional[dict] = None) -> dict:
  """Full variables: the fine-tuned backbone (the finetune stage's checkpoint unless given)
  with the bank's adapter at test_res."""
  if backbone is None:
    backbone = checkpoint.load_variables(epath.Path(workdir) / 'checkpoints' / 'finetune')
  return attach(backbone, load(workdir, test_res))


def load_bank(workdir, backbone: dict, wanted: Iterable[int]) -> Dict[int, dict]:
  """{K: full variables} of the bank's adapters at the K of `wanted` (the sweep's)."""
  held = resolutions(workdir)
  missed = sorted(set(held) - set(wanted))
  if missed:
    logging.info('Adapters at %s are not scored: their K_test is not in sweep.resolutions.',
                 missed)
  return {k: attach(backbone, load(workdir, k)) for k in held if k in set(wanted)}


def build(config, workdir, data_for: Callable, mesh, trained: dict, finetuned: dict,
          stage_record: dict, on_batch: Optional[Callable] = None) -> List[int]:
  """Adds to the bank the adapters of config.finetune.adapter_resolutions it lacks.

  Args:
    config: the run's config (finetune.test_res may be 'auto': the finetune stage's transform
      record says which K_test and transform the stage used, and every adapter uses them).
    data_for: config -> the finetune stage's StageData (recipe.finetune_data).
    trained: the trained network's variables, which every adapter starts from.
    finetuned: the finetune stage's result, whose adapter is the one at its own K_test.
    stage_record: the finetune stage's transform record (transform_record.describe), passed
      in memory: process 0 writes its file, which the other processes may not see yet.
    on_batch: cached_finetune's pass hook (tests interrupt with it).

  Returns:
    the K_test made by this call.
  """
  k_test = int(stage_record['image_size'])
  model = train.create_model(config, 1)  # for its paths alone
  made = []
  for k in dict.fromkeys([k_test, *config.finetune.adapter_resolutions]):
    if k in resolutions(workdir):
      continue
    preemption.check_stop(f'the adapter at K_test={k}')
    if k == k_test:  # the stage's own: already made
      adapter, record = extract(model, finetuned), stage_record
    else:
      config_k = config_at(config, stage_record, k)
      adapter = extract(model, cached_finetune.fit_adapter(config_k, str(workdir),
                                                           data_for(config_k), mesh, trained,
                                                           on_batch))
      record = transform_record.describe(config_k, 'finetune', k, CHOSEN)
    save(workdir, k, adapter, record)
    logging.info('Adapter bank: K_test=%d saved in %s (%s).', k, bank_dir(workdir),
                 checkpoint.format_bytes(checkpoint.tree_bytes(adapter)))
    made.append(k)
  return made


def fit_candidate(config, workdir, data_for: Callable, mesh, trained: dict, test_res: int,
                  crop_pct: float) -> dict:
  """`trained` with the adapter the cached mode fits at (test_res, crop_pct): what
  finetune.test_res='auto' scores with auto_model='adapted' (analysis.select_test_res).

  Nothing is saved beyond the passes' resumable work: the stage, or the bank, makes the
  chosen K_test's adapter as it would from any other choice.
  """
  config = copy.deepcopy(config)  # test_res stays typed `object`: 'auto' becomes an int
  config.finetune.test_res, config.data.crop_pct = int(test_res), float(crop_pct)
  return cached_finetune.fit_adapter(config, str(workdir), data_for(config), mesh, trained)


def config_at(config, stage_record: dict, test_res: int):
  """A copy of `config` that fine-tunes at test_res through the finetune stage's transform
  (its record: with 'auto', the stage's test transform was chosen, not read from config)."""
  config = config.copy_and_resolve_references()
  config.finetune.test_res = int(test_res)
  for field, (key, _) in transform_record.DATA_FIELDS.items():
    if field in config.data and key in stage_record:
      config.data[field] = stage_record[key]
  return config
