"""Multi-stage runs: `config.stages` chains training runs, each starting from the last.

Every entry is a dict of dotted config overrides for one stage (e.g. TinyCLIP's
progressive 25% -> 50% -> 75% pruning). Stage i trains in `workdir/stage_<i>` and ends by
exporting its model as a native folder `workdir/stage_<i>/final` (written atomically),
which the next stage receives as `config.previous_stage`; what a method does with it is
its own (`Method.prepare`: continue from it; TinyCLIP: inherit from it or expand it into
its masked full model). Re-running the same command resumes the chain: finished stages
(those with `final`) are skipped and the current one resumes from its checkpoint.
"""
import logging
from pathlib import Path

import jax

from clipjax.convert import native
from clipjax.train.loop import Trainer

log = logging.getLogger(__name__)
FINAL = 'final'


def stage_configs(config) -> list:
  """The full config of every stage: the base with its overrides, `stages` removed."""
  stages = list(config.stages)
  if not stages:
    raise ValueError('config.stages is empty')
  base = config.copy_and_resolve_references()
  base.unlock()
  base.stages = []
  out = []
  for i, overrides in enumerate(stages, 1):
    stage = base.copy_and_resolve_references()
    stage.lock()  # overrides may change keys, not invent them (typos fail here)
    try:
      stage.update_from_flattened_dict(dict(overrides))
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f'config.stages[{i - 1}] {dict(overrides)}: {e}') from e
    stage.unlock()
    out.append(stage)
  return out


def run(config, workdir) -> dict:
  """Trains the stages in order (resuming where the chain stopped); returns the last
  stage's final metrics, or {} if a stage was preempted (re-run to continue)."""
  workdir = Path(workdir).absolute()
  previous, results = '', {}
  for i, stage in enumerate(stage_configs(config), 1):
    stage_dir = workdir / f'stage_{i}'
    final = stage_dir / FINAL
    stage.previous_stage = previous
    if previous and not stage.tokenizer.path:  # one vocabulary for the whole chain
      stage.tokenizer.path = previous
    if (final / native.SPEC_FILE).exists():
      log.info('Stage %d already finished (%s)', i, final)
      previous = str(final)
      continue
    trainer = Trainer(stage, stage_dir)
    results = trainer.train()
    if int(jax.device_get(trainer.state.step)) < stage.total_steps:
      log.warning('Stage %d stopped at step %d of %d; run again to resume.', i,
                  int(jax.device_get(trainer.state.step)), stage.total_steps)
      return {}
    trainer.export(trainer.state.params, final)
    previous = str(final)
  return results
