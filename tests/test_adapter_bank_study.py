"""studies.adapter_bank: what it reads of the runs it times."""

import json

from studies import adapter_bank


def cache_record(stage: str, seconds: float) -> dict:
  return {'stage': stage, 'step': 280, 'pass1_s': seconds, 'pass2_s': seconds, 'head_s': 0.1}


def test_pass_timings_count_only_the_banks_own_passes(tmp_path):
  """The copy's metrics.jsonl begins with the source demo's records (its adapted choice of
  K_test fitted adapters at 48 and 80, then its stage at 96): the bank's run counts its own."""
  source = [cache_record('adapter_48_cache', 1.0), cache_record('adapter_80_cache', 2.0),
            cache_record('finetune_cache', 3.0)]
  bank = [cache_record('finetune_cache', 30.0), cache_record('adapter_80_cache', 20.0),
          cache_record('adapter_112_cache', 40.0)]
  (tmp_path / 'metrics.jsonl').write_text(
      '\n'.join(json.dumps(r) for r in [*source, {'stage': 'train', 'step': 1}, *bank]) + '\n')
  (tmp_path / 'checkpoints' / 'finetune').mkdir(parents=True)
  (tmp_path / 'checkpoints' / 'finetune' / 'test_transform.json').write_text(
      json.dumps({'image_size': 96}))
  timings = adapter_bank.pass_timings(tmp_path, (80, 96, 112))
  assert {k: t['pass1_s'] for k, t in timings.items()} == {96: 30.0, 80: 20.0, 112: 40.0}
  # Without the bank's K only the stage's own passes count.
  assert list(adapter_bank.pass_timings(tmp_path)) == [96]
