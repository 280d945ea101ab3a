"""What studies/recipe.py and studies/modern.py share: training variants x seeds of the
demo network on the embedded dataset, one resumable workdir per run, then a generated report.

A study defines its variants (config overrides), how one (variant, seed) runs, how the
finished runs are summarized and how the report reads, as a Grid, and runs it with run(grid).
"""

import dataclasses
import json
import time
from typing import Callable, Dict, Optional

from absl import app
from absl import flags
from etils import epath

from studies import common
from studies import reproduce

FLAGS = flags.FLAGS
CHANCE, CHANCE_MARGIN = 0.1, 2.0  # 10 classes; a run below 2x chance never learned


@dataclasses.dataclass(frozen=True)
class Grid:
  """A study's variants and its steps.

  Attributes:
    name: the report's file stem: OUT/NAME.md and OUT/name.json.
    variants: {variant: {'section.field': value}}.
    run_variant: (plan, root, variant, seed) -> None; skips what has finished.
    summarize: (root, seeds, variants) -> results (JSON-serialisable).
    format_report: (results, plan, seconds of runs or None, the command) -> Markdown.
    train_res: the baseline's K_train.
    epochs: the baseline's training epochs when --epochs is not given.
    readme_block: results -> README's block between the study's markers (common.readme_markers
      (name, 'studies.NAME')), rewritten by a full (not --quick) study; None: no block.
  """
  name: str
  variants: Dict[str, dict]
  run_variant: Callable
  summarize: Callable
  format_report: Callable
  train_res: int = 64
  epochs: int = 8
  readme_block: Optional[Callable] = None


def define_flags(grid: Grid) -> None:
  """The study's flags, defined only when it runs (tests import it beside other commands)."""
  name = grid.name
  flags.DEFINE_string('out', 'docs', f'Where {name.upper()}.md and {name}.json go.')
  flags.DEFINE_string('results_root', f'/tmp/fixres_{name}', 'One workdir per run under here.')
  flags.DEFINE_string('data_dir', '', 'tfds data dir for fixres_synthetic.')
  flags.DEFINE_string('demo_root', '', 'Finished demo workdirs (ROOT/seed_N): a variant that '
                      'trains exactly as the demo seed did copies its training.')
  flags.DEFINE_bool('readme', True, "Rewrite README's block of the study (if it has one).")
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
  flags.DEFINE_list('variants', list(grid.variants), 'Variants to run.')
  flags.DEFINE_integer('epochs', grid.epochs, "Training epochs of the baseline (the demo's).")
  flags.DEFINE_bool('quick', False, 'fixres_synthetic/tiny and a tiny network (CI).')
  flags.DEFINE_enum('phase', 'all', ['all', 'report'], "'report': only the doc.")


def run(grid: Grid) -> None:
  """The study's command: its flags, then main."""
  define_flags(grid)
  app.run(lambda argv: main(grid))


def main(grid: Grid) -> None:
  """Runs FLAGS.variants x FLAGS.seeds (seeds in the outer loop, so that an interrupted
  measurement has whole seeds), then writes the report from every finished run."""
  seeds = [int(s) for s in FLAGS.seeds]
  unknown = set(FLAGS.variants) - set(grid.variants)
  if unknown:
    raise app.UsageError(f'Unknown variants {sorted(unknown)}: use {sorted(grid.variants)}.')
  plan = reproduce.Plan(train_res=(grid.train_res,), seeds=seeds, quick=FLAGS.quick,
                        data_dir=FLAGS.data_dir, num_epochs=FLAGS.epochs,
                        demo_root=FLAGS.demo_root)
  root = epath.Path(FLAGS.results_root)
  start = time.perf_counter()
  if FLAGS.phase == 'all':
    for seed in seeds:
      for name in FLAGS.variants:
        grid.run_variant(plan, root, name, seed)
  results = grid.summarize(root, seeds, FLAGS.variants)
  out = epath.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f'{grid.name}.json').write_text(json.dumps(results, indent=2))
  seconds = time.perf_counter() - start if FLAGS.phase == 'all' else None
  command = common.format_command(f'studies.{grid.name}')
  (out / f'{grid.name.upper()}.md').write_text(
      grid.format_report(results, plan, seconds, command))
  # README's block sets each option against the baseline: a run without it has no block.
  if grid.readme_block and FLAGS.readme and not FLAGS.quick and 'baseline' in results:
    common.write_readme_block(common.REPO / 'README.md', readme_markers(grid),
                              grid.readme_block(results))


def readme_markers(grid: Grid):
  """The markers around the study's block in README."""
  return common.readme_markers(grid.name, f'studies.{grid.name}')


def reuse_line(results: dict, labels: Dict[str, str]) -> str:
  """A sentence naming the runs whose training is the demo's own, copied from its finished
  workdir (reproduce.train_once), or ''."""
  copied = [f"{labels[name]} seed {run['seed']} (`{run['train_copied_from']}`)"
            for name, r in results.items() for run in r['runs'] if run.get('train_copied_from')]
  if not copied:
    return ''
  return ("Reused, not retrained: these trainings are README's demo command with the same "
          'seed, copied from its finished workdir (no train-stage field differs); everything '
          'after training was run here: ' + '; '.join(copied) + '.')


def never_learned(results: dict, labels: Dict[str, str], key: str) -> str:
  """A sentence naming the runs whose top-1 (run[key]) stayed near chance, or ''.

  Such a run spent its whole budget on the loss plateau at ln(classes) the demo network
  starts on; it is counted in the statistics as it is, and named so a reader sees why a
  spread is large.
  """
  stuck = [f'{labels[name]} seed {run["seed"]} ({100 * run[key]:.1f}%)'
           for name, r in results.items() for run in r['runs']
           if run[key] < CHANCE_MARGIN * CHANCE]
  if not stuck:
    return ''
  return (f'Runs that never left chance level ({100 * CHANCE:.0f}% on 10 classes; top-1 at '
          f'K_train below {100 * CHANCE_MARGIN * CHANCE:.0f}%), counted above as they are: '
          + '; '.join(stuck) + '.')
