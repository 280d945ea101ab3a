"""RESULTS.md, results.json and the figures of the reproduction (studies/reproduce.py).

Every number written comes from `results` (results.json's content) and the collected run
records; the verdicts come from studies/claims.py, nothing here reads a run's files.
"""

import json
from typing import Dict, List, Optional

from etils import epath
import numpy as np

from studies import claims
from studies import common


def write(out: epath.Path, config, results: dict, runs_by_res: Dict[int, list]) -> None:
  """Writes OUT/results.json, the two figures and OUT/RESULTS.md.

  Args:
    out: the output folder (made if missing).
    config: the reproduction's base config (its data, model and schedules are described).
    results: what results.json holds.
    runs_by_res: the collected run records, {K_train: [run, ...]}.
  """
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps(results, indent=1))
  plot_accuracy(runs_by_res, results['analytic'], out / 'accuracy_vs_test_res.png')
  plot_zero_fraction(runs_by_res, out / 'zero_fraction.png')
  (out / 'RESULTS.md').write_text(format_report(config, results, runs_by_res))


# ---------------------------------------------------------------------------------------------
# Figures


def curve_stats(runs: list, fn) -> Dict[int, dict]:
  """{test_res: stats over seeds} of the per-seed curves fn(run) -> {test_res: value}."""
  curves = claims.per_seed(runs, fn)
  resolutions = sorted({k for c in curves if c for k in c})
  return {k: claims.stats([c.get(k) if c else None for c in curves]) for k in resolutions}


def sweep_curve(model: str, field: str = 'top1'):
  return lambda r: {x['test_res']: x[field] for x in r['sweep'] if x['model'] == model}


def variant_curve(name: str, field: str = 'top1'):
  return lambda r: {x['test_res']: x[field] for x in claims.variant(r, name, 'curve')}


def mean_points(runs: list, fn) -> list:
  """[(test_res, stats)] of the curves fn(run), where some seed has a value."""
  return [(k, v) for k, v in curve_stats(runs, fn).items() if v['mean'] is not None]


def plot_accuracy(runs_by_res: Dict[int, list], analytic: Dict[int, dict], path: epath.Path):
  """Top-1 against K_test, one panel per K_train: trained, parametric, fine-tuned."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(4.4 * len(runs_by_res), 3.8), dpi=110)
  axes = fig.subplots(1, len(runs_by_res), squeeze=False)[0]
  curves = (('trained', sweep_curve('trained')), ('parametric', sweep_curve('parametric')),
            ('fine-tuned at selected K_test', variant_curve('ft_selected')))
  for ax, (train_res, runs) in zip(axes, sorted(runs_by_res.items())):
    for label, fn in curves:
      points = mean_points(runs, fn)
      if points:
        x = [k for k, _ in points]
        y = np.array([100 * v['mean'] for _, v in points])
        e = np.array([100 * v['std'] for _, v in points])
        ax.plot(x, y, marker='o', markersize=3, label=label)
        ax.fill_between(x, y - e, y + e, alpha=0.2)
    ax.axvline(train_res, color='black', linestyle=':', label=f'K_train = {train_res}')
    k_star = analytic[train_res]['test_res_exact']
    ax.axvline(k_star, color='gray', linestyle='--', label=f'analytic K_test* = {k_star:.0f}')
    ax.set_title(f'trained at {train_res} px ({len(runs)} seeds)')
    ax.set_xlabel('test resolution K_test (px)')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('validation top-1 (%), mean ± std')
  axes[0].legend(fontsize='small')
  common.save_figure(fig, path)


def plot_zero_fraction(runs_by_res: Dict[int, list], path: epath.Path):
  """Fraction of exactly-zero pooled features against K_test, per K_train."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(6.0, 4.0), dpi=110)
  ax = fig.add_subplot()
  for train_res, runs in sorted(runs_by_res.items()):
    for label, fn, style in (('trained', sweep_curve('trained', 'zero_fraction'), '-'),
                             ('fine-tuned', variant_curve('ft_selected', 'zero_fraction'),
                              '--')):
      points = mean_points(runs, fn)
      if points:
        line, = ax.plot([k for k, _ in points], [100 * v['mean'] for _, v in points],
                        style, marker='o', markersize=3,
                        label=f'K_train {train_res}, {label}')
        if label == 'trained':
          ax.axvline(train_res, color=line.get_color(), linestyle=':', alpha=0.5)
  ax.set_xlabel('test resolution K_test (px)')
  ax.set_ylabel('pooled features exactly zero (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  common.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Markdown


def format_report(config, results: dict, runs_by_res: Dict[int, list]) -> str:
  """RESULTS.md, every number from `results`."""
  plan, by_claim = results['plan'], results['claims']
  seeds_done = {k: [r['seed'] for r in runs] for k, runs in runs_by_res.items()}
  missing = [(k, s) for k in plan['train_res'] for s in plan['seeds']
             if s not in seeds_done.get(k, [])]
  lines = [
      '# FixRes on the embedded dataset: results',
      '',
      'Generated by `studies/reproduce.py`; do not edit by hand. This file was written by',
      '',
      f"    {results['command']}",
      '',
      'from the runs that `--phase=all` (the default) makes and keeps under --results_root, one '
      'workdir per run; a re-run skips finished runs. Runs for different K_train or seeds may '
      'come from separate invocations of the same command with --train_res/--seeds subsets '
      '(run in parallel here).',
      '',
      f"Time: {results['seconds_elapsed'] / 60:.1f} min from the first run's start to the last "
      f"run's end; {results['seconds_all_runs'] / 60:.1f} min summed over all runs (they "
      'overlapped); on a 2-core CPU shared with other jobs, so every wall time here is noisy.'
      + (' **--quick: a tiny CI grid; the numbers mean nothing.**' if plan['quick'] else ''),
      '',
      '## Setup',
      '',
      f"- Data: `{config.data.name}`; networks are trained and fine-tuned on "
      f"`{results['fit_split']}`, the fine-tuning K_test is selected by the trained network's "
      f"{common.selection_words(config.finetune.auto_metric)} on the held-out "
      f"`{results['heldout_split']}` (never on validation), and every accuracy below is on "
      f"`{results['eval_split']}`.",
      f"- Model and training: configs/demo.py (ResNet, stages {tuple(config.model.stage_sizes)},"
      f" {config.model.block} blocks, widths {config.model.num_filters}-"
      f"{config.model.num_filters * 2 ** (len(config.model.stage_sizes) - 1)}), "
      f"{config.train.num_epochs} epochs at every K_train, batch {config.train.batch_size}, "
      f"{config.train.schedule} schedule, base lr {config.train.base_lr}; "
      f"`{config.data.crop}` RandomResizedCrop.",
      format_epochs_selection(results['epochs_selection'], results['heldout_split'],
                              config.train.num_epochs),
      *format_reuse(results['runs']),
      f"- FixRes fine-tuning ('{config.finetune.mode}' mode): {config.finetune.num_epochs} "
      f"epochs, batch "
      f"{config.finetune.batch_size}, base lr {config.finetune.base_lr} (per 512), augment "
      f"`{config.finetune.augment}`; the last BN's running statistics and the classifier.",
      f"- K_train grid {list(plan['train_res'])}, seeds {list(plan['seeds'])}"
      + (f"; NOT finished: {missing}." if missing else '; all runs finished.'),
      f"- Statistics: mean ± std over seeds (std with ddof=1). A comparison A > B "
      f"'beyond {claims.SIGMAS:g} std' means: the mean of the per-seed differences A - B "
      '(each seed is one trained network, so the differences are paired) exceeds '
      f'{claims.SIGMAS:g} times their standard deviation. With 3 seeds this is a strict bar '
      '(std of 3 values is noisy); a difference that is not beyond it is bounded by the 95 % '
      't-interval of the mean difference (t with n - 1 degrees of freedom), shown beside it.',
      '',
      '## Claims',
      '']
  lines += format_claim_a(by_claim['a']) + format_claim_b(by_claim['b'])
  lines += format_claim_c(by_claim['c'])
  lines += format_cached(by_claim['cached_vs_sgd'], config.finetune.num_epochs)
  lines += format_tables(results, runs_by_res)
  return '\n'.join(lines) + '\n'


def format_reuse(runs: List[dict]) -> List[str]:
  """Which trainings are copies of the demo's (reproduce.train_once), as a Setup line."""
  copied = [r for r in runs if r.get('train_copied_from')]
  if not copied:
    return []
  return ['- Reused, not retrained: the training of ' + ', '.join(
      f"K_train {r['train_res']} seed {r['seed']} (`{r['train_copied_from']}`)" for r in copied)
      + " is the finished run of README's demo command with that seed, copied from its workdir "
      '(its config trains exactly as this grid\'s run would: no train-stage field differs); '
      'everything after training is run here.']


def format_epochs_selection(record: Optional[dict], heldout_split: str, epochs: int) -> str:
  if not record:
    return f'- Training epochs: {epochs}, fixed (no choice made).'
  scores = ', '.join(f'{e} epochs {100 * v:.1f}%' for e, v in record['heldout_top1'].items())
  return (f"- Training epochs chosen on `{heldout_split}`: K_train {record['train_res']}, seed "
          f"{record['seed']}, best held-out top-1 over K_test: {scores}; chosen: "
          f"{record['chosen']}.")


def format_claim_a(claim: dict) -> List[str]:
  rows = [[k, row['selected_test_res'], common.pct(row['top1_train_res']),
           common.pct(row['top1_selected']), claims.margin_text(row['compare']),
           claims.verdict(row['holds'])]
          for k, row in sorted(claim['rows'].items())]
  return [f"### (a) The best K_test is above K_train, beyond {claims.SIGMAS:g} std: "
          f"{claims.verdict(claim['holds'])}", '',
          common.format_table(['K_train', 'K_test selected (per seed)', 'top-1 at K_train',
                               'top-1 at selected', 'margin', 'verdict'], rows), '']


def format_claim_b(claim: dict) -> List[str]:
  lines = [f"### (b) FixRes fine-tuning at the selected K_test adds more, beyond "
           f"{claims.SIGMAS:g} std, and beats the controls: {claims.verdict(claim['holds'])}",
           '',
           f"Over no fine-tuning the margin must exceed {claims.SIGMAS:g} std of the per-seed "
           'differences; a control is beaten when the mean margin is positive and every seed is '
           f"ahead (whether that margin is also beyond {claims.SIGMAS:g} std is shown).", '',
           common.format_table(
               ['K_train', 'fine-tuned at selected', 'at analytic K_test*', 'against',
                'control top-1', 'margin', 'verdict'],
               [[k, common.pct(row['top1_ft_selected']), common.pct(row['top1_ft_analytic']),
                 name, common.pct(row['controls'][name]), claims.margin_text(c),
                 claims.verdict(c['holds'])]
                for k, row in sorted(claim['rows'].items())
                for name, c in row['compare'].items()])]
  pooled = [f"{name}: {t['ahead']} of {t['n']} (p = {t['p']:.3f})"
            for name, t in claim['pooled'].items() if t['n']]
  if pooled:
    lines += ['', 'Over every trained network of the grid, fine-tuned networks ahead of each '
              'alternative (one-sided sign test): ' + '; '.join(pooled) + '.']
  return lines + ['']


def format_claim_c(claim: dict) -> List[str]:
  lines = ["### (c) Trained at the lowest K_train and fine-tuned at a higher K_test, it "
           'reaches the network trained at that K ('
           + '; '.join(f"K = {k}: {claims.verdict(row['holds'])}"
                       for k, row in sorted(claim['rows'].items()))
           + f"): {claims.verdict(claim['holds'])}", '',
           'Holds at K when the low-resolution network fine-tuned at K is at least the mean '
           'minus one std of the network trained and tested at K; the claim holds when it holds '
           'at some K above the lowest K_train. Training time is the median step '
           'time times the number of steps (the same epochs at every K_train); other jobs shared '
           'the 2 cores unevenly, so the FLOPs ratio (XLA cost analysis of one train_step) is '
           'the reliable measure of cost.', '']
  rows = []
  for high, row in sorted(claim['rows'].items()):
    ratio = f"{row['time_ratio']:.2f}" if row['time_ratio'] else 'n/a'
    rows.append([row['low'], high, common.pct(row['top1_low_finetuned']),
                 common.pct(row['top1_high_at_high']), claims.margin_text(row['compare']),
                 common.pct(row['top1_high_at_selected']),
                 f"{ratio} ({row['train_seconds'][row['low']]['mean']:.0f} s / "
                 f"{row['train_seconds'][high]['mean']:.0f} s)", f"{row['flops_ratio']:.2f}",
                 claims.verdict(row['holds'])])
  return lines + [common.format_table(
      ['trained at', 'fine-tuned at K', 'its top-1', 'trained at K, tested at K',
       'difference (paired by seed)', 'trained at K, at its selected K_test', 'train time ratio (median step time x steps)',
       'FLOPs ratio', 'verdict'], rows), '']


def format_cached(claim: dict, epochs) -> List[str]:
  lines = ["### 'cached' against 'sgd' fine-tuning, same K_test and head epochs: "
           f"{claims.verdict(claim['holds'])}", '',
           "Holds when 'cached' is not below 'sgd' by more than the larger of sgd's seed "
           'std and the per-seed spread. Wall times are whole finetune-stage runs (dataset '
           "loading and compilation included). 'cached' costs two forward passes plus the head's "
           "epochs on stored features, 'sgd' one forward pass per epoch, so the speed-up grows "
           f"with the epochs; here both ran {epochs} epochs (the demo's).", '']
  rows = []
  for k, row in sorted(claim['rows'].items()):
    speedup = f"{row['speedup']:.1f}x" if row['speedup'] else 'n/a'
    seconds = [f"{x['mean']:.1f}" if x['mean'] is not None else 'not run'
               for x in (row['sgd_seconds'], row['cached_seconds'])]
    rows.append([k, common.pct(row['sgd']), common.pct(row['cached']),
                 claims.margin_text(row['compare']), *seconds, speedup])
  lines.append(common.format_table(['K_train', 'sgd top-1', 'cached top-1', 'cached - sgd',
                                    'sgd s', 'cached s', 'speed-up'], rows))
  if not claim['long']:
    lines += ['', "'sgd' against 'cached' at many head epochs was not run (--long_epochs=0)."]
  for k, row in sorted(claim['long'].items()):
    lines += ['', f"At {row['epochs']} epochs (K_train {k}, seed {row['seed']}, K_test "
              f"{row['test_res']}, one run each): 'sgd' {100 * row['sgd']:.2f}% in "
              f"{row['sgd_seconds']:.0f} s, 'cached' {100 * row['cached']:.2f}% in "
              f"{row['cached_seconds']:.0f} s: {row['sgd_seconds'] / row['cached_seconds']:.1f}x "
              'faster.']
  return lines + ['']


def over_seeds(analytic: dict, field: str, spec: str) -> str:
  """An analytic K_test* field: one value when every seed's rounds alike, else their range."""
  values = [v[field] for v in analytic.get('by_seed', {}).values()] or [analytic[field]]
  low, high = format(min(values), spec), format(max(values), spec)
  return low if low == high else f'{low}-{high} over the seeds'


def format_tables(results: dict, runs_by_res: Dict[int, list]) -> List[str]:
  lines = ['## Test-resolution sweeps (validation top-1 %, mean ± std over seeds)', '',
           '![accuracy against K_test](accuracy_vs_test_res.png)', '',
           '![zero fraction](zero_fraction.png)', '']
  for k, runs in sorted(runs_by_res.items()):
    analytic = results['analytic'][k]
    train_seconds = claims.stats([r['train_seconds'] for r in runs])['mean']
    wall_seconds = claims.stats([r['train_wall_seconds'] for r in runs])['mean']
    lines += [f"### K_train = {k} (analytic K_test* = "
              f"{over_seeds(analytic, 'test_res_exact', '.1f')}, "
              f"E[sigma] = {over_seeds(analytic, 'expected_sigma', '.3f')}; train time "
              f"{train_seconds:.0f} s (median step x steps; wall {wall_seconds:.0f} s), "
              f"{results['train_flops_per_image'][k] / 1e6:.1f} MFLOPs per training image)",
              '']
    trained = curve_stats(runs, sweep_curve('trained'))
    parametric = curve_stats(runs, sweep_curve('parametric'))
    tuned = curve_stats(runs, variant_curve('ft_selected'))
    zeros = curve_stats(runs, sweep_curve('trained', 'zero_fraction'))
    lines += [common.format_table(
        ['K_test', 'trained', 'parametric', 'fine-tuned at selected', 'zero features (trained)'],
        [[res, common.pct(trained[res]), common.pct(parametric.get(res)),
          common.pct(tuned.get(res)), common.pct(zeros.get(res))] for res in sorted(trained)]),
        '']
  return lines
