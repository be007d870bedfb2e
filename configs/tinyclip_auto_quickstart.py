"""TinyCLIP automatic inheritance on CPU: a quickstart CLIP pruned in three stages of one run.

1. Train and export a quickstart teacher (see configs/tinyclip_quickstart.py).
2. python -m clipjax.main --config configs/tinyclip_auto_quickstart.py:runs/quickstart/export \
       --workdir runs/tinyclip_auto
Stage i's pruned student is exported to DIR/stage_i; running the command again resumes the
run where it stopped.

Each stage is the official recipe in miniature: the teacher-sized model with L0 masks
(stage 1 a copy of the teacher, later stages the previous student put back into it),
sparsity ramped to 25% / 50% / 75% of the transformer parameters while distilling, then
pruned at `prune_step` to a dense student that trains on with a fresh optimizer.
"""
import os

from ml_collections import ConfigDict

from clipjax.config_base import load_config

STAGE_STEPS, PRUNE_STEP, SPARSITY_WARMUP = 300, 150, 100
TARGETS = (0.25, 0.5, 0.75)
L0_LR = 0.1  # official 0.02 over 3000+ mask steps; five times that for 150


def get_config(teacher: str = 'runs/quickstart/export') -> ConfigDict:
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               'tinyclip_quickstart.py'), f'{teacher},manual')
  tower = dict(width=64, heads=4, layers=2)  # the teacher's size: stage 1 starts as its copy
  c.model.vision, c.model.text = ConfigDict(tower), ConfigDict(tower)
  c.total_steps = STAGE_STEPS
  c.eval_every = c.checkpoint_every = PRUNE_STEP
  c.optim.warmup_steps = PRUNE_STEP
  c.stages = [{'tinyclip.auto': dict(start_sparsity=start, target_sparsity=target,
                                     sparsity_warmup=SPARSITY_WARMUP, prune_step=PRUNE_STEP,
                                     lr=L0_LR)}
              for start, target in zip((0.0,) + TARGETS[:-1], TARGETS)]
  c.tinyclip.auto = dict(c.stages[0]['tinyclip.auto'])
  return c
