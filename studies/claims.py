"""Statistics over seeds and the verdicts of the paper's claims, from collected run records.

Pure functions, no files: studies/reproduce.py collects one record per (K_train, seed) run
and passes them here as runs_by_res, {K_train: [run, ...]} (each K_train with at least one run
whose K_test was selected, and swept). A run record holds
  train_res, seed, train_seconds, analytic_test_res, selected_test_res;
  sweep: [{model, test_res, top1, ...}] over the validation sweep ('trained', 'parametric');
  variants: {name: {test_res, top1, finetune_seconds, epochs, ...}} of the fine-tuning runs.
The text forms of a comparison and a verdict (margin_text, verdict) are shared by every
generated report (RESULTS.md, DEMO.md, RECIPE.md, MODERN.md); a stat's is common.pct.

A verdict is True (holds), False (does not hold) or None (undecided: runs missing, or one
seed, which gives no spread). A variant a run did not make counts as missing; a name that no
record can hold (a misspelt model, variant or field) raises UnknownFieldError instead, so that
a typo never reads as "not run".
"""

import re
from typing import Dict, Optional

import numpy as np

SIGMAS = 3.0  # the claims' margin, in standard deviations of the per-seed differences
NO_FINETUNING = 'trained (no fine-tuning)'
VERDICTS = {True: 'HOLDS', False: 'DOES NOT HOLD', None: 'UNDECIDED (runs missing, or one seed)'}

# What a record can hold: the sweep's models (analysis.py), the fine-tuning variants
# studies/reproduce.py runs (plus ft_at_K, fine-tuned at another K_train's K) and their fields.
MODELS = ('trained', 'finetuned', 'parametric')
VARIANTS = ('ft_selected', 'ft_analytic', 'ft_train_res', 'bn_stats_only', 'cached', 'sgd_long',
            'cached_long')
VARIANT_AT = re.compile(r'ft_at_\d+')
VARIANT_FIELDS = ('test_res', 'top1', 'finetune_seconds', 'mode', 'epochs', 'curve')


class UnknownFieldError(KeyError):
  """A model, variant or field that no record defines: a misspelling, not a missing run."""

  def __str__(self):
    return self.args[0]


class NotRun(LookupError):
  """A variant a run record could hold but does not: that run did not make it."""


def check_name(kind: str, name: str, known, pattern=None) -> None:
  """Raises UnknownFieldError unless `name` is one of `known` (or matches `pattern`)."""
  if name in known or (pattern is not None and pattern.fullmatch(name)):
    return
  extra = f' or {pattern.pattern}' if pattern is not None else ''
  raise UnknownFieldError(f'No record defines the {kind} {name!r} (a misspelling?): use one '
                          f'of {tuple(known)}{extra}.')


# ---------------------------------------------------------------------------------------------
# Statistics


def top1_at(records: list, model: str, test_res: int) -> Optional[float]:
  """Top-1 of `model` at test_res in sweep.json records; None when not swept there.

  Raises:
    UnknownFieldError: `model` is none of MODELS.
  """
  check_name('model', model, MODELS)
  for r in records:
    if r['model'] == model and r['test_res'] == test_res:
      return r['top1']
  return None


def stats(values) -> dict:
  """Mean and standard deviation (ddof=1, over seeds) of the non-missing values."""
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None, 'n': 0}
  return {'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          'n': len(values), 'values': [float(v) for v in values]}


def compare(a: list, b: list) -> dict:
  """a - b over the seeds where both exist: the margin (mean), its spread, and the verdict.

  The spread is the standard deviation (ddof=1) of the per-seed differences (the seeds pair
  the same trained network); the comparison holds when margin > SIGMAS x spread (and > 0).
  An effect of either sign is 'resolved' when |margin| > SIGMAS x spread; 'ci95' bounds it
  either way: the 95 % t-interval of the mean difference (t with n - 1 degrees of freedom).
  """
  pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
  if len(pairs) < 2:  # no spread from one seed
    return {'n': len(pairs), 'holds': None,
            'margin': float(pairs[0][0] - pairs[0][1]) if pairs else None}
  diffs = np.array([x - y for x, y in pairs])
  spread = float(np.std(diffs, ddof=1))
  margin = float(diffs.mean())
  beyond = bool(margin > 0 and margin > SIGMAS * spread)
  # 'holds' starts as 'beyond'; a claim may judge by another rule (see claim_b).
  return {'n': len(diffs), 'margin': margin, 'spread': spread,
          'diffs': diffs.tolist(), 'every_seed': bool((diffs > 0).all()),
          'beyond': beyond, 'holds': beyond,
          'resolved': bool(abs(margin) > SIGMAS * spread), 'ci95': interval95(diffs)}


def interval95(diffs: np.ndarray) -> list:
  """The 95 % t-interval of the mean of paired differences, [low, high]."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  half = (scipy_stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1)
          / np.sqrt(len(diffs)))
  return [float(diffs.mean() - half), float(diffs.mean() + half)]


def per_seed(runs: list, fn) -> list:
  """fn(run) for each run; None where the run did not make a variant fn reads (NotRun).

  Anything else fn raises (UnknownFieldError for a misspelt name, KeyError for a run field
  no record holds) goes to the caller: a typo must not read as a run that is missing.
  """
  out = []
  for run in runs:
    try:
      out.append(fn(run))
    except NotRun:
      out.append(None)
  return out


def trained_at(run: dict, test_res, model: str = 'trained'):
  return top1_at(run['sweep'], model, test_res)


def variant(run: dict, name: str, field: str = 'top1'):
  """`field` of the fine-tuning variant `name` of a run record.

  Raises:
    UnknownFieldError: `name` is no variant a run makes, or `field` no field of one.
    NotRun: this run did not make the variant (per_seed counts it as missing).
  """
  check_name('variant', name, VARIANTS, VARIANT_AT)
  check_name('variant field', field, VARIANT_FIELDS)
  if name not in run['variants']:
    raise NotRun(f"seed {run.get('seed')}: no {name!r} run")
  return run['variants'][name][field]


def finetuned_at(run: dict, test_res: int) -> Optional[float]:
  """Top-1 of the 'sgd' fine-tuning at test_res (whichever variant ran there); None when
  none did."""
  for name in (f'ft_at_{test_res}', 'ft_selected', 'ft_analytic', 'ft_train_res'):
    found = run['variants'].get(name)
    if found and found['test_res'] == test_res:
      return found['top1']
  return None


# ---------------------------------------------------------------------------------------------
# Claims


def combine(verdicts) -> Optional[bool]:
  """False if any is False, else None if any is None (not run) or there are none, else True."""
  verdicts = list(verdicts)
  if any(v is False for v in verdicts):
    return False
  if not verdicts or any(v is None for v in verdicts):
    return None
  return True


def beats(c: dict) -> Optional[bool]:
  """A control is beaten when the mean margin is positive and every seed is ahead."""
  if c['n'] < 2:
    return None
  return bool(c['margin'] > 0 and c['every_seed'])


def claim_a(runs_by_res: Dict[int, list]) -> dict:
  """Best K_test (held-out) > K_train, and its accuracy beats K_test = K_train beyond 3 std."""
  rows = {}
  for train_res, runs in runs_by_res.items():
    selected = [r['selected_test_res'] for r in runs]
    at_selected = per_seed(runs, lambda r: trained_at(r, r['selected_test_res']))
    at_train = per_seed(runs, lambda r: trained_at(r, r['train_res']))
    cmp = compare(at_selected, at_train)
    above = all(k > train_res for k in selected)
    rows[train_res] = {'selected_test_res': selected, 'top1_selected': stats(at_selected),
                       'top1_train_res': stats(at_train), 'compare': cmp,
                       'selected_above_train_res': above,
                       'holds': combine([above, cmp['holds']])}
  return {'rows': rows, 'holds': combine(r['holds'] for r in rows.values())}


def claim_b(runs_by_res: Dict[int, list]) -> dict:
  """Fine-tuning at the selected K_test adds beyond 3 std and beats the three controls."""
  rows = {}
  for train_res, runs in runs_by_res.items():
    tuned = per_seed(runs, lambda r: variant(r, 'ft_selected'))
    controls = {
        NO_FINETUNING: per_seed(runs, lambda r: trained_at(
            r, r['selected_test_res'])),
        'fine-tuned at K_train': per_seed(runs, lambda r: variant(r, 'ft_train_res')),
        'last-BN statistics only': per_seed(runs, lambda r: variant(r, 'bn_stats_only')),
        'parametric adaptation': per_seed(runs, lambda r: trained_at(
            r, r['selected_test_res'], 'parametric')),
    }
    comparisons = {name: compare(tuned, values) for name, values in controls.items()}
    for name, c in comparisons.items():  # beyond 3 std over no fine-tuning; ahead of controls
      if name != NO_FINETUNING:
        c['holds'] = beats(c)
    rows[train_res] = {
        'top1_ft_selected': stats(tuned),
        'top1_ft_analytic': stats(per_seed(runs, lambda r: finetuned_at(
            r, r['analytic_test_res']))),
        'controls': {name: stats(values) for name, values in controls.items()},
        'compare': comparisons,
        'holds': combine(c['holds'] for c in comparisons.values())}
  return {'rows': rows, 'pooled': sign_tests(rows),
          'holds': combine(r['holds'] for r in rows.values())}


def sign_tests(rows: dict) -> dict:
  """Per control, over every trained network of the grid: how many are ahead after
  fine-tuning, and the one-sided sign-test p-value of that count (no effect: p = 1/2 each)."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  pooled = {}
  for name in next(iter(rows.values()))['compare'] if rows else ():
    diffs = [d for row in rows.values() for d in row['compare'][name].get('diffs', [])]
    ahead = sum(d > 0 for d in diffs)
    pooled[name] = {'ahead': ahead, 'n': len(diffs),
                    'p': float(scipy_stats.binomtest(ahead, len(diffs), 0.5,
                                                     alternative='greater').pvalue)
                    if diffs else None}
  return pooled


def claim_c(runs_by_res: Dict[int, list], flops: Dict[int, float]) -> dict:
  """The lowest K_train, fine-tuned at a higher K, against the network trained at that K.

  Args:
    runs_by_res: the run records by K_train.
    flops: training FLOPs per image, by K_train.

  Returns:
    a row per K_train above the lowest (none, and an undecided claim, with one K_train).
  """
  low = min(runs_by_res)
  rows = {}
  for high in (k for k in sorted(runs_by_res) if k > low):
    tuned_values = per_seed(runs_by_res[low], lambda r, h=high: finetuned_at(r, h))
    native_values = per_seed(runs_by_res[high], lambda r: trained_at(r, r['train_res']))
    tuned, native = stats(tuned_values), stats(native_values)
    native_best = stats(per_seed(runs_by_res[high], lambda r: trained_at(
        r, r['selected_test_res'])))
    seconds = {k: stats(per_seed(runs_by_res[k], lambda r: r['train_seconds']))
               for k in (low, high)}
    holds = (None if tuned['mean'] is None or native['mean'] is None else
             bool(tuned['mean'] >= native['mean'] - native['std']))
    # Paired by seed (the same seed's initialisation and example order at both K_train).
    by_seed = [{r['seed']: v for r, v in zip(runs_by_res[k], values)}
               for k, values in ((low, tuned_values), (high, native_values))]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    rows[high] = {'low': low, 'top1_low_finetuned': tuned, 'top1_high_at_high': native,
                  'compare': compare([by_seed[0][s] for s in seeds],
                                     [by_seed[1][s] for s in seeds]),
                  'top1_high_at_selected': native_best, 'train_seconds': seconds,
                  'time_ratio': (seconds[low]['mean'] / seconds[high]['mean']
                                 if seconds[high]['mean'] else None),
                  'flops_ratio': flops[low] / flops[high], 'holds': holds}
  # The claim is that *a* higher K_test reaches the network trained there; every K is shown.
  verdicts = [r['holds'] for r in rows.values()]
  holds = True if True in verdicts else combine(verdicts)
  return {'rows': rows, 'holds': holds}


def claim_cached(runs_by_res: Dict[int, list]) -> dict:
  """'cached' against 'sgd' fine-tuning at the same K_test and head epochs."""
  rows = {}
  for train_res, runs in runs_by_res.items():
    sgd = per_seed(runs, lambda r: variant(r, 'ft_selected'))
    cached = per_seed(runs, lambda r: variant(r, 'cached'))
    sgd_s = stats(per_seed(runs, lambda r: variant(r, 'ft_selected', 'finetune_seconds')))
    cached_s = stats(per_seed(runs, lambda r: variant(r, 'cached', 'finetune_seconds')))
    cmp = compare(cached, sgd)
    within = (None if cmp['n'] < 2 else
              bool(cmp['margin'] >= 0 or
                   -cmp['margin'] <= max(stats(sgd)['std'], cmp['spread'])))
    rows[train_res] = {'sgd': stats(sgd), 'cached': stats(cached), 'compare': cmp,
                       'sgd_seconds': sgd_s, 'cached_seconds': cached_s,
                       'speedup': (sgd_s['mean'] / cached_s['mean']
                                   if cached_s['mean'] else None),
                       'holds': within}
  long = {}
  for train_res, runs in runs_by_res.items():
    for run in runs:
      if {'sgd_long', 'cached_long'} <= set(run['variants']):
        sgd, cached = run['variants']['sgd_long'], run['variants']['cached_long']
        long[train_res] = {'seed': run['seed'], 'epochs': sgd['epochs'],
                           'test_res': sgd['test_res'], 'sgd': sgd['top1'],
                           'cached': cached['top1'], 'sgd_seconds': sgd['finetune_seconds'],
                           'cached_seconds': cached['finetune_seconds']}
  return {'rows': rows, 'long': long,
          'holds': combine(r['holds'] for r in rows.values())}


def evaluate(runs_by_res: Dict[int, list], flops: Dict[int, float]) -> dict:
  """Every claim's rows and verdict: (a), (b), (c) and 'cached' against 'sgd'."""
  return {'a': claim_a(runs_by_res), 'b': claim_b(runs_by_res),
          'c': claim_c(runs_by_res, flops), 'cached_vs_sgd': claim_cached(runs_by_res)}


# ---------------------------------------------------------------------------------------------
# Text


def margin_text(c: dict) -> str:
  """compare()'s margin in points, with its spread, whether it is resolved (beyond SIGMAS std,
  either sign), the 95 % interval where it is not, and the per-seed values."""
  if not c['n']:
    return 'not run'
  if c['n'] < 2:
    return f"{100 * c['margin']:+.2f} pts (one seed: no spread)"
  if abs(c['margin']) > SIGMAS * c['spread']:  # compare()'s 'resolved', for older records too
    resolution = f'beyond {SIGMAS:g} std'
  else:  # not resolved: the interval bounds the effect instead
    low, high = c.get('ci95') or interval95(np.array(c['diffs']))
    resolution = (f'NOT beyond {SIGMAS:g} std, 95 % interval {100 * low:+.2f} to '
                  f'{100 * high:+.2f}')
  return (f"{100 * c['margin']:+.2f} pts (per-seed spread {100 * c['spread']:.2f}, "
          f"{resolution}; per seed {', '.join(f'{100 * d:+.1f}' for d in c['diffs'])})")


def verdict(holds: Optional[bool]) -> str:
  return VERDICTS[holds]
