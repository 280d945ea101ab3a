"""The reproduction's statistics and verdicts (studies/claims.py) on synthetic run records."""

import pytest

from studies import claims
from studies import common

# Small per-seed jitter: the differences it leaves are far inside 3 std of a 0.1 margin.
JITTER = (0.0, 0.002, 0.001)


def run_record(seed, train_res=32, selected=40, trained=(0.50, 0.60), parametric=0.55,
               variants=None):
  """One (K_train, seed) record as reproduce.collect_run builds it.

  Args:
    trained: the trained network's top-1 at K_train and at the selected K_test.
    variants: {name: (test_res, top1)} of the fine-tuning runs.
  """
  at_train, at_selected = trained
  sweep = [{'model': 'trained', 'test_res': train_res, 'top1': at_train},
           {'model': 'trained', 'test_res': selected, 'top1': at_selected},
           {'model': 'parametric', 'test_res': selected, 'top1': parametric}]
  return {
      'train_res': train_res, 'seed': seed, 'train_seconds': 10.0 + seed,
      'analytic_test_res': selected, 'selected_test_res': selected, 'sweep': sweep,
      'variants': {name: {'test_res': k, 'top1': top1, 'finetune_seconds': 5.0, 'epochs': 1}
                   for name, (k, top1) in (variants or {}).items()}}


def runs_a(gain, seeds=3, selected=40):
  """Runs whose trained network gains `gain` (+ jitter) at the selected K_test."""
  return [run_record(s, selected=selected, trained=(0.5 + JITTER[s], 0.5 + gain + 2 * JITTER[s]))
          for s in range(seeds)]


def runs_b(tuned_gain=0.1, control_gains=None, seeds=3):
  """Runs with every fine-tuning variant: ft_selected is `tuned_gain` (+ jitter) above the
  trained network at the selected K_test, each control `control_gains[name]` above it
  (default 0). A gain is a number, or a tuple of one per seed."""
  gains = {'parametric': 0.0, 'ft_train_res': 0.0, 'bn_stats_only': 0.0, 'cached': tuned_gain,
           **(control_gains or {})}
  runs = []
  for s in range(seeds):
    base = 0.6 + JITTER[s]
    at = {name: base + seed_value(g, s) for name, g in gains.items()}
    runs.append(run_record(s, trained=(0.5, base), parametric=at['parametric'],
                           variants={'ft_selected': (40, base + seed_value(tuned_gain, s)
                                                     + JITTER[s]),
                                     'ft_train_res': (32, at['ft_train_res']),
                                     'bn_stats_only': (40, at['bn_stats_only']),
                                     'cached': (40, at['cached'])}))
  return runs


def seed_value(value, seed):
  return value[seed] if isinstance(value, tuple) else value


def test_stats_are_mean_and_sample_std_over_present_values():
  s = claims.stats([0.5, None, 0.7, 0.9])
  assert s['mean'] == pytest.approx(0.7)
  assert s['std'] == pytest.approx(0.2)  # ddof=1; ddof=0 would give 0.163
  assert (s['n'], s['values']) == (3, [0.5, 0.7, 0.9])
  assert claims.stats([0.6])['std'] == 0.0
  assert claims.stats([None, None]) == {'mean': None, 'std': None, 'n': 0}


def test_compare_pairs_seeds_and_needs_a_margin_beyond_3_std():
  c = claims.compare([0.8, 0.9, 0.7], [0.5, 0.6, 0.5])
  assert c['diffs'] == pytest.approx([0.3, 0.3, 0.2])
  assert c['margin'] == pytest.approx(0.8 / 3)
  assert c['spread'] == pytest.approx(0.057735, abs=1e-6)  # std of the differences, ddof=1
  assert c['every_seed'] and c['beyond'] and c['holds']

  noisy = claims.compare([0.8, 0.5, 0.7], [0.5, 0.6, 0.5])  # +0.3, -0.1, +0.2
  assert noisy['margin'] == pytest.approx(0.4 / 3)
  assert not noisy['every_seed'] and not noisy['beyond'] and noisy['holds'] is False

  # An effect of either sign is resolved beyond 3 std, or bounded by the 95 % t-interval.
  assert c['resolved'] and claims.compare([0.5, 0.6, 0.5], [0.8, 0.9, 0.7])['resolved']
  assert not noisy['resolved']
  half = 4.302653 * noisy['spread'] / 3 ** 0.5  # t(0.975, 2 dof) x standard error
  assert noisy['ci95'] == pytest.approx([noisy['margin'] - half, noisy['margin'] + half])

  # Only seeds with both values pair up: one pair gives a margin but no verdict.
  one = claims.compare([0.8, None, 0.7], [0.5, 0.6, None])
  assert one == {'n': 1, 'holds': None, 'margin': pytest.approx(0.3)}
  assert claims.compare([None], [0.5]) == {'n': 0, 'holds': None, 'margin': None}


@pytest.mark.parametrize('verdicts,expected', [
    ([True, True], True), ([True, None], None), ([None, False], False), ([True, False], False),
    ([], None)])
def test_combine(verdicts, expected):
  assert claims.combine(verdicts) is expected


def test_claim_a_holds_when_every_seed_gains_beyond_3_std():
  claim = claims.claim_a({32: runs_a(gain=0.1)})
  row = claim['rows'][32]
  assert row['selected_test_res'] == [40, 40, 40] and row['selected_above_train_res']
  assert row['compare']['margin'] == pytest.approx(0.1 + sum(JITTER) / 3)
  assert claim['holds'] is True
  assert claims.verdict(claim['holds']) == 'HOLDS'


def test_claim_a_does_not_hold_when_reversed_or_selected_below_k_train():
  assert claims.claim_a({32: runs_a(gain=-0.1)})['holds'] is False
  # Accuracy gains beyond 3 std, but at a K_test below K_train.
  below = claims.claim_a({32: runs_a(gain=0.1, selected=24)})
  assert below['rows'][32]['compare']['holds'] is True
  assert below['holds'] is False
  assert claims.verdict(below['holds']) == 'DOES NOT HOLD'


def test_claim_a_is_undecided_with_one_seed():
  claim = claims.claim_a({32: runs_a(gain=0.1, seeds=1)})
  assert claim['rows'][32]['compare']['n'] == 1
  assert claim['holds'] is None
  assert claims.verdict(claim['holds']).startswith('UNDECIDED')


def test_claim_b_holds_when_fine_tuning_beats_every_control():
  claim = claims.claim_b({32: runs_b()})
  compare = claim['rows'][32]['compare']
  assert set(compare) == {claims.NO_FINETUNING, 'fine-tuned at K_train',
                          'last-BN statistics only', 'parametric adaptation'}
  assert all(c['holds'] for c in compare.values())
  assert claim['holds'] is True
  # Every trained network ahead of every alternative: 3 of 3, p = 1/8.
  for pooled in claim['pooled'].values():
    assert (pooled['ahead'], pooled['n']) == (3, 3)
    assert pooled['p'] == pytest.approx(0.125)


def test_claim_b_does_not_hold_when_a_control_is_ahead():
  claim = claims.claim_b({32: runs_b(control_gains={'bn_stats_only': 0.2})})
  compare = claim['rows'][32]['compare']
  assert compare['last-BN statistics only']['holds'] is False
  assert compare[claims.NO_FINETUNING]['holds'] is True
  assert claim['holds'] is False


def test_claim_b_needs_only_every_seed_ahead_of_a_control_but_3_std_over_none():
  # Ahead of 'fine-tuned at K_train' in every seed, by margins too uneven for 3 std.
  claim = claims.claim_b({32: runs_b(control_gains={'ft_train_res': (0.05, 0.09, 0.07)})})
  against = claim['rows'][32]['compare']['fine-tuned at K_train']
  assert against['every_seed'] and not against['beyond']
  assert against['holds'] is True and claim['holds'] is True
  # Margins as uneven over no fine-tuning are not enough.
  uneven = claims.claim_b({32: runs_b(tuned_gain=(0.05, 0.01, 0.03))})
  assert uneven['rows'][32]['compare'][claims.NO_FINETUNING]['every_seed']
  assert uneven['rows'][32]['compare'][claims.NO_FINETUNING]['holds'] is False
  assert uneven['holds'] is False


def test_claim_b_is_undecided_when_a_control_did_not_run():
  runs = runs_b()
  for run in runs:
    del run['variants']['bn_stats_only']
  claim = claims.claim_b({32: runs})
  assert claim['rows'][32]['controls']['last-BN statistics only']['n'] == 0
  assert claim['holds'] is None


def test_a_variant_that_did_not_run_is_missing_not_an_error():
  runs = runs_b()
  del runs[1]['variants']['cached']
  assert claims.per_seed(runs, lambda r: claims.variant(r, 'cached')) == [
      pytest.approx(0.7), None, pytest.approx(0.701)]
  assert claims.per_seed(runs, lambda r: claims.variant(r, 'ft_at_64')) == [None] * 3
  assert claims.claim_cached({32: runs})['rows'][32]['cached']['n'] == 2


@pytest.mark.parametrize('read, named', [
    (lambda r: claims.variant(r, 'ft_selcted'), "variant 'ft_selcted'"),
    (lambda r: claims.variant(r, 'ft_selected', 'finetune_secs'),
     "variant field 'finetune_secs'"),
    (lambda r: claims.trained_at(r, 40, 'finetund'), "model 'finetund'"),
])
def test_a_misspelt_name_raises_instead_of_reading_as_not_run(read, named):
  runs = runs_b()
  with pytest.raises(claims.UnknownFieldError, match='a misspelling') as error:
    claims.per_seed(runs, read)
  assert named in str(error.value)
  # Even where no run made any variant: the name, not the runs, is wrong.
  for run in runs:
    run['variants'].clear()
  with pytest.raises(claims.UnknownFieldError):
    claims.per_seed(runs, read)


def test_a_misspelt_run_field_raises():
  with pytest.raises(KeyError, match='train_secs'):
    claims.per_seed(runs_b(), lambda r: r['train_secs'])


def test_claim_c_compares_the_low_network_fine_tuned_up_with_the_high_one():
  low = [run_record(s, variants={'ft_at_48': (48, 0.70 + JITTER[s])}) for s in range(3)]
  high = [run_record(s, train_res=48, selected=56, trained=(0.72 + JITTER[s], 0.75))
          for s in range(3)]
  claim = claims.claim_c({32: low, 48: high}, flops={32: 1.0, 48: 2.25})
  row = claim['rows'][48]
  assert row['top1_low_finetuned']['mean'] == pytest.approx(0.701)
  assert row['top1_high_at_high']['mean'] == pytest.approx(0.721)
  assert row['flops_ratio'] == pytest.approx(1 / 2.25)
  assert row['holds'] is False and claim['holds'] is False  # 0.701 < 0.721 - 0.001
  # Paired by seed, not by position: seed 1's high run missing leaves seeds 0 and 2.
  paired = claims.claim_c({32: low, 48: [high[2], high[0]]}, flops={32: 1.0, 48: 2.25})
  assert paired['rows'][48]['compare']['diffs'] == pytest.approx([-0.02, -0.02])

  for run in low:
    run['variants']['ft_at_48']['top1'] = 0.7205
  assert claims.claim_c({32: low, 48: high}, flops={32: 1.0, 48: 2.25})['holds'] is True


def test_claim_c_is_undecided_with_one_k_train():
  assert claims.claim_c({32: runs_a(0.1)}, flops={32: 1.0}) == {'rows': {}, 'holds': None}


def test_cached_matches_sgd_within_the_spread_and_not_far_below():
  assert claims.claim_cached({32: runs_b()})['holds'] is True
  worse = claims.claim_cached({32: runs_b(control_gains={'cached': 0.0})})
  assert worse['rows'][32]['compare']['margin'] == pytest.approx(-0.1 - sum(JITTER) / 3)
  assert worse['holds'] is False


def test_text_of_stats_and_comparisons():
  assert common.pct(claims.stats([0.5, 0.7, 0.9])) == '70.00 ± 20.00'
  assert common.pct(claims.stats([0.6, None])) == '60.00'  # one seed: no spread
  assert common.pct(claims.stats([None])) == 'not run'
  assert common.pct(None) == 'not run'
  assert claims.margin_text(claims.compare([0.8, 0.9, 0.7], [0.5, 0.6, 0.5])) == (
      '+26.67 pts (per-seed spread 5.77, beyond 3 std; per seed +30.0, +30.0, +20.0)')
  assert claims.margin_text(claims.compare([0.8, 0.5, 0.7], [0.5, 0.6, 0.5])) == (
      '+13.33 pts (per-seed spread 20.82, NOT beyond 3 std, 95 % interval -38.38 to +65.04; '
      'per seed +30.0, -10.0, +20.0)')
  assert claims.margin_text(claims.compare([0.8], [0.5])) == (
      '+30.00 pts (one seed: no spread)')
  assert claims.margin_text(claims.compare([None], [0.5])) == 'not run'
