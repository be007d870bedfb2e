"""Stages: `config.stages` splits one run into consecutive stages (e.g. TinyCLIP's
progressive 25% -> 50% -> 75% pruning).

Every entry is a dict of dotted config overrides for one stage; stage i trains
`total_steps` steps of its own config with its own schedule, one after the other in the
same run (one workdir, one metrics file, one checkpoint series). At a stage's end the
loop exports its model to `workdir/stage_<i>` and builds the next stage's model from it
(`Method.prepare(state, previous=...)`: continue from it; TinyCLIP: inherit from it or
expand it into its masked full model) with a fresh optimizer, the same rebuild a method's
mid-run restructure uses. A run killed anywhere resumes where it stopped.
"""
import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int   # from 1
  start: int   # global step before its first step
  end: int     # global step after its last step
  config: ml_collections.ConfigDict


def stage_configs(config) -> list:
  """The full config of every stage: the base with its overrides, `stages` removed."""
  base = config.copy_and_resolve_references()
  base.unlock()
  base.stages = []
  out = []
  for i, overrides in enumerate(config.get('stages') or [{}], 1):
    stage = base.copy_and_resolve_references()
    stage.lock()  # overrides may change keys, not invent them (typos fail here)
    try:
      stage.update_from_flattened_dict(dict(overrides))
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f'config.stages[{i - 1}] {dict(overrides)}: {e}') from e
    stage.unlock()
    out.append(stage)
  return out


# What the run builds once, for all its stages: the mesh, the data pipeline and the
# tokenizer (config keys, and prefixes of keys, a stage may not override).
SHARED = ('mesh', 'data', 'batch_size', 'seed', 'tokenizer', 'sharding_rules',
          'keep_checkpoints')


def plan(config) -> list:
  """The run's stages with their global step ranges (one stage when `stages` is empty)."""
  for i, overrides in enumerate(config.get('stages') or []):
    shared = [k for k in overrides if k.split('.')[0] in SHARED]
    if shared:
      raise ValueError(f'config.stages[{i}] overrides {shared}: the stages of a run share its '
                       f'{", ".join(SHARED)} (run the stages as separate runs, or set them '
                       'outside config.stages)')
  out, start = [], 0
  for i, stage in enumerate(stage_configs(config), 1):
    if stage.total_steps < 1:
      raise ValueError(f'stage {i}: total_steps={stage.total_steps} must be positive')
    out.append(Stage(i, start, start + stage.total_steps, stage))
    start += stage.total_steps
  return out


def training(stages: list, step: int) -> Stage:
  """The stage that trains the step after `step`."""
  return next((s for s in stages if s.start <= step < s.end), stages[-1])


def holding(stages: list, step: int) -> Stage:
  """The stage whose model a state after `step` steps holds (at a boundary: the one that
  just ended; the next begins once the loop moves on)."""
  if step > stages[-1].end:
    return stages[-1]
  return next((s for s in stages if s.start < step <= s.end), stages[0])
