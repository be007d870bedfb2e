"""TinyCLIP's automatic inheritance on the synthetic shapes, over seeds: the README's table.

  python benchmarks/tinyclip_auto.py --seeds 0 1 2

One teacher, as the README's commands make it: `configs/quickstart.py` on the shapes alone,
500 steps, seed 0, exported. Per seed, `configs/tinyclip_auto_quickstart.py` from it: three
stages of 300 steps pruned at step 150 of each to 25%, 50% and 75% of the transformer
parameters. Prints, per stage, the share of the teacher's prunable (transformer) parameters
removed, the student's parameter count and its held-out zero-shot top-1 on shape and
colour at the stage's end (the config's 500 images), the README's table. On 2 CPU cores the
teacher takes about 1 minute, each seed's three stages about 3.
"""
import argparse
import json
import os
import sys
import tempfile

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # clipjax, and the speed-up benchmark's helpers

from clipjax.config_base import load_config  # pylint: disable=wrong-import-position
from clipjax.convert import native  # pylint: disable=wrong-import-position
from clipjax.evaluate import report  # pylint: disable=wrong-import-position
from clipjax.methods import l0  # pylint: disable=wrong-import-position
from clipjax.train import stages  # pylint: disable=wrong-import-position
from tinyclip_speedup import KEYS, train_quietly  # pylint: disable=wrong-import-position

TEACHER_STEPS = 500
TOWERS = ('visual', 'textual')


def train_teacher(workdir) -> tuple:
  """The README's teacher: `python -m clipjax.main --config configs/quickstart.py
  --config.total_steps=500 --config.data.digit_fraction=0`, then its export; returns
  (export folder, its accuracies on the students' evaluations: the same 500 images)."""
  config = load_config(os.path.join(ROOT, 'configs/quickstart.py'))
  config.total_steps, config.data.digit_fraction = TEACHER_STEPS, 0.0
  config.checkpoint_every = config.eval_every = TEACHER_STEPS
  config.eval_at_start = False
  trainer, result = train_quietly(config, workdir)
  return (str(trainer.export_checkpoint(os.path.join(workdir, 'export'))),
          tuple(result[k] for k in KEYS))


def counts(folder) -> tuple:
  """(prunable transformer parameters, all parameters) of an exported model."""
  params = native.load_native(folder)[1]
  return (sum(l0.prunable_count(params, t) for t in TOWERS),
          sum(x.size for x in jax.tree_util.tree_leaves(params)))


def run(teacher, accuracies, seed, workdir) -> list:
  """Rows (name, pruned share, parameters, shape, colour): the teacher, then each
  stage's student at the stage's end."""
  config = load_config(os.path.join(ROOT, 'configs/tinyclip_auto_quickstart.py'), teacher)
  config.seed, config.eval_at_start = seed, False
  train_quietly(config, workdir)
  history = {r['step']: r for r in report.read_jsonl(os.path.join(workdir, 'eval_history.jsonl'))}
  prunable, total = counts(teacher)
  rows = [('teacher', 0.0, total, *accuracies)]
  for stage in stages.plan(config):
    kept, size = counts(os.path.join(workdir, f'stage_{stage.index}'))
    rows.append((f'stage {stage.index}', 1 - kept / prunable, size,
                 *(history[stage.end][k] for k in KEYS)))
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--json', default='')
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    teacher, accuracies = train_teacher(os.path.join(tmp, 'teacher'))
    results = {}
    for seed in args.seeds:
      results[seed] = run(teacher, accuracies, seed, os.path.join(tmp, f'auto_{seed}'))
      print(f'seed {seed}: {results[seed]}', file=sys.stderr, flush=True)
  seeds = ' / '.join(str(s) for s in args.seeds)
  print(f'teacher: configs/quickstart.py, shapes alone, {TEACHER_STEPS} steps, seed 0; '
        f'students: seeds {seeds}')
  print(f'| model (seeds {seeds}) | transformer params pruned | all params | shape | colour |')
  print('|---|---|---|---|---|')
  for r, (name, *_) in enumerate(results[args.seeds[0]]):
    rows = [results[s][r] for s in args.seeds][:1 if name == 'teacher' else None]
    pruned, size, shape, colour = (' / '.join(form.format(row[c]) for row in rows) for c, form in
                                   ((1, '{:.1%}'), (2, '{:,}'), (3, '{:.3f}'), (4, '{:.3f}')))
    print(f'| {name} | {pruned} | {size} | {shape} | {colour} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({str(s): rows for s, rows in results.items()}, f, indent=1)


if __name__ == '__main__':
  main()
