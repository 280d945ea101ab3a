"""What FixRes fine-tuning adds on top of the modern training recipes, on the embedded
dataset; writes docs/MODERN.md and docs/modern.json.

  python -m studies.modern --data_dir=/tmp/tfds_idle --results_root=/tmp/fixres_modern \
      --out=docs [--demo_root=/tmp/demo3] [--seeds=0,1,2] \
      [--variants=baseline,mix,a3,progressive] [--epochs=8]

Each variant is the demo network (configs/demo.py) trained on train[:90%] of the demo's
dataset, for the demo's epochs, with one modern recipe: Mixup 0.1 + CutMix 1.0 (timm's switching),
an A3-like recipe (ResNet strikes back A3's LAMB, binary cross-entropy with target threshold
0.2, Mixup/CutMix and RandAugment rand-m6-mstd0.5-inc1), or FFCV-style progressive resizing
ending at a higher K_train for no more training pixels than the baseline's fixed K_train.
Then, as studies/reproduce.py does (with its functions): K_test chosen as the trained
network's best on the held-out train[90%:], FixRes fine-tuning there (the demo's settings),
and the validation split evaluated at K_train and at the chosen K_test for the trained and
the fine-tuned network. The baseline trains exactly as README's demo command: with
--demo_root its training is copied from the finished demo workdirs (reproduce.train_once). Every run has its own workdir under --results_root
and a re-run skips finished runs; seeds run in the outer loop, so an interrupted measurement
has whole seeds. --phase=report only rewrites the doc from the finished runs.
"""

from etils import epath

from studies import claims
from studies import common
from studies import reproduce
from studies import variant_grid

TRAIN_RES = common.demo_train_res()
MIX = {'train.mixup_alpha': 0.1, 'train.cutmix_alpha': 1.0}  # timm's switch_prob 0.5
# 2/3 of K_train for half the epochs, then K_train, then 4/3 of it (FFCV ramps up at the end):
# per epoch (4 x 4 + 2 x 9 + 2 x 16) / (8 x 9) = 0.92 of K_train's pixels per image.
PROGRESSIVE = ((0, TRAIN_RES * 2 // 3), (0.5, TRAIN_RES), (0.75, TRAIN_RES * 4 // 3))
VARIANTS = {
    'baseline': {},
    'mix': MIX,
    # LAMB's lr is per step and per layer (the trust ratio): A3's 8e-3 at every batch size,
    # written per 256 images for the demo's batch of 64.
    'a3': {**MIX, 'train.optimizer': 'lamb', 'train.base_lr': 8e-3 * 256 / 64,
           'train.weight_decay': 0.02, 'train.no_decay': ('/bias$', '/scale$'),
           'train.loss': 'bce', 'train.bce_threshold': 0.2,
           'data.randaugment': 'rand-m6-mstd0.5-inc1',
           # A random classifier, as A3's: LAMB cannot grow the demo's zero one (config.py).
           'model.zero_init_head': False},
    'progressive': {'train.image_size': PROGRESSIVE[-1][1]},  # and the schedule, below
}
LABELS = {
    'baseline': f'baseline (demo recipe, K_train={TRAIN_RES})',
    'mix': 'Mixup 0.1 + CutMix 1.0',
    'a3': 'A3-like: LAMB + BCE + Mixup/CutMix + RandAugment',
    'progressive': 'progressive resizing ' + ' -> '.join(str(k) for _, k in PROGRESSIVE),
}


def apply_variant(config, name: str, plan: reproduce.Plan):
  """The variant's options on a reproduce config."""
  common.apply_overrides(config, VARIANTS[name])
  if name == 'progressive':
    config.train.image_size_schedule = tuple(
        (fraction * plan.num_epochs, size) for fraction, size in PROGRESSIVE)
  return config


def train_res(name: str) -> int:
  return VARIANTS[name].get('train.image_size', TRAIN_RES)


def run_variant(plan: reproduce.Plan, root: epath.Path, name: str, seed: int) -> None:
  """Train, choose K_test on the held-out slice, fine-tune there, evaluate on validation."""
  workdir, k_train = root / name / f's{seed}', train_res(name)
  config = apply_variant(reproduce.train_config(plan, k_train, seed), name, plan)
  reproduce.train_once(plan, config, workdir / 'train')
  trained = workdir / 'train' / 'checkpoints' / 'train'
  select = apply_variant(reproduce.eval_config(
      plan, k_train, seed, trained, plan.select_resolutions(k_train),
      split=reproduce.HELDOUT_SPLIT), name, plan)
  reproduce.run_once(select, workdir / 'select')
  chosen = reproduce.best_heldout(workdir / 'select')['test_res']
  finetune = apply_variant(reproduce.finetune_config(
      plan, k_train, seed, trained, chosen, [k_train]), name, plan)
  reproduce.run_finetune(finetune, workdir / 'finetune')


def collect(root: epath.Path, name: str, seed: int):
  """A finished run's numbers, or None."""
  workdir, k_train = root / name / f's{seed}', train_res(name)
  records = reproduce.finished_sweep(workdir / 'finetune')
  if records is None:
    return None
  chosen = reproduce.best_heldout(workdir / 'select')['test_res']
  return {'seed': seed, 'train_res': k_train, 'test_res': chosen,
          'train_copied_from': reproduce.copied_from(workdir / 'train'),
          'trained_at_train_res': claims.top1_at(records, 'trained', k_train),
          'trained_at_chosen': claims.top1_at(records, 'trained', chosen),
          'finetuned_at_chosen': claims.top1_at(records, 'finetuned', chosen)}


def summarize(root: epath.Path, seeds, variants) -> dict:
  runs = {name: [collect(root, name, s) for s in seeds] for name in variants}
  field = lambda run, key: run[key] if run else None
  baseline = runs.get('baseline', [None] * len(seeds))
  results = {}
  for name, rs in runs.items():
    finetuned = [field(r, 'finetuned_at_chosen') for r in rs]
    trained = [field(r, 'trained_at_chosen') for r in rs]
    results[name] = {
        'runs': [r for r in rs if r],
        'trained_at_train_res': claims.stats([field(r, 'trained_at_train_res') for r in rs]),
        'trained_at_chosen': claims.stats(trained),
        'finetuned_at_chosen': claims.stats(finetuned),
        'fixres_gain': claims.compare(finetuned, trained),
        'chosen_gain': claims.compare(trained, [field(r, 'trained_at_train_res') for r in rs]),
        'finetuned_vs_baseline': claims.compare(
            finetuned, [field(r, 'finetuned_at_chosen') for r in baseline]),
    }
  return results


def format_report(results: dict, plan: reproduce.Plan, seconds, command: str) -> str:
  lines = [
      '# FixRes on top of modern training recipes, on the embedded dataset',
      '',
      f'Generated by `{command}` (do not edit). The demo network '
      f'(configs/demo.py) trained for {plan.num_epochs} epochs on train[:90%] of '
      f'{reproduce.DATASET} with each recipe; K_test chosen by the trained network\'s '
      f'{common.selection_words()} on the held-out train[90%:]; FixRes fine-tuning at that '
      'K_test with the demo\'s settings in the official \'sgd\' mode '
      f'(the last BN\'s statistics and the classifier); top-1 on {reproduce.EVAL_SPLIT}, '
      'mean ± std over seeds. Margins are per seed, resolved ("beyond") when the mean '
      f'exceeds {claims.SIGMAS:g} std of the per-seed differences, else bounded by the 95 % '
      't-interval of the mean difference (t with n - 1 degrees of freedom). Measured on a '
      'shared 2-core '
      'CPU machine' + (f' ({seconds / 60:.0f} min of runs this invocation).' if seconds else '.')
      + ' "not run": no finished run of that variant.',
      '',
      common.format_table(
          ['recipe', 'seeds', 'K_train', 'trained at K_train', 'K_test chosen',
           'trained at K_test', 'fine-tuned at K_test',
           'FixRes gain (fine-tuned - trained, at K_test)', 'fine-tuned vs baseline fine-tuned'],
          [[LABELS[name], r['trained_at_chosen']['n'], train_res(name),
            common.pct(r['trained_at_train_res']),
            ', '.join(str(run['test_res']) for run in r['runs']) or '-',
            common.pct(r['trained_at_chosen']), common.pct(r['finetuned_at_chosen']),
            claims.margin_text(r['fixres_gain']),
            'reference' if name == 'baseline' else claims.margin_text(r['finetuned_vs_baseline'])]
           for name, r in results.items()]),
  ]
  for extra in (variant_grid.reuse_line(results, LABELS),
                variant_grid.never_learned(results, LABELS, 'trained_at_train_res')):
    if extra:
      lines += ['', extra]
  lines += [
      '',
      'Recipes: `train.mixup_alpha=0.1, train.cutmix_alpha=1.0` (timm\'s Mixup with '
      'switch_prob 0.5, as A3); the A3-like recipe adds `train.optimizer=\'lamb\'` (lr 8e-3 '
      'per step, weight decay 0.02 on the weights only), `train.loss=\'bce\', '
      'train.bce_threshold=0.2`, `data.randaugment=\'rand-m6-mstd0.5-inc1\'` and a random '
      'classifier (`model.zero_init_head=False`: LAMB scales each layer\'s step by its weight '
      'norm, and with the demo\'s zero classifier every seed stayed at chance), keeping '
      'the demo\'s epochs, warm-up, cosine schedule and batch (A3 trains 100 epochs at batch '
      f'2048 on ImageNet); progressive resizing trains at {PROGRESSIVE[0][1]} px for the first '
      f'half, {PROGRESSIVE[1][1]} px for the next quarter and {PROGRESSIVE[2][1]} px for the '
      f'last (`train.image_size_schedule`), fewer training pixels than the baseline\'s '
      f'{TRAIN_RES} px throughout, so its K_train is {PROGRESSIVE[2][1]}. The fine-tuning '
      'always minimises softmax cross-entropy, the BCE-trained head included. A tiny network '
      'on 10 synthetic texture classes for a few epochs says nothing about ImageNet; the '
      'table is what these runs gave, not a prediction.', '']
  return '\n'.join(lines)


GRID = variant_grid.Grid('modern', VARIANTS, run_variant, summarize, format_report, TRAIN_RES)

if __name__ == '__main__':
  variant_grid.run(GRID)
